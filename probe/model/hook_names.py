"""Hook names: TransformerLens's names for the points we read and edit, built, parsed and checked here only.

A name is `blocks.{layer}.{point}` for a point inside decoder block `layer` (one of POINTS), or
`ln_final.hook_normalized` (FINAL: the final norm's output, whose next-token readout is the model's
logits). Layers count from 0; where a layer argument is documented to take them, negative layers count
from the end as Python's indices do (-1 is the last block). Unlike TransformerLens's `get_act_name`
there is no shorthand ("resid_post" is spelled "hook_resid_post").
"""

from __future__ import annotations

import fnmatch
from typing import Sequence

POINTS = ("hook_resid_pre", "attn.hook_pattern", "hook_attn_out", "hook_mlp_out", "hook_resid_post")
RESID = "hook_resid_post"
FINAL = "ln_final.hook_normalized"


class HookNameError(ValueError):
    """A layer out of a model's range, or a hook name or pattern that names no hook point."""


def layer_index(layer: int, n_layers: int, error: type[Exception] = HookNameError) -> int:
    """A layer as a non-negative index: 0..n_layers - 1, or negative from the end (-1 is the last).

    The one rule for layer arguments (every command, the library and the app). Raises `error` (the
    caller's error class, a ValueError) naming the layer and the model's range.
    """
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise error(f"layer {layer!r} is not an integer")
    if not -n_layers <= layer < n_layers:
        raise error(f"layer {layer} is out of range for a model with {n_layers} layers "
                    f"(0..{n_layers - 1}, or -{n_layers}..-1 from the end)")
    return layer % n_layers


def act_name(point: str, layer: int, n_layers: int | None = None) -> str:
    """The hook name of `point` (e.g. "hook_resid_post") in block `layer`: "blocks.3.hook_resid_post".

    A negative layer needs n_layers (it counts from the end); with n_layers the layer is checked.
    Raises HookNameError for an unknown point or a layer out of range.
    """
    if point not in POINTS:
        raise HookNameError(f"unknown hook point {point!r}; expected one of {', '.join(POINTS)}")
    if n_layers is not None:
        layer = layer_index(layer, n_layers)
    elif layer < 0:
        raise HookNameError(f"layer {layer} counts from the end; give n_layers to resolve it")
    return f"blocks.{layer}.{point}"


def layer_of(name: str) -> int | None:
    """The block a hook name belongs to ("blocks.3.hook_mlp_out" -> 3), or None for FINAL."""
    return None if name == FINAL else int(_split(name)[0])


def point_of(name: str) -> str:
    """The hook point of a name ("blocks.3.attn.hook_pattern" -> "attn.hook_pattern"; FINAL -> FINAL)."""
    return FINAL if name == FINAL else _split(name)[1]


def _split(name: str) -> tuple[str, str]:
    parts = name.split(".", 2)
    if len(parts) != 3 or parts[0] != "blocks" or not parts[1].isdigit() or parts[2] not in POINTS:
        raise HookNameError(f"{name!r} is not a hook name; names look like 'blocks.0.hook_resid_post' or {FINAL!r}")
    return parts[1], parts[2]


def hook_names(n_layers: int) -> list[str]:
    """Every hook name of a model with n_layers blocks, in forward order (FINAL last)."""
    return [f"blocks.{l}.{p}" for l in range(n_layers) for p in POINTS] + [FINAL]


def check_names(names: Sequence[str], n_layers: int) -> list[str]:
    """The names, each checked to be a hook of a model with n_layers blocks. Raises HookNameError naming
    the unknown ones."""
    known = set(hook_names(n_layers))
    if unknown := [n for n in names if n not in known]:
        raise HookNameError(f"unknown hook name(s) {unknown} for a model with {n_layers} layers; names look like "
                            f"'blocks.0.hook_resid_post' or {FINAL!r}")
    return list(names)


def select_hooks(n_layers: int, patterns: Sequence[str] | None = None, layers: Sequence[int] | None = None) -> list[str]:
    """Hook names matching any glob pattern (default: all), restricted to some layers (negative from the end).

    Raises HookNameError for a layer out of range or a pattern that matches no hook.
    """
    names = hook_names(n_layers)
    if layers is not None:
        keep = {layer_index(l, n_layers) for l in layers}
        names = [n for n in names if n == FINAL or layer_of(n) in keep]
    if patterns:
        unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in names)]
        if unmatched:
            raise HookNameError(f"hook pattern(s) {unmatched} match no hook; names look like {names[0]!r} or {FINAL!r}")
        names = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    return names


def parse_layers(text: str | None, setting: str = "layers") -> list[int] | None:
    """Layers as typed on a command line, "0,2,-1" -> [0, 2, -1] (None stays None: every layer).

    Only parses; a layer is checked against a model by layer_index (so 3 and -1 may still name one layer of a
    4-layer model). Raises HookNameError, its line starting with `setting` (e.g. "--layers"), on text that is
    not comma-separated integers (an empty item included) or that names a layer twice.
    """
    if text is None:
        return None
    try:
        layers = [int(x) for x in text.split(",")]
    except ValueError:
        raise HookNameError(f"{setting}: expected comma-separated integers such as 0,2,-1, got {text!r}") from None
    if len(set(layers)) < len(layers):
        raise HookNameError(f"{setting}: a layer is named twice in {text!r}")
    return layers
