"""Releasing a trained checkpoint: evaluate it at every forced k and write it with its model card.

A released checkpoint is our directory format without optimizer state, whose coconut.json
metadata holds the measured accuracies (`evaluation`) and the training record of every phase
(`training`), and whose README.md is the model card built from them.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from probe.artifacts import RUN_CHECKPOINT, TRAINER_STATE
from probe.data.prosqa import ProsQAItem, load_items
from probe.data.render import check_tokenizer_writes
from probe.evaluate import GOLD, evaluate
from probe.formats import read_json_object
from probe.model.checkpoint import CheckpointError, card_format, load_checkpoint, read_meta, save_checkpoint
from probe.model.coconut import CoconutModel
from probe.model.placement import parse_device, parse_dtype
from probe.train_config import read_options

FIRST_N = 50  # the shipped-model test re-measures the first FIRST_N items
MARGIN_ITEMS = 2  # ...and allows this many items of difference (numerics may flip a near tie)


@dataclass
class Phase:
    """One training run in a checkpoint's lineage: its config file and per-epoch records."""

    config_path: str
    config: dict[str, Any]
    history: list[dict[str, Any]]

    @property
    def seconds(self) -> float:
        return sum(h.get("seconds", 0.0) for h in self.history)

    @property
    def untimed_epochs(self) -> int:
        return sum("seconds" not in h for h in self.history)


@dataclass(kw_only=True)
class Evaluation:
    """Accuracy on one data file at each forced number of thoughts."""

    data: str
    n: int
    default_k: int
    accuracy_by_k: dict[int, float]
    correct_by_k: dict[int, int]
    first_n: int
    first_n_correct: int  # at default_k
    gold_accuracy: float | None = None  # with each item's gold number of steps as its thoughts (RbS's evaluation)
    gold_correct: int | None = None

    @property
    def accuracy(self) -> float:
        return self.accuracy_by_k[self.default_k]


@dataclass
class Release:
    """What `release` wrote: where, what it measured, and how the model was trained."""

    path: Path
    name: str
    evaluation: Evaluation
    phases: list[Phase] = field(default_factory=list)


def lineage(ckpt: Path, config_paths: Sequence[str | Path]) -> list[Phase]:
    """The training phases behind a checkpoint, oldest first, matched to their config files."""
    state_file = ckpt / TRAINER_STATE
    if not state_file.is_file():
        raise CheckpointError(f"{ckpt}: no {TRAINER_STATE}; release needs a checkpoint written by `probe train`")
    state = read_json_object(state_file, CheckpointError, TRAINER_STATE)
    histories = []
    node: dict[str, Any] | None = state
    while node:
        histories.append(node.get("history", []))
        node = node.get("init")
    histories.reverse()
    if len(config_paths) != len(histories):
        raise CheckpointError(
            f"{ckpt}: trained in {len(histories)} phase(s) but {len(config_paths)} config file(s) were given; "
            "give one per phase, oldest first"
        )
    phases = []
    for path, hist in zip(config_paths, histories):
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: no such config file")
        phases.append(Phase(str(path), read_options(path), hist))
    if state.get("config"):  # the last phase ran with this config, command-line overrides included
        phases[-1].config = state["config"]
    return phases


def evaluate_by_k(
    model: CoconutModel, tokenizer, items: Sequence[ProsQAItem], *, data: str, first_n: int = FIRST_N,
    batch_size: int = 64, progress: bool = True,
) -> Evaluation:
    """Accuracy with k = 0..max_latent_stage forced thoughts (k = 0 only for modes without thoughts), and
    for a model with thoughts at each item's gold number of steps."""
    spec = model.config.stage_spec
    default_k = model.config.default_thoughts
    ks = range(spec.max_latent_stage * spec.c_thought + 1) if spec.markers else range(1)
    acc, correct, first = {}, {}, 0
    for k in ks:
        res = evaluate(model, tokenizer, items, k=k, batch_size=batch_size, progress=progress)
        acc[k], correct[k] = res.accuracy, sum(r.correct for r in res.items)
        if k == default_k:
            first = sum(r.correct for r in res.items[:first_n])
    gold = {}
    if spec.markers:
        res = evaluate(model, tokenizer, items, k=GOLD, batch_size=batch_size, progress=progress)
        gold = {"gold_accuracy": res.accuracy, "gold_correct": sum(r.correct for r in res.items)}
    return Evaluation(data=data, n=len(items), default_k=default_k, accuracy_by_k=acc, correct_by_k=correct,
                      first_n=min(first_n, len(items)), first_n_correct=first, **gold)


def release(
    ckpt: str | Path, out: str | Path, data: str | Path, config_paths: Sequence[str | Path],
    *, name: str | None = None, summary: str = "", progress: bool = True, device: str = "cpu",
    store_dtype: str | torch.dtype = "float32", allow_lossy_tokenizer: bool = False,
) -> Release:
    """Evaluate a training checkpoint (in float32) and write it, without optimizer state, with its model card.

    store_dtype: the dtype of the written weights (bfloat16 halves the files; loading casts back to
    float32). Raises CheckpointError for a checkpoint without a training record, PlacementError for an
    unknown store_dtype or an absent device, LossyTokenizerError for a tokenizer that cannot write the data (before
    any evaluation; with allow_lossy_tokenizer, a warning on stderr).
    """
    stored = parse_dtype(store_dtype, "store dtype")
    device = parse_device(device)
    ckpt, out = Path(ckpt), Path(out)
    phases = lineage(ckpt, config_paths)
    items = load_items(data)
    model, tok = load_checkpoint(ckpt, device=device)
    warning = check_tokenizer_writes(items, tok, model.config.data_format, source=f"--data {data}",
                                     allow_lossy=allow_lossy_tokenizer)
    if warning:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    evaluation = evaluate_by_k(model, tok, items, data=Path(data).name, progress=progress)
    rel = Release(out, name or out.name, evaluation, phases)
    meta = {"evaluation": asdict(evaluation), "training": [asdict(p) for p in phases],
            "weights_dtype": str(stored).removeprefix("torch.")}
    model.to(device="cpu", dtype=stored)
    save_checkpoint(model, tok, out, card=model_card(rel, model, summary), metadata=meta)
    return rel


def read_evaluation(path: str | Path) -> Evaluation:
    """The evaluation a released checkpoint's coconut.json records."""
    meta = read_meta(path)
    ev = meta.get("metadata", {}).get("evaluation")
    if ev is None:
        raise CheckpointError(f"{path}: coconut.json records no evaluation (not a released checkpoint)")
    for key in ("accuracy_by_k", "correct_by_k"):
        ev[key] = {int(k): v for k, v in ev[key].items()}  # JSON keys are strings
    return Evaluation(**ev)


# ---------------------------------------------------------------------------- the card


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
    from probe.analyze import last_layer

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
        f"probe release --ckpt {run_dir}/{RUN_CHECKPOINT.format(epoch=last)} --out {rel.path} "
        f"--data ../shared/data/{ev.data} "
        + " ".join(f"--config {p.config_path}" for p in rel.phases),
        f"probe eval --ckpt {rel.path} --data ../shared/data/{ev.data}",
        "```",
    ]
    return "\n".join(lines) + "\n"
