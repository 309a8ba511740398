"""Where a Hugging Face decoder keeps its layers, attention, MLP and final norm (GPT-2, Llama, NeoX, ...),
and which of those modules each TransformerLens hook name (probe.model.hook_names) is read from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from torch import nn

from probe.model.hook_names import FINAL, layer_index, layer_of, point_of

if TYPE_CHECKING:
    from probe.model.coconut import CoconutModel


class ArchitectureError(ValueError):
    """A base model whose decoder layers or final norm cannot be found."""


# hook point -> (where in a block it is read: the block itself, its attention or MLP; PositionHook's options)
_POINTS: dict[str, tuple[str | None, dict[str, Any]]] = {
    "hook_resid_pre": (None, {"inputs": True}),
    "hook_resid_post": (None, {}),
    "hook_attn_out": ("attn", {}),
    "attn.hook_pattern": ("attn", {"part": 1, "heads_first": True}),
    "hook_mlp_out": ("mlp", {}),
}


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

    def hook_point(self, name: str) -> tuple[nn.Module, dict[str, Any]]:
        """The module a hook name is read from, with the PositionHook options that read it there.

        `blocks.{l}.hook_resid_pre` is block l's input, `hook_resid_post` its output (element 0),
        `hook_attn_out` and `hook_mlp_out` its attention's and MLP's output, `attn.hook_pattern` its
        attention's weights (element 1, [batch, heads, seq, keys]: heads first); FINAL is the final norm's output.
        Raises HookNameError for a name that is not a hook name or a block past this model's.
        """
        if name == FINAL:
            return self.final_norm, {}
        where, options = _POINTS[point_of(name)]
        block = self.layers[layer_index(layer_of(name), self.n_layers)]
        return (block if where is None else getattr(block, getattr(self, where))), dict(options)


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
    """Find the decoder layers, attention, MLP and final norm of a Hugging Face causal LM.

    Raises ArchitectureError when its layers, final norm, attention or MLP cannot be found."""
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


def architecture(model: "CoconutModel") -> Architecture:
    """The decoder layers, attention, MLP and final norm of a CoconutModel's base (GPT-2, Llama, NeoX, ...).

    Raises ArchitectureError when they cannot be found."""
    return find_architecture(model.base)
