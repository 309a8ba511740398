"""Model cards: the markdown of the README.md (artifacts.MODEL_CARD) beside a checkpoint's weights.

`model_card` is a released checkpoint's (`probe release`): what it is, its accuracy at every forced k, how it was
trained, its learning curve, the emergence of the search over training (`search_table`) and how to reproduce it.
`markdown_summary` is the latent-search section of a `probe analyze` report (its summary.md), which
`--update-card` puts into a card (`replace_card_section`). `planted_card` is a planted checkpoint's (`probe plant`),
around known_answers' readings table. The minimal card any save writes when given none (`checkpoint.default_card`)
stays on the model floor, with `card_format` (what it and a release's card say of the data format).
"""

from __future__ import annotations

from typing import Any, Sequence

from probe.analyses.analyze import checkpoint_name, last_layer
from probe.artifacts import RBS_CHECKPOINT, RBS_CONFIG, RBS_DIR, RUN_CHECKPOINT
from probe.analyses.frontier import CATEGORIES, GROUPS
from probe.analyses.known_answers import InstrumentReadings, readings_table
from probe.model.checkpoint import card_format
from probe.model.coconut import CoconutModel
from probe.release.build import MARGIN_ITEMS, Phase, Release


# ---------------------------------------------------------------------------- a released checkpoint's card


def _minutes(s: float) -> str:
    return f"{s / 60:.0f} min" if s < 5400 else f"{s / 3600:.1f} h"


def _exact_epochs(phase: Phase) -> str:
    """For a run whose epochs a wall-clock budget sized: the flags that replay that size exactly."""
    items = next((h["epoch_items"] for h in phase.history if "epoch_items" in h), None)
    return f" --set epoch_items={items} --set max_minutes=null" if items and phase.config.get("max_minutes") else ""


SEARCH_KS = (1, 2, 3)


def search_table(phases: Sequence[Phase]) -> list[str]:
    """The card's "Emergence of the search" section: the search summary each evaluation logged (train_config's
    search_items; analyze.SearchSummary), one row per record, thoughts 1..3 in each cell; empty when none."""
    rows = [(i, h) for i, p in enumerate(phases, 1) for h in p.history if "search" in h]
    if not rows:
        return []

    def cells(get) -> str:
        out = []
        for k in SEARCH_KS:
            try:
                v = get(str(k))
            except (KeyError, TypeError):
                v = None
            out.append("-" if v is None else f"{v:.2f}")
        return " / ".join(out)

    lines = [
        "", "## Emergence of the search", "",
        f"At each evaluation, on the first {rows[0][1]['search']['n']} validation items, thoughts k = "
        f"{' / '.join(map(str, SEARCH_KS))} in each cell (`analyze.search_summary`; DESIGN.md defines each): the "
        "value mass on frontier_k and on optimal_k, the largest frontier value (top-1), the inner-product gap "
        "<t, frontier> - <t, unreachable>, the share of the thought's non-negative decomposition on frontier_k, and "
        "the last layer's attention gap between the edges leaving frontier_{k-1} and the others.", "",
        "| phase | step | stage | val accuracy | frontier mass | optimal mass | top-1 | IP gap | NNLS frontier share "
        "| attention gap |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, h in rows:
        s = h["search"]
        va = f"{h['val_accuracy']:.0%}" if "val_accuracy" in h else "-"
        lines.append("| " + " | ".join([
            str(i), str(h.get("step", "-")), str(h["stage"]), va,
            cells(lambda k: s["frontier_mass"][k]), cells(lambda k: s["optimal_mass"][k]),
            cells(lambda k: s["parallelism"][k]["top1"]),
            cells(lambda k: s["inner_product"][k]["frontier"] - s["inner_product"][k]["unreachable"]),
            cells(lambda k: s["frontier_share"][k]), cells(lambda k: last_layer(s["attention_gap"][k])),
        ]) + " |")
    return lines


def model_card(rel: Release, model: CoconutModel, summary: str = "") -> str:
    """The README.md of a released checkpoint: accuracy, recipe, hardware, learning curve, reproduction."""
    ev, cfg = rel.evaluation, model.config
    base = model.base.config
    n_params = sum(p.numel() for p in model.base.parameters())
    lines = [f"# {rel.name}", ""]
    if summary:
        lines += [summary, ""]
    lines += [
        f"- mode: `{cfg.mode}`; base: {base.model_type}, {getattr(base, 'n_layer', getattr(base, 'num_hidden_layers', '?'))} "
        f"layers, d_model {model.d_model}, {n_params:,} parameters, trained from scratch by this repository's code",
        f"- {card_format(model)}; c_thought={cfg.c_thought}, max_latent_stage={cfg.max_latent_stage}, "
        f"pad_latent_to_max={cfg.pad_latent_to_max}; default thoughts at inference: {ev.default_k}",
        "",
        f"## Accuracy on the official ProsQA validation split ({ev.data}, {ev.n} items)",
        "",
        "Greedy decoding, official answer rule, with k thoughts forced before `<|end-latent|>`.",
        "",
        "| forced k | accuracy | correct |",
        "|---|---|---|",
    ]
    for k in sorted(ev.accuracy_by_k):
        mark = " (default)" if k == ev.default_k else ""
        lines.append(f"| {k}{mark} | {ev.accuracy_by_k[k]:.1%} | {ev.correct_by_k[k]}/{ev.n} |")
    if ev.gold_accuracy is not None:
        lines.append(f"| gold depth (each item's number of steps, as RbS evaluates) | {ev.gold_accuracy:.1%} | "
                     f"{ev.gold_correct}/{ev.n} |")
    lines += [
        "",
        f"First {ev.first_n} items at the default k: {ev.first_n_correct}/{ev.first_n}. The test suite "
        f"re-measures them and allows a difference of {MARGIN_ITEMS} items (different CPUs may flip a near tie).",
        "",
        "## How it was trained",
        "",
    ]
    total, untimed = 0.0, 0
    hardware = sorted({h["hardware"] for p in rel.phases for h in p.history if "hardware" in h})
    for i, p in enumerate(rel.phases, 1):
        c = p.config
        stages = sorted({h["stage"] for h in p.history})
        epochs = len({h["epoch"] for h in p.history})
        per_epoch = next((h["epoch_items"] for h in p.history if "epoch_items" in h), c.get("epoch_items"))
        data = (f"{c.get('train_size')} {'fresh ' if c.get('fresh_data_every_epoch') else ''}generated items"
                if not c.get("train_data") else f"`{c['train_data']}`")
        lines.append(
            f"- phase {i}: `{p.config_path}`, mode `{c.get('mode', 'coconut')}`, supervision "
            f"`{c.get('supervision', 'language')}`"
            + (f" ({c.get('thought_loss', 'all')} thoughts)" if c.get("supervision") == "optimal" else "")
            + f", {epochs} epochs" + (f" of {per_epoch} item views" if per_epoch else "") + f" drawn from {data} "
            f"(data seed {c.get('seed', 0)}), stages {stages[0]}..{stages[-1]}, uniform_prob {c.get('uniform_prob', 0)}, "
            f"lr {c.get('lr')} ({c.get('schedule', 'constant')}), batch {c.get('batch_size')}"
            + (f", precision {c['precision']}" if c.get("precision", "float32") != "float32" else "")
            + (f", budget {c['max_minutes']} min" if c.get("max_minutes") else "")
            + f"; {_minutes(p.seconds)} of training"
            + "".join(f" (the budget ran out: {h['cut_by_budget']})" for h in p.history if "cut_by_budget" in h)
            + (f" plus {p.untimed_epochs} untimed epochs" if p.untimed_epochs else "")
        )
        total, untimed = total + p.seconds, untimed + p.untimed_epochs
    lines += [
        f"- hardware: {', '.join(hardware) or 'not recorded'}; training time {_minutes(total)}"
        + (f" measured, plus {untimed} epochs that predate timing" if untimed else ""),
        "",
        "## Learning curve",
        "",
        "Validation accuracy is measured during training on the first `val_size` validation items at the "
        "record's stage; tokens/s and TFLOP/s (6N + 12LdT per token, PaLM's estimate) are over the training "
        "since the previous record.",
        "",
        "| phase | epoch | step | stage | train loss | val accuracy | tokens/s | TFLOP/s | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i, p in enumerate(rel.phases, 1):
        for h in p.history:
            va = f"{h['val_accuracy']:.0%}" if "val_accuracy" in h else "-"
            sec = f"{h['seconds']:.0f}" if "seconds" in h else "-"
            rate = f"{h['tokens_per_s']:,.0f}" if "tokens_per_s" in h else "-"
            tflops = f"{h['tflops']:.2f}" if "tflops" in h else "-"
            lines.append(f"| {i} | {h['epoch']} | {h.get('step', h.get('global_step', '-'))} | {h['stage']} | "
                         f"{h['train_loss']:.4f} | {va} | {rate} | {tflops} | {sec} |")
    lines += search_table(rel.phases)
    last = rel.phases[-1].history[-1]["epoch"] if rel.phases and rel.phases[-1].history else "N"
    run_dir = rel.phases[-1].config.get("out_dir") if rel.phases else "RUN"
    lines += [
        "",
        "## Reproduce",
        "",
        "Each phase's config names its output directory and the checkpoint it starts from; "
        "point `out_dir` elsewhere to keep the shipped runs.",
        "",
        "```",
        *[f"probe train --config {p.config_path}" + _exact_epochs(p) for p in rel.phases],
        f"probe release --ckpt {run_dir}/{RUN_CHECKPOINT.format(epoch=last)} --out {rel.path} --data ../shared/data/{ev.data} "
        + " ".join(f"--config {p.config_path}" for p in rel.phases),
        f"probe eval --ckpt {rel.path} --data ../shared/data/{ev.data}",
        "```",
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- its latent-search section


CARD_HEADING = "## Latent search"


def markdown_summary(report: dict[str, Any], data: str = "") -> str:
    """A model-card section from a `probe analyze` report (and its control, if any): one row per thought."""
    ctrl = report.get("control")
    pair = [report] + ([ctrl] if ctrl else [])

    def cell(get) -> str:
        vals = []
        for r in pair:
            try:
                v = get(r)
            except (KeyError, TypeError):
                v = None
            vals.append("-" if v is None else f"{v:.3f}")
        return " / ".join(vals)

    who = f"`{checkpoint_name(report['checkpoint'])}`"
    if ctrl:
        who += f" / control `{checkpoint_name(ctrl['checkpoint'])}` ({ctrl['mode']})"
    reads = {"emitted": "thought k itself read through the unembedding (the node it emits)",
             "language": "the next step's first concept after k forced thoughts"}
    kinds = [r.get("readout", "language") for r in pair]
    read = reads[kinds[0]] if len(set(kinds)) == 1 else " and, for the control, ".join(reads[x] for x in kinds)
    lines = [
        CARD_HEADING, "",
        f"`probe analyze` on {report['n']} items{f' of {data}' if data else ''}: {who}. Values are the probability of "
        f"each node's name as {read}; inner products are <thought k, input embedding of the name>; the "
        "superposition columns fit thought k as a non-negative combination of the item's name rows (share of "
        "the weight on frontier_k, and R^2); see DESIGN.md for every definition.", "",
        "| k | frontier value mass | top-1 | top-3 | <t, optimal> | <t, frontier> | <t, reachable> | <t, unreachable> "
        "| NNLS frontier share | NNLS R^2 | accuracy at forced k |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    ks = sorted(int(k) for k in report["accuracy_by_k"])
    for k in ks:
        s = str(k)
        lines.append("| " + " | ".join([
            s, cell(lambda r: r["frontier_value_mass"][s]), cell(lambda r: r["parallelism"][s]["top1"]),
            cell(lambda r: r["parallelism"][s]["top3"]),
            *[cell(lambda r, g=g: r["inner_product"][s][g]) for g in GROUPS],
            cell(lambda r: r["superposition"][s]["frontier_share"]), cell(lambda r: r["superposition"][s]["r2"]),
            cell(lambda r: r["accuracy_by_k"][s]),
        ]) + " |")
    lines += ["", "Reasoning-path categories of the continuation after forced k thoughts (counts; model / control):", "",
              "| k | " + " | ".join(c.replace("_", " ") for c in CATEGORIES) + " |",
              "|---|" + "---|" * len(CATEGORIES)]
    for k in ks:
        s = str(k)
        lines.append(f"| {k} | " + " | ".join(
            " / ".join(str(r["categories"][s][c]) if s in r["categories"] else "-" for r in pair)
            for c in CATEGORIES) + " |")
    return "\n".join(lines) + "\n"


def replace_card_section(card: str, section: str) -> str:
    """The card with its latent-search section replaced by section (or section appended)."""
    start = card.find(CARD_HEADING + "\n")
    if start < 0:
        return card.rstrip("\n") + "\n\n" + section
    end = card.find("\n## ", start + len(CARD_HEADING))
    rest = card[end + 1 :] if end >= 0 else ""
    return card[:start] + section + ("\n" + rest if rest else "")


# ---------------------------------------------------------------------------- a planted checkpoint's card


def planted_card(noise: float, seed: int, rows: dict[float, InstrumentReadings], data: str) -> str:
    """The model card of a planted checkpoint: what it is, what it is for, and the readings table (`readings_table`,
    measured on `data`)."""
    from probe.model.planted import D_MODEL, N_HEAD, planted_config

    cfg = planted_config()
    grade = "the exact construction" if noise == 0 else f"the construction with noise S = {noise:g} (seed {seed})"
    return "\n".join([
        "# prosqa-planted",
        "",
        f"A planted Coconut: {grade}. Its search is **planted, not learned**: every weight of this 2-layer GPT-2 "
        "is set by hand (probe/model/planted.py) so that thought k holds exactly the nodes reachable from the root "
        "within k edges (2 at each, 0 elsewhere), and at `[A]` the option that lies in the last thought wins. "
        "Nothing was trained.",
        "",
        "What it is good for: checking instruments against a known answer (as tracr and InterpBench do for "
        "circuits). A lens, a probe, an attention measure or an intervention that does not find the search here is "
        "broken. What it is not: evidence about trained Coconut models; whether they search this way is what the "
        "instruments are for.",
        "",
        f"- format: data format rbs, RbS's 40-token vocabulary (`probe eval --ckpt checkpoints/prosqa-planted --data "
        f"FILE --k 6` needs no other option); {RBS_DIR}/{RBS_CHECKPOINT} and {RBS_DIR}/{RBS_CONFIG} load in their "
        "code unchanged",
        f"- size: d_model {D_MODEL}, {N_HEAD} heads of {D_MODEL // N_HEAD}, MLP {4 * D_MODEL}, 2 layers, "
        f"{cfg.n_positions} positions, gelu_new, tied embedding",
        "- graded versions: `probe plant --noise S` multiplies every weight by 1 + S e, e ~ N(0, 1)",
        "",
        f"## Every instrument's reading ({data})",
        "",
        "Means over items and thoughts 1..4 (probe.analyses.known_answers); the first row is what the construction gives.",
        "",
        readings_table(rows),
        "",
    ])
