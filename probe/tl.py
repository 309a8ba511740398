"""TransformerLens beside the toolkit: a ThoughtTrace as a TransformerLens ActivationCache, and back.

Optional (`pip install -e '.[tl]'`, transformer-lens 4.3); nothing else in the package imports this module.
Our hook names are TransformerLens's, so a trace converts key for key; the cache's position axis holds the
trace's steps (the positions that emit thoughts 1..k, then the first answer position), so TL's cache methods
(`accumulated_resid`, `decompose_resid`, `apply_ln_to_stack`, `logit_attrs`, ...) run on thoughts. The
methods that need a model (its config, final norm, unembedding) get a TransformerBridge over a copy of the
model's base (`bridge_for`).
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from probe.capture import ThoughtTrace
from probe.model.coconut import CoconutModel
from probe.model.hook_names import HookNameError, layer_of, point_of

PATTERN = "attn.hook_pattern"


class TLError(ValueError):
    """TransformerLens is missing, cannot bridge a model, or a cache does not fit a trace."""


def _transformer_lens():
    try:
        import transformer_lens
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:
        raise TLError("TransformerLens is not installed; install the extra: pip install -e '.[tl]'") from None
    return transformer_lens, TransformerBridge


def bridge_for(model: CoconutModel, tokenizer) -> Any:
    """A TransformerLens TransformerBridge over a copy of the model's base (same weights, same dtype and device).

    Booting a bridge replaces the Hugging Face modules it wraps by bridge components, so it boots over a copy
    and `model` stays as it is. The bridge is in TransformerLens's raw mode (no weight folding): its outputs
    are the model's. Raises TLError when TransformerLens is not installed or cannot bridge the architecture.
    """
    _, TransformerBridge = _transformer_lens()
    base = copy.deepcopy(model.base)
    name = getattr(base.config, "_name_or_path", "") or type(base).__name__
    tok = copy.deepcopy(tokenizer)  # TL sets its padding side and pad token
    if "name_or_path" not in tok.init_kwargs:  # built in memory: TL could not reload it from a directory
        tok.init_kwargs.update(name_or_path="", add_bos_token=True)
    try:
        bridge = TransformerBridge.boot_transformers(name, hf_model=base, tokenizer=tok, device=str(model.device),
                                                     dtype=next(base.parameters()).dtype)
    except (ValueError, KeyError, NotImplementedError, OSError) as e:
        first = str(e).split(". Available", 1)[0].splitlines()[0]
        raise TLError(f"{type(model.base).__name__}: TransformerLens cannot bridge this model ({first})") from None
    bridge.eval()
    return bridge


def to_activation_cache(trace: ThoughtTrace, bridge: Any) -> Any:
    """The trace as a TransformerLens ActivationCache, every captured hook under its (TL) name.

    Tensors keep the batch axis and have the trace's steps as positions: [batch, k + 1, ...]; attention
    patterns become TL's [batch, heads, k + 1, keys] (keys: prompt positions). bridge: what the cache's
    methods read the model from (`bridge_for`). Raises TLError when TransformerLens is not installed.
    """
    transformer_lens, _ = _transformer_lens()
    cache = {}
    for name, t in trace.cache.items():
        cache[name] = t.transpose(1, 2) if point_of(name) == PATTERN else t
    return transformer_lens.ActivationCache(cache, bridge, has_batch_dim=True)


def from_activation_cache(cache: Any, trace: ThoughtTrace) -> ThoughtTrace:
    """Back: a ThoughtTrace of `trace`'s items, steps and prompts holding the cache's tensors.

    cache: an ActivationCache (or a mapping) of TL hook names to [batch, k + 1, ...] tensors, as
    to_activation_cache writes them. Raises TLError for a name outside our hook vocabulary, a cache without
    a batch axis, or tensors whose batch or step axes differ from the trace's.
    """
    if getattr(cache, "has_batch_dim", True) is False:
        raise TLError("the cache has no batch axis; build it with has_batch_dim=True")
    out = {}
    for name in cache.keys():
        try:
            layer_of(name)  # parses the name; a hook point a trace cannot hold is refused
        except HookNameError:
            raise TLError(f"{name!r} is not one of the hook points a ThoughtTrace holds") from None
        t = cache[name]
        t = t.transpose(1, 2) if point_of(name) == PATTERN else t
        if tuple(t.shape[:2]) != (len(trace), trace.k + 1):
            raise TLError(f"{name}: shape {list(t.shape)} does not hold the trace's {len(trace)} items and "
                          f"{trace.k + 1} steps")
        out[name] = t.detach().clone() if isinstance(t, torch.Tensor) else t
    back = trace.select(torch.arange(len(trace)))
    back.cache = out
    return back
