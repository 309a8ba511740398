"""Releasing a trained checkpoint: evaluate it at every forced k and write it with its model card.

A released checkpoint is our directory format without optimizer state, whose coconut.json
metadata holds the measured accuracies (`evaluation`) and the training record of every phase
(`training`), and whose README.md is the model card built from them (`probe.release.card.model_card`).
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from probe.artifacts import COCONUT_CONFIG, TRAINER_STATE
from probe.data.prosqa import ProsQAItem, load_items
from probe.data.render import check_tokenizer_writes
from probe.model.evaluate import GOLD, evaluate
from probe.formats import read_json_object
from probe.model.checkpoint import CheckpointError, load_checkpoint, read_meta, save_checkpoint
from probe.model.coconut import CoconutModel
from probe.model.placement import parse_device, parse_dtype
from probe.train.config import read_options

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
    from probe.release.card import model_card  # the card renders a Release: it imports this module

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
        raise CheckpointError(f"{path}: {COCONUT_CONFIG} records no evaluation (not a released checkpoint)")
    for key in ("accuracy_by_k", "correct_by_k"):
        ev[key] = {int(k): v for k, v in ev[key].items()}  # JSON keys are strings
    return Evaluation(**ev)
