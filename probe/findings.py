"""The findings table: what `probe analyze` and `probe intervene` measured, every model side by side, the papers'
figures beside them.

A pure function of the two commands' report.json files (dicts), so that the table in a model card or in
checkpoints/README.md is generated, not typed: `probe findings --analysis DIR --interventions DIR`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from probe.analyze import checkpoint_name, last_layer
from probe.frontier import GROUPS

# What the papers report for each row (their models solve ProsQA; the figures are theirs, not re-measured here).
PAPERS = {
    "accuracy": "Coconut 97.0%, pause 96.6%, CoT 77.5% (GPT-2, Hao et al. 2024); RbS 96-99% (2-layer, Zhu et al. 2025)",
    "mass": "value concentrates on the frontier (Hao et al. 2024, Sec. 5)",
    "top": "top-1 rises from thought 1 to 2 (Hao et al. 2024, Fig. 7)",
    "inner": "6.4-6.8 / 5.1-5.4 / 3.6-3.7 / about -0.3 (Zhu et al. 2025, Table 5)",
    "attention": "frontier edges get more attention (Zhu et al. 2025, Emergence of Superposition)",
}


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


def findings_markdown(analysis: dict[str, Any] | None, interventions: dict[str, Any] | None, *,
                      ks: Sequence[int] = (1, 2)) -> str:
    """A markdown table: one column per model (the models of both reports, matched by checkpoint name), one row
    per finding, the papers' figure in the last column.

    analysis: `probe analyze`'s report.json (its "control", if any, is one more model); interventions: `probe
    intervene`'s report.json ({"data", "reports": [...]}). Either may be None. Accuracies are in %; values and
    masses are probabilities; the steering row is at the largest alpha. Raises ValueError when both are None.
    """
    if analysis is None and interventions is None:
        raise ValueError("findings need an analysis report, an interventions report, or both")
    ana = {}
    if analysis is not None:
        for rep in (analysis, analysis.get("control")):
            if rep:
                ana[checkpoint_name(rep["checkpoint"])] = rep
    ivs = {checkpoint_name(r["checkpoint"]): r for r in (interventions or {}).get("reports", [])}
    names = list(dict.fromkeys([*ivs, *ana]))
    modes = {n: (ivs.get(n) or ana.get(n))["mode"] for n in names}
    k1, k2 = ks

    rows: list[tuple[str, Callable[[dict | None, dict | None], str], str]] = []

    def row(label: str, cell: Callable[[dict | None, dict | None], str], paper: str = "") -> None:
        rows.append((label, cell, paper))

    def joined(vals: Sequence[Any], pct: bool = False) -> str:
        return "-" if all(v is None for v in vals) else " / ".join(_num(v, pct) for v in vals)

    def accuracy(a, i):
        by_k = _get(i, "accuracy_by_k") or _get(a, "accuracy_by_k") or {}
        ks_sorted = sorted(by_k, key=int)
        if (i or a or {}).get("mode") == "cot" and len(ks_sorted) == 2:  # answering at once, after its own chain
            return f"at once: {_num(by_k[ks_sorted[0]], True)} / own chain: {_num(by_k[ks_sorted[1]], True)}"
        return " / ".join(f"{k}: {_num(by_k[k], True)}" for k in ks_sorted) or "-"

    row("accuracy (%) after k thoughts", accuracy, PAPERS["accuracy"])
    row(f"frontier value mass, k = {k1} / {k2}",
        lambda a, i: joined([_get(a, "frontier_value_mass", str(k)) for k in ks]), PAPERS["mass"])
    row(f"mean value by group at k = {k1}: " + " / ".join(GROUPS),
        lambda a, i: joined([_get(a, "value_by_group", str(k1), g) for g in GROUPS]))
    row(f"top-1 frontier value, k = {k1} -> {k2}",
        lambda a, i: " -> ".join(_num(_get(a, "parallelism", str(k), "top1")) for k in ks)
        if a else "-", PAPERS["top"])
    row(f"<thought {k1}, name embedding>: " + " / ".join(GROUPS),
        lambda a, i: joined([_get(a, "inner_product", str(k1), g) for g in GROUPS]), PAPERS["inner"])
    row(f"share of thought k's NNLS decomposition on frontier_k (R²), k = {k1} / {k2}",
        lambda a, i: " / ".join(f"{_num(_get(a, 'superposition', str(k), 'frontier_share'))} "
                                f"({_num(_get(a, 'superposition', str(k), 'r2'))})" for k in ks) if a else "-")
    row(f"attention gap, frontier edges minus others (last layer), k = {k1} / {k2}",
        lambda a, i: joined([last_layer(g) if (g := _get(a, "attention_frontier_gap", str(k))) else None
                             for k in ks]), PAPERS["attention"])

    def ablation(site: str, which: str):
        def cell(a, i):
            runs = {r["name"]: r for r in _get(i, "ablations", site) or []}
            if not runs:
                return "-"
            base = next(iter(runs.values()))["baseline_accuracy"]
            return joined([_get(runs, f"{kind} {which}", "accuracy") for kind in ("mean", "other")], True) + \
                f" (unedited {_num(base, True)})"
        return cell

    row("accuracy (%), every thought ablated: mean / another item's", ablation("thought", "all"))
    row("accuracy (%), thought 1 ablated: mean / another item's", ablation("thought", "1"))

    def patch(a, i):
        p = next((r for r in _get(i, "patching", "thought") or [] if r["steps"] == "all"), None)
        if p is None:
            return "-"
        return (f"{_num(p['names_a_root'], True)} / {_num(p['follows_a'], True)} (unpatched "
                f"{_num(p['baseline_names_a_root'], True)} / {_num(p['baseline_follows_a'], True)})")

    row("all thoughts patched A -> B (%): B names A's person / A's concept", patch)

    def patch_one(a, i):
        p = next((r for r in _get(i, "patching", "thought") or [] if r["steps"] == "1"), None)
        if p is None or p.get("a_frontier_mass") is None:
            return "-"
        return f"{_num(p['a_frontier_mass'])} (unpatched {_num(p['baseline_a_frontier_mass'])}), read at k = " \
               f"{p['values_at']}"

    row("thought 1 patched A -> B: B's value mass on A's frontier", patch_one)

    def steer(a, i):
        points = _get(i, "steering", "points") or []
        if not points:
            return "-"
        top = max(p["alpha"] for p in points)
        at = {p["direction"]: p for p in points if p["alpha"] == top}
        base = next((p for p in points if p["alpha"] == 0), None)
        cells = [f"{d} {_num(at[d]['value'])} / {_num(at[d]['to_option'], True)}%" for d in at]
        return f"alpha {top:g}: " + ", ".join(cells) + (f" (alpha 0: {_num(base['value'])})" if base else "")

    row("steering thought 1 toward v: value(v) / answers naming v's option", steer)

    header = ["finding", *[f"`{n}` ({modes[n]})" for n in names], "papers"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, cell, paper in rows:
        lines.append("| " + " | ".join([label, *[cell(ana.get(n), ivs.get(n)) for n in names], paper]) + " |")
    n_items = sorted({r["n"] for r in [*ana.values(), *ivs.values()]})
    data = (interventions or {}).get("data") or ""
    lines += ["", f"Items: {' and '.join(map(str, n_items))} of {Path(data).name if data else 'the data'} "
                  "(`probe analyze` and `probe intervene`); a dash: not measured for that model."]
    return "\n".join(lines) + "\n"
