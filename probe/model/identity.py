"""A model's identity: the hashes that a fitted readout (tuned lens, probe, SAE) is tied to.

Each hash is a sha256 over the model's tensors in name order (each name, then the tensor's float32
bytes): `weights_hash` over every parameter and buffer (probes and SAEs read activations that any
weight shapes), `readout_hash` over the final norm and the unembedding (a tuned lens reads only
through them). They identify the weights as stored: `load_checkpoint` pins both before it casts a
model to a lower precision (`pin`), so a bfloat16 copy of a model keeps its float32 identity and the
readouts fit on it, while a model that differs in one element does not.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

import torch
from torch import nn

from probe.model.architecture import architecture

WEIGHTS, READOUT = "weights", "readout"


def _sha256(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    h = hashlib.sha256()
    for name, t in named:
        h.update(name.encode())
        h.update(t.detach().to(torch.float32).cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _readout_modules(model) -> tuple[nn.Module, nn.Module]:
    return architecture(model).final_norm, model.base.get_output_embeddings()


def weights_hash(model: nn.Module) -> str:
    """sha256 of every tensor of a model's state dict (the pinned one, if load_checkpoint pinned it)."""
    pinned = getattr(model, "identity", {}).get(WEIGHTS)
    return pinned or _sha256(sorted(model.state_dict().items()))


def readout_hash(model) -> str:
    """sha256 of a CoconutModel's final norm and unembedding weights (the pinned one, if pinned)."""
    pinned = getattr(model, "identity", {}).get(READOUT)
    if pinned:
        return pinned
    return _sha256((name, t) for mod in _readout_modules(model) for name, t in sorted(mod.state_dict().items()))


def pin(model) -> None:
    """Compute both hashes now and keep them on the model (before a cast that would change the bytes)."""
    model.identity = {}
    model.identity = {WEIGHTS: weights_hash(model), READOUT: readout_hash(model)}
