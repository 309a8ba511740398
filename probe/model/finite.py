"""Finite numbers: never a NaN or an inf passed off as a value.

Two rules, each with one home:

- At load (`check_finite_tensors`): every tensor of a model (our checkpoint, an official state dict, a base
  model), a tuned lens, a probe and an SAE is checked once; a file holding NaN or inf is refused in one line
  that names the file and its first bad tensor.
- During a run (`NonFiniteActivation`): a model whose weights are finite can still overflow (float16, huge
  weights, an edit); `CoconutModel.forward` checks what it computes (one `isfinite().all()` per batch tensor)
  and raises this error naming the row, the thought (or prompt position) and the hook point where the first
  non-finite value appears. The loops that batch items translate the row into the item's index with
  `probe.model.rows.rows_are`.
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch
from torch import Tensor

from probe.model.rows import RowError

DAMAGED = "the file is damaged or came from a diverged run"


class NonFiniteError(ValueError):
    """A loaded file, or a value computed from it, that holds NaN or inf."""


def _counts(t: Tensor) -> tuple[int, int]:
    return int(torch.isnan(t).sum()), int(torch.isinf(t).sum())


def describe_counts(nan: int, inf: int) -> str:
    """'3 NaN values', '1 inf value', '3 NaN and 2 inf values'."""
    parts = [f"{n} {what}" for n, what in ((nan, "NaN"), (inf, "inf")) if n]
    return " and ".join(parts) + (" value" if nan + inf == 1 else " values")


def first_nonfinite(named: Iterable[tuple[str, Tensor | np.ndarray]]) -> tuple[str, int, int] | None:
    """(name, NaN count, inf count) of the first tensor, in the given order, that holds NaN or inf; None if all
    are finite. Integer and boolean tensors are finite by nature and skipped. One `isfinite().all()` per tensor."""
    for name, t in named:
        if isinstance(t, np.ndarray):
            if not np.issubdtype(t.dtype, np.floating) and not np.issubdtype(t.dtype, np.complexfloating):
                continue
            t = torch.from_numpy(np.ascontiguousarray(t))
        if not (t.is_floating_point() or t.is_complex()):
            continue
        if not bool(torch.isfinite(t.detach()).all()):
            return (name, *_counts(t.detach()))
    return None


def check_finite_tensors(named: Iterable[tuple[str, Tensor | np.ndarray]], source: str | Callable[[str], str],
                         error: type[ValueError] = NonFiniteError, advice: str = DAMAGED) -> None:
    """The one load-time check of a file's tensors (models, tuned lenses, probes, SAEs).

    named: (tensor name as the file stores it, tensor) pairs, in the file's order; source: the file, or a
    function from a tensor's name to its file (a model sharded over several files). Raises `error` (the
    loader's own ValueError class) in one line: "{file}: tensor {name} holds 3 NaN values; {advice}".
    """
    bad = first_nonfinite(named)
    if bad is not None:
        name, nan, inf = bad
        where = source(name) if callable(source) else source
        raise error(f"{where}: tensor {name} holds {describe_counts(nan, inf)}; {advice}")


class NonFiniteActivation(NonFiniteError, RowError):
    """A value computed during a run that is NaN or inf: which row (item), where in its sequence, which hook.

    row: the row of the batch, translated into the caller's item index by `rows_are`; where: "thought 2",
    "prompt position 5", "prompt positions 0-40" or "answer token 3"; point: the hook name where it first appears
    ("blocks.1.hook_resid_post", "ln_final.hook_normalized", "logits"); advice: what to do.
    """

    def __init__(self, row: int, where: str, point: str, advice: str, item: int | None = None):
        RowError.__init__(self, row, f"NaN or inf first appears at {point}, in {where}; {advice}", item)
        self.where, self.point, self.advice = where, point, advice
