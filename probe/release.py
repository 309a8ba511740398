"""Releasing a trained checkpoint: evaluate it at every forced k and write it with its model card.

A released checkpoint is our directory format without optimizer state, whose coconut.json
metadata holds the measured accuracies (`evaluation`) and the training record of every phase
(`training`), and whose README.md is the model card built from them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from probe.data.prosqa import ProsQAItem, load_items
from probe.evaluate import evaluate
from probe.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from probe.model.coconut import CoconutModel

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


@dataclass
class Evaluation:
    """Accuracy on one data file at each forced number of thoughts."""

    data: str
    n: int
    default_k: int
    accuracy_by_k: dict[int, float]
    correct_by_k: dict[int, int]
    first_n: int
    first_n_correct: int  # at default_k

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
    state_file = ckpt / "trainer_state.json"
    if not state_file.is_file():
        raise CheckpointError(f"{ckpt}: no trainer_state.json; release needs a checkpoint written by `probe train`")
    state = json.loads(state_file.read_text())
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
        phases.append(Phase(str(path), yaml.safe_load(path.read_text()), hist))
    return phases


def evaluate_by_k(
    model: CoconutModel, tokenizer, items: Sequence[ProsQAItem], data: str, first_n: int = FIRST_N,
    batch_size: int = 64, progress: bool = True,
) -> Evaluation:
    """Accuracy with k = 0..max_latent_stage forced thoughts (k = 0 only for modes without thoughts)."""
    spec = model.config.stage_spec
    default_k = model.config.default_thoughts
    ks = range(spec.max_latent_stage * spec.c_thought + 1) if spec.markers else range(1)
    acc, correct, first = {}, {}, 0
    for k in ks:
        res = evaluate(model, tokenizer, items, k=k, batch_size=batch_size, progress=progress)
        acc[k], correct[k] = res.accuracy, sum(r.correct for r in res.items)
        if k == default_k:
            first = sum(r.correct for r in res.items[:first_n])
    return Evaluation(data, len(items), default_k, acc, correct, min(first_n, len(items)), first)


def release(
    ckpt: str | Path, out: str | Path, data: str | Path, config_paths: Sequence[str | Path],
    name: str | None = None, summary: str = "", progress: bool = True,
) -> Release:
    """Evaluate a training checkpoint and write it, without optimizer state, with its model card."""
    ckpt, out = Path(ckpt), Path(out)
    phases = lineage(ckpt, config_paths)
    items = load_items(data)
    model, tok = load_checkpoint(ckpt)
    evaluation = evaluate_by_k(model, tok, items, data=Path(data).name, progress=progress)
    rel = Release(out, name or out.name, evaluation, phases)
    meta = {"evaluation": asdict(evaluation), "training": [asdict(p) for p in phases]}
    save_checkpoint(model, tok, out, card=model_card(rel, model, summary), metadata=meta)
    return rel


def read_evaluation(path: str | Path) -> Evaluation:
    """The evaluation a released checkpoint's coconut.json records."""
    meta = json.loads((Path(path) / "coconut.json").read_text())
    ev = meta.get("metadata", {}).get("evaluation")
    if ev is None:
        raise CheckpointError(f"{path}: coconut.json records no evaluation (not a released checkpoint)")
    for key in ("accuracy_by_k", "correct_by_k"):
        ev[key] = {int(k): v for k, v in ev[key].items()}  # JSON keys are strings
    return Evaluation(**ev)


# ---------------------------------------------------------------------------- the card


def _minutes(s: float) -> str:
    return f"{s / 60:.0f} min" if s < 5400 else f"{s / 3600:.1f} h"


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
        f"- data format: `{cfg.data_format}`; c_thought={cfg.c_thought}, max_latent_stage={cfg.max_latent_stage}, "
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
        lines.append(
            f"- phase {i}: `{p.config_path}`, mode `{c.get('mode', 'coconut')}`, {len(p.history)} epochs of "
            f"{c.get('train_size')} {'fresh ' if c.get('fresh_data_every_epoch') else ''}generated items (data seed "
            f"{c.get('seed', 0)}), stages {stages[0]}..{stages[-1]}, lr {c.get('lr')} ({c.get('schedule', 'constant')}), "
            f"batch {c.get('batch_size')}; {_minutes(p.seconds)}"
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
        "epoch's stage.",
        "",
        "| phase | epoch | stage | train loss | val accuracy | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for i, p in enumerate(rel.phases, 1):
        for h in p.history:
            va = f"{h['val_accuracy']:.0%}" if "val_accuracy" in h else "-"
            sec = f"{h['seconds']:.0f}" if "seconds" in h else "-"
            lines.append(f"| {i} | {h['epoch']} | {h['stage']} | {h['train_loss']:.4f} | {va} | {sec} |")
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
        *[f"probe train --config {p.config_path}" for p in rel.phases],
        f"probe release --ckpt {run_dir}/epoch-{last:03d} --out {rel.path} --data ../shared/data/{ev.data} "
        + " ".join(f"--config {p.config_path}" for p in rel.phases),
        f"probe eval --ckpt {rel.path} --data ../shared/data/{ev.data}",
        "```",
    ]
    return "\n".join(lines) + "\n"
