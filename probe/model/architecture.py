"""Where a Hugging Face decoder keeps its layers, attention, MLP and final norm (GPT-2, Llama, NeoX, ...)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from torch import nn


class ArchitectureError(ValueError):
    """A base model whose decoder layers or final norm cannot be found."""


@dataclass(frozen=True)
class Architecture:
    """The modules that TransformerLens-style hook names refer to."""

    layers: nn.ModuleList
    attn: str  # attribute of a layer
    mlp: str
    final_norm: nn.Module

    @property
    def n_layers(self) -> int:
        return len(self.layers)


def _first_attr(obj: object, names: Sequence[str]) -> object | None:
    for name in names:
        cur = obj
        for part in name.split("."):
            cur = getattr(cur, part, None)
            if cur is None:
                break
        if cur is not None:
            return cur
    return None


def find_architecture(base: nn.Module) -> Architecture:
    """Find the decoder layers, attention, MLP and final norm of a Hugging Face causal LM."""
    backbone = base.base_model
    layers = _first_attr(backbone, ("h", "layers", "decoder.layers", "blocks"))
    final = _first_attr(backbone, ("ln_f", "norm", "final_layer_norm", "decoder.final_layer_norm", "final_norm"))
    name = type(base).__name__
    if not isinstance(layers, nn.ModuleList) or not isinstance(final, nn.Module):
        raise ArchitectureError(f"{name}: cannot find its decoder layers and final norm; "
                                "add it to probe/model/architecture.py")
    attn = next((a for a in ("attn", "self_attn", "attention") if hasattr(layers[0], a)), None)
    mlp = next((m for m in ("mlp", "feed_forward") if hasattr(layers[0], m)), None)
    if attn is None or mlp is None:
        raise ArchitectureError(f"{name}: cannot find the attention and MLP of its layers")
    return Architecture(layers, attn, mlp, final)
