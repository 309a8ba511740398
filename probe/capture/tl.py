"""TransformerLens beside the toolkit: a ThoughtTrace as a TransformerLens ActivationCache, and back.

Optional (`pip install -e '.[tl]'`, transformer-lens 4.3); nothing else in the package imports this module.
Our hook names are TransformerLens's, so a trace converts key for key; the cache's position axis holds the
trace's steps (the positions that emit thoughts 1..k, then the first answer position), so TL's cache methods
(`accumulated_resid`, `decompose_resid`, `apply_ln_to_stack`, `logit_attrs`, ...) run on thoughts. The
methods that need a model (its config, final norm, unembedding) get a TransformerBridge over the model's own
weights (`bridge_for`), and CoconutBridge runs the latent loop itself through one.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from probe.capture.trace import ThoughtTrace
from probe.model.coconut import FEEDBACK_MODES, CoconutModel
from probe.model.hook_names import FINAL, HookNameError, layer_of, point_of

PATTERN = "attn.hook_pattern"
# Our final-norm point is the norm's output (what a thought is); TransformerLens 4 calls that ln_final.hook_out,
# and its own ln_final.hook_normalized is the value before the norm's weight and bias.
TL_FINAL = "ln_final.hook_out"
DERIVED = ("hook_scale", "hook_resid_mid")
EMBED = {"hook_embed", "embed.hook_out"}  # TL 4's names for the token embedding


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
    """A TransformerLens TransformerBridge over the model's weights (its dtype and device).

    Booting a bridge replaces the Hugging Face modules it wraps by bridge components, so it boots over a copy
    of the module tree that shares the model's parameter and buffer tensors: `model` stays as it is and no
    weight is duplicated (but TransformerLens's own split of a fused QKV, as GPT-2's, is a copy made at boot).
    The bridge is in TransformerLens's raw mode (no weight folding): its outputs are the model's. Raises
    TLError when TransformerLens is not installed or cannot bridge the architecture.
    """
    _, TransformerBridge = _transformer_lens()
    shared = {id(t): t for t in [*model.base.parameters(), *model.base.buffers()]}
    base = copy.deepcopy(model.base, shared)
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
    """The trace as a TransformerLens ActivationCache, every captured hook under its TransformerLens 4 name.

    Tensors keep the batch axis and have the trace's steps as positions: [batch, k + 1, ...]; attention
    patterns become TL's [batch, heads, k + 1, keys] (keys: prompt positions); our ln_final.hook_normalized
    (the final norm's output) becomes TL 4's ln_final.hook_out. bridge: what the cache's methods read the
    model from (`bridge_for`). Raises TLError when TransformerLens is not installed.
    """
    transformer_lens, _ = _transformer_lens()
    cache = {}
    for name, t in trace.cache.items():
        cache[TL_FINAL if name == FINAL else name] = t.transpose(1, 2) if point_of(name) == PATTERN else t
    cache.update(_derived(cache, bridge.cfg))
    return transformer_lens.ActivationCache(cache, bridge, has_batch_dim=True)


def _norm_scale(x: torch.Tensor, cfg: Any) -> torch.Tensor:
    """[..., d] -> [..., 1]: what a norm divides by (TransformerLens's hook_scale): LayerNorm's standard deviation
    or RMSNorm's root mean square, with the model's eps."""
    x = x.float()
    if str(cfg.normalization_type).startswith("LN"):
        x = x - x.mean(-1, keepdim=True)
    return (x.pow(2).mean(-1, keepdim=True) + cfg.eps).sqrt()


def _derived(cache: dict[str, torch.Tensor], cfg: Any) -> dict[str, torch.Tensor]:
    """What TransformerLens's cache methods read that a trace does not capture but determines: the residual
    between attention and MLP (a sequential block: resid_pre + attn_out) and the norms' scales (ln1 from
    resid_pre, ln2 from resid_mid, ln_final from the last resid_post), so that apply_ln_to_stack, logit_attrs
    and accumulated_resid(incl_mid=True) run on thoughts."""
    out = {}
    n = cfg.n_layers
    for l in range(n):
        pre, attn = cache.get(f"blocks.{l}.hook_resid_pre"), cache.get(f"blocks.{l}.hook_attn_out")
        if pre is not None:
            out[f"blocks.{l}.ln1.hook_scale"] = _norm_scale(pre, cfg)
            if attn is not None and not getattr(cfg, "parallel_attn_mlp", False):
                out[f"blocks.{l}.hook_resid_mid"] = pre + attn
                out[f"blocks.{l}.ln2.hook_scale"] = _norm_scale(pre + attn, cfg)
    final = cache.get(f"blocks.{n - 1}.hook_resid_post")
    if final is not None:
        out["ln_final.hook_scale"] = _norm_scale(final, cfg)
    return out


def from_activation_cache(cache: Any, trace: ThoughtTrace) -> ThoughtTrace:
    """Back: a ThoughtTrace of `trace`'s items, steps and prompts holding the cache's tensors.

    cache: an ActivationCache (or a mapping) of TL hook names to [batch, k + 1, ...] tensors, as
    to_activation_cache writes them. Raises TLError for a name outside our hook vocabulary, a cache without
    a batch axis, or tensors whose batch or step axes differ from the trace's.
    """
    if getattr(cache, "has_batch_dim", True) is False:
        raise TLError("the cache has no batch axis; build it with has_batch_dim=True")
    out = {}
    for tl_name in cache.keys():
        if tl_name.endswith(DERIVED):  # what to_activation_cache computed from the trace itself
            continue
        if tl_name == FINAL:
            raise TLError(f"{FINAL} in TransformerLens 4 is the value before the final norm's weight and bias; a "
                          f"trace holds the norm's output, TransformerLens's {TL_FINAL}")
        name = FINAL if tl_name == TL_FINAL else tl_name
        try:
            layer_of(name)  # parses the name; a hook point a trace cannot hold is refused
        except HookNameError:
            raise TLError(f"{name!r} is not one of the hook points a ThoughtTrace holds") from None
        t = cache[tl_name]
        t = t.transpose(1, 2) if point_of(name) == PATTERN else t
        if tuple(t.shape[:2]) != (len(trace), trace.k + 1):
            raise TLError(f"{name}: shape {list(t.shape)} does not hold the trace's {len(trace)} items and "
                          f"{trace.k + 1} steps")
        out[name] = t.detach().clone() if isinstance(t, torch.Tensor) else t
    back = trace.select(torch.arange(len(trace)))
    back.cache = out
    return back


def _cache_as_past_key_values(module, args, kwargs):
    # transformers >= 5.24 hands a layer's attention the KV cache as `cache`; TransformerLens 4.3's attention
    # bridges read only `past_key_values` (or `layer_past`) and would run each latent segment without it.
    if kwargs.get("past_key_values") is None and kwargs.get("cache") is not None:
        kwargs["past_key_values"] = kwargs["cache"]
    return args, kwargs


class CoconutBridge:
    """A Coconut model whose latent loop runs through a TransformerLens TransformerBridge.

    The bridge is booted over the model's weights (bridge_for), and `model` is a CoconutModel over the
    bridged modules with the same config: its KV-cached latent loop fires TransformerLens's hooks in every
    segment. `bridge` is the TransformerBridge itself (hook points, `hooks()`, `cfg`, `W_U`, ...); `tokenizer`
    the model's.
    Raises TLError as bridge_for does.
    """

    def __init__(self, model: CoconutModel, tokenizer):
        self.bridge = bridge_for(model, tokenizer)
        for block in self.bridge.blocks:
            block.attn.register_forward_pre_hook(_cache_as_past_key_values, with_kwargs=True)
        self.model = CoconutModel(self.bridge.original_model, model.config)
        self.model.eval()
        self.tokenizer = tokenizer

    @classmethod
    def from_checkpoint(cls, path, base=None, device: str = "cpu", tokenizer=None) -> "CoconutBridge":
        """A checkpoint (ours, or an official state dict with its base directory or config file, and tokenizer)
        opened through a bridge.

        Loads it as load_checkpoint does (its errors included), then bridges it; `tokenizer` holds its tokenizer.
        """
        from probe.model.checkpoint import load_checkpoint

        model, tokenizer = load_checkpoint(path, base=base, device=device, tokenizer=tokenizer)
        return cls(model, tokenizer)

    @torch.no_grad()
    def run_with_cache(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                       names_filter=None) -> tuple[Any, Any]:
        """Run Coconut prompts (thoughts fed back at their `<|latent|>` positions) and cache every hook.

        input_ids, attention_mask: [batch, seq] (left padding, as CoconutModel takes them). names_filter: a
        hook name, a list of names, or a predicate on names (default: every hook point the bridge has on;
        TransformerLens keeps some off until asked, e.g. hook_mlp_in: a filter naming one of those is refused).
        Returns (CoconutOutput, ActivationCache): the cache holds each hook over the whole sequence,
        [batch, seq, ...], the latent loop's segments joined (attention patterns and scores
        [batch, heads, seq, seq], each segment's keys zero-padded to the sequence). At a `<|latent|>` position
        the token embedding (`hook_embed`) holds the thought fed back there, what the blocks received, so that
        decompose_resid adds up. A hook that does not see the sequence once is left out of the default.
        Raises TLError for input_ids that are not a tensor of ids, or a hook named in names_filter that this
        bridge lacks, keeps off (TL keeps some off until asked) or does not run once per position.
        """
        transformer_lens, _ = _transformer_lens()
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() not in (1, 2):
            raise TLError("input_ids must be a [batch, seq] (or [seq]) tensor of token ids; CoconutBridge.prompts "
                          "renders items")
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
            attention_mask = None if attention_mask is None else attention_mask.reshape(1, -1)
        if names_filter is None:
            keep = lambda name: True  # noqa: E731
        elif callable(names_filter):
            keep = names_filter
        else:
            wanted = {names_filter} if isinstance(names_filter, str) else set(names_filter)
            if unknown := sorted(wanted - set(self.bridge.hook_dict)):
                raise TLError(f"unknown hook name(s) {unknown} for this bridge ({self.bridge.cfg.n_layers} layers)")
            keep = lambda name: name in wanted  # noqa: E731
        parts: dict[str, list[torch.Tensor]] = {}

        def saver(name):  # keyed by the name asked for: TL's aliases (hook_resid_post, ...) share a hook point
            return lambda tensor, hook: parts.setdefault(name, []).append(tensor.detach())

        hooks = []
        for name, point in self.bridge.hook_dict.items():
            if not keep(name):
                continue
            save = saver(name)
            try:
                self.bridge.check_hooks_to_add(point, name, save)
            except ValueError as e:  # a hook TransformerLens keeps off by default (hook_mlp_in, hook_result, ...)
                if names_filter is not None:
                    raise TLError(f"{name}: {e}") from None
                continue
            hooks.append((name, save))
        seq = input_ids.shape[1]
        with self.bridge.hooks(fwd_hooks=hooks):
            out = self.model(input_ids, attention_mask)
        cache = {}
        for name, chunks in parts.items():
            if name.endswith(("hook_pattern", "hook_attn_scores")):  # [batch, heads, q, keys]
                joined = torch.cat([_pad_keys(c, seq) for c in chunks], dim=2)
                pos = joined.shape[2]
            else:
                joined = torch.cat(chunks, dim=1)
                pos = joined.shape[1]
            if pos != seq:
                if names_filter is not None:
                    raise TLError(f"{name}: its calls hold {pos} positions, not the sequence's {seq} once "
                                  "(the latent loop does not run it segment by segment)")
                continue
            cache[name] = joined
        if self.model.config.mode in FEEDBACK_MODES:  # the embedding the blocks saw at a latent is the thought
            rows, cols = torch.nonzero(input_ids == self.model.config.latent_id, as_tuple=True)
            slots = (input_ids == self.model.config.latent_id).long().cumsum(-1)[rows, cols] - 1
            for name in EMBED & set(cache):
                cache[name] = cache[name].index_put((rows, cols), out.thoughts[rows, slots].to(cache[name]))
        return out, transformer_lens.ActivationCache(cache, self.bridge, has_batch_dim=True)

    def prompts(self, items, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Items rendered as the model's prompts with k thoughts (default: its own), left-padded:
        (input_ids, attention_mask), each [batch, seq], ready for run_with_cache. Raises ValueError for a bad k."""
        from probe.data.render import render_prompt, tokenize_item

        cfg = self.model.config
        k = cfg.thought_count(k)
        return self.model.left_padded([render_prompt(tokenize_item(it, self.tokenizer, cfg.data_format), k,
                                                     cfg.stage_spec, cfg.special) for it in items])


def _pad_keys(t: torch.Tensor, width: int) -> torch.Tensor:
    """Zero-pad the last (keys) axis of a segment's attention to the whole sequence."""
    return torch.nn.functional.pad(t, (0, width - t.shape[-1]))
