"""The findings table: what `probe analyze` and `probe intervene` measured, every model side by side, the papers'
figures beside them.

A pure function of the two commands' report.json files (dicts), so that the table in a model card or in
checkpoints/README.md is generated, not typed: `probe findings --analysis DIR --interventions DIR`.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence, Union

from probe.analyses.analyze import checkpoint_name, last_layer
from probe.formats import short_repr
from probe.analyses.frontier import GROUPS

# What the papers report for each row (their models solve ProsQA; the figures are theirs, not re-measured here).
PAPERS = {
    "accuracy": "Coconut 97.0%, pause 96.6%, CoT 77.5% (GPT-2, Hao et al. 2024); RbS 96-99% (2-layer, Zhu et al. 2025)",
    "mass": "value concentrates on the frontier (Hao et al. 2024, Sec. 5)",
    "top": "top-1 rises from thought 1 to 2 (Hao et al. 2024, Fig. 7)",
    "inner": "6.4-6.8 / 5.1-5.4 / 3.6-3.7 / about -0.3 (Zhu et al. 2025, Table 5)",
    "attention": "frontier edges get more attention (Zhu et al. 2025, Emergence of Superposition)",
}


# What the table reads of each report, checked before a row is made (`check_report`): NUMBER is a number or null (a
# measure that was undefined), ("k", spec) an object keyed by decimal strings (thoughts, layers) of spec, [spec] a
# list of spec, {key: spec} an object whose keys are optional unless they end in "!". Only what the table reads is
# checked: a measure a report lacks (an older coconut-probe measured less) is a dash, as for a model not measured.
NUMBER = "a number or null"
_BY_K = "k"
MODEL = {"checkpoint!": str, "mode!": str, "n!": int, "accuracy_by_k": (_BY_K, NUMBER)}
ANALYSIS_MODEL = {**MODEL, "frontier_value_mass": (_BY_K, NUMBER),
                  "value_by_group": (_BY_K, {g: NUMBER for g in GROUPS}), "parallelism": (_BY_K, {"top1": NUMBER}),
                  "inner_product": (_BY_K, {g: NUMBER for g in GROUPS}),
                  "superposition": (_BY_K, {"frontier_share": NUMBER, "r2": NUMBER}),
                  "attention_frontier_gap": (_BY_K, (_BY_K, NUMBER))}
INTERVENE_MODEL = {**MODEL,
                   "ablations": {"thought": [{"name!": str, "accuracy": NUMBER, "baseline_accuracy": NUMBER}]},
                   "patching": {"thought": [{"steps!": str, **{f"{b}{m}": NUMBER for b in ("", "baseline_") for m in (
                       "names_a_root", "follows_a", "a_frontier_mass")}, "values_at": (int, type(None))}]},
                   "steering": {"points": [{"direction!": str, "alpha!": float, "value": NUMBER, "to_option": NUMBER}]}}
REPORTS = {  # command: (the key that tells its report, the report's schema)
    "analyze": ("frontier_value_mass", {**ANALYSIS_MODEL, "data": str, "control": ANALYSIS_MODEL}),
    "intervene": ("reports", {"data": str, "reports!": [INTERVENE_MODEL]}),
}


def check_report(report: Any, command: str, source: str) -> dict[str, Any]:
    """A decoded report.json of `probe analyze` or `probe intervene` (command), checked to be that command's and to
    hold what the table reads, each of its kind. Returns it; raises ValueError naming the source and the first
    field (by its path in the report) that is missing or of another kind, or an interventions report of no model."""
    key, schema = REPORTS[command]
    if not isinstance(report, dict) or key not in report:
        raise ValueError(f"{source}: not the report of probe {command} (no {key!r})")
    try:
        _check(report, schema, "", source)
    except ValueError as e:
        raise ValueError(f"{e}; the file was edited or damaged: run `probe {command}` again") from None
    if command == "intervene" and not report["reports"]:
        raise ValueError(f"{source}: its 'reports' list is empty: no model was run")
    return report


def _check(v: Any, spec: Any, path: str, source: str) -> None:
    def fail(what: str) -> None:
        raise ValueError(f"{source}: {path or 'the report'} must be {what}, got {short_repr(v)}")

    if spec == NUMBER:
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            fail(NUMBER)
    elif isinstance(spec, tuple) and spec and spec[0] == _BY_K:
        if not isinstance(v, dict):
            fail("an object keyed by thought or layer")
        for k, sub in v.items():
            if not k.lstrip("-").isdigit():
                raise ValueError(f"{source}: {path} has the key {k!r}, not a thought or layer number")
            _check(sub, spec[1], f"{path}.{k}", source)
    elif isinstance(spec, list):
        if not isinstance(v, list):
            fail("a list")
        for i, sub in enumerate(v):
            _check(sub, spec[0], f"{path}[{i}]", source)
    elif isinstance(spec, dict):
        if not isinstance(v, dict):
            fail("an object")
        for key, sub in spec.items():
            name = key.rstrip("!")
            if name in v:
                _check(v[name], sub, f"{path}.{name}" if path else name, source)
            elif key.endswith("!"):
                raise ValueError(f"{source}: {path + ' ' if path else ''}has no field {name!r}")
    else:
        kinds = spec if isinstance(spec, tuple) else (spec,)
        if not any(v is None if t is type(None) else not isinstance(v, bool) and
                   isinstance(v, (int, float) if t is float else t) for t in kinds):
            fail(" or ".join({str: "a string", int: "an integer", float: "a number", type(None): "null"}[t]
                             for t in kinds))


def _num(v: Any, pct: bool = False) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.1f}" if pct else f"{v:.3f}"


def _get(d: dict | None, *keys) -> Any:
    for k in keys:
        if d is None:
            return None
        try:
            d = d[k]
        except (KeyError, IndexError, TypeError):
            return None
    return d


def _shared_names(reports: Sequence[dict]) -> set[str]:
    """The checkpoint names (`checkpoint_name`) that two different checkpoints of one command's reports share."""
    paths = list(dict.fromkeys(r["checkpoint"] for r in reports))
    return {name for name, n in Counter(checkpoint_name(p) for p in paths).items() if n > 1}


def _columns(reports: Sequence[dict], shared: set[str]) -> dict[str, dict]:
    """One command's models by column label: the checkpoint's name (`checkpoint_name`, which matches a model across
    the two reports), or its whole path where the name is in `shared` (two checkpoints of either command share it),
    so that neither takes the other's column and the same model gets the same label in both reports."""
    return {(r["checkpoint"] if checkpoint_name(r["checkpoint"]) in shared else checkpoint_name(r["checkpoint"])): r
            for r in reports}


def _items_line(command: str, models: dict[str, dict], data: str | None, runs: int = 1) -> str:
    """`probe analyze` 300 of prosqa_valid.json: one command's item count(s) and (its first run's) data file."""
    ns = {label: r["n"] for label, r in models.items()}
    count = str(next(iter(ns.values()))) if len(set(ns.values())) == 1 else \
        ", ".join(f"`{label}` {n}" for label, n in ns.items())
    runs_said = f" ({runs} runs)" if runs > 1 else ""
    return (f"`probe {command}`{runs_said} {count} of "
            f"{Path(data).name if data else 'a data file the report does not name'}")


Reports = Union[dict[str, Any], Sequence[dict[str, Any]], None]


def _reports(given: Any) -> list[dict[str, Any]]:
    """One report, several (each command run once per group of models), or none, as a list."""
    return [] if given is None else [given] if isinstance(given, dict) else list(given)


def findings_markdown(analysis: Reports, interventions: Reports, *, ks: Sequence[int] = (1, 2)) -> str:
    """A markdown table: one column per model (the models of both reports, matched by checkpoint name), one row
    per finding of the reports given (each row from one command), the papers' figure in the last column, and
    under it each command's item count and data file.

    analysis: `probe analyze`'s report.json (its "control", if any, is one more model), or several (their models
    side by side); interventions: `probe intervene`'s report.json ({"data", "reports": [...]}), or several. Either
    may be None: its rows are left out. Accuracies are in %; values and masses are probabilities; the steering row
    is at the largest alpha. Raises ValueError when both are None.
    """
    analyses, iv_files = _reports(analysis), _reports(interventions)
    if not analyses and not iv_files:
        raise ValueError("findings need an analysis report, an interventions report, or both")
    ana_reports = [r for a in analyses for r in (a, a.get("control")) if r]
    iv_reports = [r for i in iv_files for r in i.get("reports", [])]
    shared = _shared_names(ana_reports) | _shared_names(iv_reports)
    ana, ivs = _columns(ana_reports, shared), _columns(iv_reports, shared)
    names = list(dict.fromkeys([*ivs, *ana]))
    modes = {n: (ivs.get(n) or ana.get(n))["mode"] for n in names}
    k1, k2 = ks

    # (command, label, cell(analysis of the model, its interventions), paper): a row reads one command's report
    rows: list[tuple[str, str, Callable[[dict | None, dict | None], str], str]] = []

    def row(command: str, label: str, cell: Callable[[dict | None, dict | None], str], paper: str = "") -> None:
        rows.append((command, label, cell, paper))

    def joined(vals: Sequence[Any], pct: bool = False) -> str:
        return "-" if all(v is None for v in vals) else " / ".join(_num(v, pct) for v in vals)

    def by_k(accuracies: dict | None) -> str:
        return " / ".join(f"{k}: {_num(accuracies[k], True)}" for k in sorted(accuracies or {}, key=int)) or "-"

    def own_accuracy(a, i):  # probe intervene: after 0..k thoughts; a CoT control answering at once or after its chain
        acc = _get(i, "accuracy_by_k") or {}
        if _get(i, "mode") == "cot" and len(acc) == 2:
            first, last = sorted(acc, key=int)
            return f"at once: {_num(acc[first], True)} / own chain: {_num(acc[last], True)}"
        return by_k(acc)

    row("analyze", "accuracy (%) after k forced thoughts (a CoT model: k gold steps), `probe analyze`",
        lambda a, i: by_k(_get(a, "accuracy_by_k")), "" if iv_files else PAPERS["accuracy"])
    row("intervene", "accuracy (%) after k thoughts, `probe intervene`", own_accuracy, PAPERS["accuracy"])
    row("analyze", f"frontier value mass, k = {k1} / {k2}",
        lambda a, i: joined([_get(a, "frontier_value_mass", str(k)) for k in ks]), PAPERS["mass"])
    row("analyze", f"mean value by group at k = {k1}: " + " / ".join(GROUPS),
        lambda a, i: joined([_get(a, "value_by_group", str(k1), g) for g in GROUPS]))
    row("analyze", f"top-1 frontier value, k = {k1} -> {k2}",
        lambda a, i: " -> ".join(_num(_get(a, "parallelism", str(k), "top1")) for k in ks)
        if a else "-", PAPERS["top"])
    row("analyze", f"<thought {k1}, name embedding>: " + " / ".join(GROUPS),
        lambda a, i: joined([_get(a, "inner_product", str(k1), g) for g in GROUPS]), PAPERS["inner"])
    row("analyze", f"share of thought k's NNLS decomposition on frontier_k (R²), k = {k1} / {k2}",
        lambda a, i: " / ".join(f"{_num(_get(a, 'superposition', str(k), 'frontier_share'))} "
                                f"({_num(_get(a, 'superposition', str(k), 'r2'))})" for k in ks) if a else "-")
    row("analyze", f"attention gap, frontier edges minus others (last layer), k = {k1} / {k2}",
        lambda a, i: joined([last_layer(g) if (g := _get(a, "attention_frontier_gap", str(k))) else None
                             for k in ks]), PAPERS["attention"])


    def ablation(site: str, which: str):
        def cell(a, i):
            runs = {r["name"]: r for r in _get(i, "ablations", site) or []}
            if not runs:
                return "-"
            base = next(iter(runs.values())).get("baseline_accuracy")
            return joined([_get(runs, f"{kind} {which}", "accuracy") for kind in ("mean", "other")], True) + \
                f" (unedited {_num(base, True)})"
        return cell

    row("intervene", "accuracy (%), every thought ablated: mean / another item's", ablation("thought", "all"))
    row("intervene", "accuracy (%), thought 1 ablated: mean / another item's", ablation("thought", "1"))

    def patch(a, i):
        p = next((r for r in _get(i, "patching", "thought") or [] if r["steps"] == "all"), None)
        if p is None:
            return "-"
        return (f"{_num(p.get('names_a_root'), True)} / {_num(p.get('follows_a'), True)} (unpatched "
                f"{_num(p.get('baseline_names_a_root'), True)} / {_num(p.get('baseline_follows_a'), True)})")

    row("intervene", "all thoughts patched A -> B (%): B names A's person / A's concept", patch)

    def patch_one(a, i):
        p = next((r for r in _get(i, "patching", "thought") or [] if r["steps"] == "1"), None)
        if p is None or p.get("a_frontier_mass") is None:
            return "-"
        return f"{_num(p['a_frontier_mass'])} (unpatched {_num(p.get('baseline_a_frontier_mass'))}), read at k = " \
               f"{p.get('values_at')}"

    row("intervene", "thought 1 patched A -> B: B's value mass on A's frontier", patch_one)

    def steer(a, i):
        points = _get(i, "steering", "points") or []
        if not points:
            return "-"
        top = max(p["alpha"] for p in points)
        at = {p["direction"]: p for p in points if p["alpha"] == top}
        base = next((p for p in points if p["alpha"] == 0), None)
        cells = [f"{d} {_num(at[d].get('value'))} / {_num(at[d].get('to_option'), True)}%" for d in at]
        return f"alpha {top:g}: " + ", ".join(cells) + (f" (alpha 0: {_num(base.get('value'))})" if base else "")

    row("intervene", "steering thought 1 toward v: value(v) / answers naming v's option", steer)

    given = {"analyze": bool(analyses), "intervene": bool(iv_files)}
    header = ["finding", *[f"`{n}` ({modes[n]})" for n in names], "papers"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for cmd, label, cell, paper in rows:
        if given[cmd]:
            lines.append("| " + " | ".join([label, *[cell(ana.get(n), ivs.get(n)) for n in names], paper]) + " |")
    counts = [_items_line(cmd, models, f.get("data"), len(files))
              for cmd, models, files in (("analyze", ana, analyses), ("intervene", ivs, iv_files))
              for f in files[:1]]
    lines += ["", f"Items: {'; '.join(counts)}. A dash: not measured for that model."]
    return "\n".join(lines) + "\n"
