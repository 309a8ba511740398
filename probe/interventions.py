"""Causal tests of the thoughts: ablate, patch and steer them, and measure what the answer and the frontier do.

Edits are built by pure functions from captured thoughts (`ablation_edit`, `patch_edit`,
`steer_edit`) as a `ThoughtEdit`, which `CoconutModel` applies inside its latent loop: an edited
thought is what the next position receives, so later thoughts follow from it. `intervene` runs
the data set with and without an edit and reports the accuracy, the answers that changed, and
(optionally) the frontier values after k thoughts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from probe.data.graph import ProsQAGraph
from probe.data.prosqa import ProsQAItem
from probe.evaluate import evaluate
from probe.frontier import frontier_mass
from probe.model.coconut import CoconutModel, ThoughtEdit

ABLATIONS = ("zero", "mean", "random", "other")


class InterventionError(ValueError):
    """An intervention that cannot be built (bad kind, step, shapes)."""


def _steps_mask(n: int, k: int, steps: Sequence[int] | None) -> Tensor:
    """[n, k] bool: the 1-based thoughts to edit (None: all)."""
    steps = list(range(1, k + 1)) if steps is None else list(steps)
    bad = [s for s in steps if not 1 <= s <= k]
    if bad:
        raise InterventionError(f"thought(s) {bad} out of range: there are {k} thoughts (1..{k})")
    mask = torch.zeros(n, k, dtype=torch.bool)
    mask[:, [s - 1 for s in steps]] = True
    return mask


def ablation_edit(thoughts: Tensor, kind: str, steps: Sequence[int] | None = None, seed: int = 0) -> ThoughtEdit:
    """Replace thoughts [n, k, d] at the given steps (default all) by zero, the data-set mean of that step,
    a random vector with the thought's own norm, or the same step's thought of another item (a derangement)."""
    if kind not in ABLATIONS:
        raise InterventionError(f"unknown ablation {kind!r}; expected one of {ABLATIONS}")
    n, k, d = thoughts.shape
    g = torch.Generator().manual_seed(seed)
    if kind == "zero":
        replace = torch.zeros_like(thoughts)
    elif kind == "mean":
        replace = thoughts.mean(0, keepdim=True).expand(n, k, d).clone()
    elif kind == "random":
        r = torch.randn(n, k, d, generator=g)
        replace = r / r.norm(dim=-1, keepdim=True) * thoughts.norm(dim=-1, keepdim=True)
    else:
        if n < 2:
            raise InterventionError("the 'other' ablation needs at least two items")
        shift = int(torch.randint(1, n, (1,), generator=g))
        replace = thoughts[(torch.arange(n) + shift) % n]  # a cyclic shift: no item keeps its own
    return ThoughtEdit(_steps_mask(n, k, steps), replace)


def patch_edit(source: Tensor, steps: Sequence[int] | None = None) -> ThoughtEdit:
    """Put the source items' thoughts [n, k, d] into the targets (row b gets source row b) at the given steps."""
    n, k, _ = source.shape
    return ThoughtEdit(_steps_mask(n, k, steps), source)


def steer_edit(direction: Tensor, alpha: float, step: int, n: int, k: int) -> ThoughtEdit:
    """Add alpha times a direction [d] (or per item [n, d]) to thought `step` of every item."""
    direction = direction.float()
    if direction.ndim == 1:
        direction = direction.expand(n, -1)
    if direction.shape[0] != n:
        raise InterventionError(f"got {direction.shape[0]} directions for {n} items")
    if not 1 <= step <= k:
        raise InterventionError(f"thought {step} out of range: there are {k} thoughts (1..{k})")
    add = torch.zeros(n, k, direction.shape[-1])
    add[:, step - 1] = alpha * direction
    return ThoughtEdit(add=add)


@dataclass(frozen=True)
class InterventionResult:
    """One intervention beside the unedited run, on the same items and thoughts."""

    name: str
    k: int
    accuracy: float
    baseline_accuracy: float
    predictions: list[str]
    baseline_predictions: list[str]
    frontier_mass: np.ndarray | None  # [n] value mass on frontier_{values_at} with the edit (None: not measured)
    baseline_frontier_mass: np.ndarray | None
    values_at: int | None

    @property
    def changed(self) -> float:
        """Fraction of items whose answer changed."""
        return float(np.mean([a != b for a, b in zip(self.predictions, self.baseline_predictions)]))

    def as_dict(self) -> dict:
        out = {"name": self.name, "k": self.k, "accuracy": self.accuracy, "baseline_accuracy": self.baseline_accuracy,
               "accuracy_change": self.accuracy - self.baseline_accuracy, "answers_changed": self.changed}
        if self.frontier_mass is not None:
            out.update({"values_at": self.values_at, "frontier_mass": float(np.nanmean(self.frontier_mass)),
                        "baseline_frontier_mass": float(np.nanmean(self.baseline_frontier_mass))})
        return out


def intervene(
    model: CoconutModel, tokenizer, items: Sequence[ProsQAItem], edit: ThoughtEdit | None, k: int, name: str = "",
    values_at: int | None = None, batch_size: int = 32,
) -> InterventionResult:
    """Answer every item after k thoughts with and without the edit; with values_at, also the frontier mass
    after that many thoughts (edits past it have no effect there)."""
    from probe.capture import node_values

    items = list(items)
    base = evaluate(model, tokenizer, items, k=k, batch_size=batch_size, progress=False)
    res = evaluate(model, tokenizer, items, k=k, batch_size=batch_size, progress=False, edit=edit)
    mass = base_mass = None
    if values_at is not None:
        graphs = [ProsQAGraph.from_item(it) for it in items]
        v0 = node_values(model, tokenizer, items, values_at, batch_size=batch_size, progress=False).numpy()
        v1 = node_values(model, tokenizer, items, values_at, batch_size=batch_size, progress=False, edit=edit).numpy()
        base_mass, mass = frontier_mass(v0, graphs, values_at), frontier_mass(v1, graphs, values_at)
    return InterventionResult(name, k, res.accuracy, base.accuracy, [r.prediction for r in res.items],
                              [r.prediction for r in base.items], mass, base_mass, values_at)
