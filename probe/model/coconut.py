"""The Coconut model: any Hugging Face causal LM, with continuous thoughts fed back over a KV cache.

A continuous thought is the last hidden state (after the final layer norm) at the position
before a `<|latent|>` token; it replaces that token's input embedding. The sequence is run
in segments that end just before each column holding a latent, so every thought is computed
before it is needed and the KV cache is reused throughout (as in the official
implementation, batched). Items may differ in length and in number of thoughts: rows are
padded, masked and given their own position ids.
"""

from __future__ import annotations

import functools
import inspect
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import DynamicCache, PreTrainedModel

from probe.data.render import DATA_FORMATS, IGNORE_INDEX, MODES, StageSpec, answer_length
from probe.model.finite import NonFiniteActivation
from probe.model.architecture import ArchitectureError, architecture
from probe.model.hook_names import FINAL, RESID, act_name
from probe.model.hooks import read_at
from probe.model.rows import RowError
from probe.model.tokenizer import SpecialTokens

FEEDBACK_MODES = ("coconut",)
# Config fields of a causal LM head that transformers applies after the output embedding (CoconutModel.unembed).
READOUT_FIELDS = ("lm_head_multiplier", "logit_scale", "logits_scaling", "final_logit_softcapping")


@dataclass(frozen=True)
class CoconutConfig:
    """What a Coconut checkpoint needs beyond its base model: token ids, mode and curriculum."""

    start_id: int
    end_id: int
    latent_id: int
    eos_id: int
    pad_id: int
    mode: str = "coconut"
    c_thought: int = 1
    max_latent_stage: int = 6
    pad_latent_to_max: bool = True
    data_format: str = "sentences"
    supervision: str = "language"  # how the thoughts were trained: probe.data.supervision

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; expected one of {MODES}")

    @classmethod
    def from_special(cls, special: SpecialTokens, **kw: Any) -> "CoconutConfig":
        return cls(**asdict(special), **kw)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "the config") -> "CoconutConfig":
        """The config as coconut.json (format_version 1) holds it: every field, each checked
        (probe.formats.read_field); `supervision`, which came later, defaults to "language", the only supervision
        before it. Other keys are not the config's (format_version, metadata). Raises ValueError naming the source
        and the field."""
        from probe.data.supervision import SUPERVISIONS
        from probe.formats import read_field

        ids = asdict(SpecialTokens(0, 0, 0, 0, 0))
        kw: dict[str, Any] = {k: read_field(d, k, int, source, minimum=0) for k in ids}
        kw |= {"mode": read_field(d, "mode", str, source, choices=MODES),
               "c_thought": read_field(d, "c_thought", int, source, minimum=1),
               "max_latent_stage": read_field(d, "max_latent_stage", int, source, minimum=0),
               "pad_latent_to_max": read_field(d, "pad_latent_to_max", bool, source),
               "data_format": read_field(d, "data_format", str, source, choices=DATA_FORMATS),
               "supervision": read_field(d, "supervision", str, source, default="language", choices=SUPERVISIONS)}
        return cls(**kw)

    @property
    def special(self) -> SpecialTokens:
        return SpecialTokens(self.start_id, self.end_id, self.latent_id, self.eos_id, self.pad_id)

    @property
    def stage_spec(self) -> StageSpec:
        return StageSpec(self.mode, self.c_thought, self.max_latent_stage, self.pad_latent_to_max)

    @property
    def default_thoughts(self) -> int:
        """Thoughts at inference when none are asked for: the last stage's count."""
        return self.stage_spec.inference_thoughts(self.max_latent_stage, self.max_latent_stage)

    def thought_count(self, k: int | None, minimum: int = 0, setting: str = "k",
                      error: type[Exception] = ValueError, why: str = "") -> int:
        """The one rule for thought-count arguments (k, k_max; every command, the library and the app).

        k: thoughts to run, or None for the checkpoint's own (default_thoughts). Returns it as an int;
        raises `error` (the caller's ValueError class) naming the setting when it is not an integer or is
        below `minimum` (why: the reason for that minimum, said in the message). The position limit, which
        depends on the prompts, is CoconutModel.check_positions.
        """
        k = self.default_thoughts if k is None else k
        if isinstance(k, bool) or not isinstance(k, int):
            raise error(f"{setting} must be an integer, got {k!r}")
        if k < minimum:
            raise error(f"{setting} must be >= {minimum}{f' ({why})' if why else ''}, got {k}")
        return k


@dataclass(frozen=True)
class ThoughtEdit:
    """An intervention on the thoughts, per row and thought slot: replace some, then add a vector.

    x'[b, j] = replace[b, j] where mask[b, j] else x[b, j]; then + add[b, j]. With layer None, x is the
    thought fed back (for a pause model, the input at the pause position): the edited thought is what
    the next position receives, so later thoughts are computed from it. With a layer, x is that
    layer's residual stream output (`blocks.{layer}.hook_resid_post`) at the position that emits
    thought j: the position before latent j, or `positions[b, j]` (counted within the unpadded
    prompt, -1 for none) for a model without latents, such as a CoT control's step ends.
    """

    mask: Tensor | None = None  # [batch, max_thoughts] bool: which thoughts to replace
    replace: Tensor | None = None  # [batch, max_thoughts, d_model]
    add: Tensor | None = None  # [batch, max_thoughts, d_model]
    layer: int | None = None
    positions: Tensor | None = None  # [batch, max_thoughts] long, with a layer only

    def __call__(self, rows: Tensor, slot: Tensor, thought: Tensor) -> Tensor:
        """The edited thoughts [n, d] of (rows, slot) pairs."""
        if self.mask is not None and self.replace is not None:
            m = self.mask.to(thought.device)[rows, slot]
            thought = torch.where(m[:, None], self.replace.to(thought)[rows, slot], thought)
        if self.add is not None:
            thought = thought + self.add.to(thought)[rows, slot]
        return thought

    def rows(self, index: Tensor | list[int]) -> "ThoughtEdit":
        """The edit of some rows (a batch of a larger data set)."""
        index = torch.as_tensor(index)
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        return ThoughtEdit(pick(self.mask), pick(self.replace), pick(self.add), self.layer, pick(self.positions))


@dataclass
class CoconutOutput:
    """A forward pass: logits at every position and the thoughts fed back."""

    logits: Tensor  # [batch, seq, vocab], or [batch, n, vocab] at the columns asked for (logits_at)
    thoughts: Tensor  # [batch, max_thoughts, d_model], zero past each row's n_thoughts
    n_thoughts: Tensor  # [batch]
    loss: Tensor | None = None
    past_key_values: Any = None


@dataclass
class Generation:
    """Greedy generation after forced thoughts."""

    tokens: list[list[int]]  # new tokens per item, eos excluded
    thoughts: Tensor  # [batch, max_thoughts, d_model]
    n_thoughts: Tensor  # [batch]
    first_logits: Tensor  # [batch, vocab] logits of the first generated token


LOGITS = "logits"  # the point after the unembedding, in NonFiniteActivation's names


class PositionError(RowError):
    """A prompt past the model's position limit (CoconutModel.check_positions), at one row (item)."""

    def __init__(self, row: int, length: int, limit: int, thoughts: int | None, item: int | None = None):
        fit = None if thoughts is None else thoughts - (length - limit)
        what = f"with {thoughts} thought{'s' if thoughts != 1 else ''} " if thoughts is not None else ""
        todo = ("it is too long for this model: leave the item out" if fit is None else
                f"at most {fit} thought{'s' if fit != 1 else ''} fit this item" if fit >= 0 else
                "even without thoughts it is too long for this model: leave the item out")
        super().__init__(row, f"its prompt {what}holds {length} positions, past this model's limit of {limit} "
                              f"(n_positions); {todo}", item)
        self.length, self.limit, self.thoughts = length, limit, thoughts


class _FiniteWatch:
    """While a run without gradients goes on: for each decoder layer's output (and the first layer's input), which
    columns of each row hold a NaN or inf ([batch, segment] bool per segment, kept on the device: no host sync).
    Read only when the run's final check finds a non-finite value, to name the first hook point it reached. With
    last_only (token-by-token decoding, which reads only the step that gave the bad logits) each point keeps only its
    latest segment."""

    def __init__(self, model: "CoconutModel", on: bool, last_only: bool = False):
        self.on, self._model, self._last_only = on, model, last_only
        self.flags: dict[str, list[Tensor]] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> "_FiniteWatch":
        if self.on:
            layers = architecture(self._model).layers
            first = act_name("hook_resid_pre", 0)
            self.flags = {first: [], **{act_name(RESID, l): [] for l in range(len(layers))}}
            self._handles.append(layers[0].register_forward_pre_hook(
                lambda m, args, kw: self._flag(first, args[0] if args else kw["hidden_states"]), with_kwargs=True))
            for l, layer in enumerate(layers):
                self._handles.append(layer.register_forward_hook(functools.partial(self._post, act_name(RESID, l))))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _flag(self, name: str, value: Tensor) -> None:
        if self._last_only:
            self.flags[name].clear()
        self.flags[name].append(~torch.isfinite(value.detach()).all(-1))

    def _post(self, name: str, module, args, out) -> None:
        self._flag(name, out[0] if isinstance(out, tuple) else out)

    def columns(self, last: bool = False) -> dict[str, Tensor]:
        """Hook name -> [batch, columns] bool on the CPU: every segment's columns, or the last segment's only."""
        return {n: (f[-1] if last else torch.cat(f, dim=1)).cpu() for n, f in self.flags.items() if f}


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """[batch, seq] positions counted over real tokens only; 0 on padding."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class CoconutModel(nn.Module):
    """A causal LM that reasons with continuous thoughts."""

    def __init__(self, base: PreTrainedModel, config: CoconutConfig):
        super().__init__()
        self.base = base
        self.config = config
        self.identity: dict[str, str] = {}  # hashes pinned by load_checkpoint before a cast (probe.model.identity)
        vocab = base.get_input_embeddings().num_embeddings
        for name in ("start_id", "end_id", "latent_id", "eos_id", "pad_id"):
            if not 0 <= getattr(config, name) < vocab:
                raise ValueError(f"{name}={getattr(config, name)} is outside the model's vocabulary of {vocab}")

    @property
    def device(self) -> torch.device:
        return self.base.get_input_embeddings().weight.device

    @property
    def max_positions(self) -> int | None:
        """The base model's hard position limit (GPT-2's learned position embeddings, n_positions), or None
        (rotary models have no table to run past)."""
        return getattr(self.base.config, "n_positions", None)

    def check_positions(self, lengths: Sequence[int], thoughts: Sequence[int] | int | None = None,
                        indices: Sequence[int] | None = None) -> None:
        """Refuse prompts past the model's position limit before anything runs.

        lengths: each prompt's length in positions (question, thought markers and thoughts); thoughts: the
        thoughts each holds (one count for all), None where its length is not set by thoughts (a CoT prompt);
        indices: each prompt's item index (default: its place in `lengths`; a caller's `rows_are` translates it).
        Raises PositionError (a ValueError) naming the item of lowest index past the limit, its length, the
        limit, and what fits: at most so many thoughts, or none (the item is too long for this model).
        """
        limit = self.max_positions
        over = [i for i, n in enumerate(lengths) if limit is not None and n > limit]
        if not over:
            return
        index = list(indices) if indices is not None else list(range(len(lengths)))
        i = min(over, key=lambda i: index[i])
        k = thoughts if thoughts is None or isinstance(thoughts, int) else thoughts[i]
        raise PositionError(i, lengths[i], limit, k, item=index[i])

    @property
    def d_model(self) -> int:
        return self.base.get_input_embeddings().embedding_dim

    def embed(self, input_ids: Tensor) -> Tensor:
        """[batch, seq] -> [batch, seq, d_model] token embeddings."""
        return self.base.get_input_embeddings()(input_ids)

    def unembed(self, hidden: Tensor) -> Tensor:
        """Final-normalised hidden states [..., d_model] -> logits [..., vocab], as the base model's head computes
        them: the output embedding, then the config fields transformers applies after it (READOUT_FIELDS:
        Falcon-H1's lm_head_multiplier, Cohere's logit_scale, Granite's logits_scaling, Gemma's
        final_logit_softcapping). check_computation refuses a base whose head does anything else."""
        logits = self.base.get_output_embeddings()(hidden)
        cfg = self.base.config
        if (scale := getattr(cfg, "lm_head_multiplier", None)) is not None:
            logits = logits * scale
        if (scale := getattr(cfg, "logit_scale", None)) is not None:
            logits = logits * scale
        if (scale := getattr(cfg, "logits_scaling", None)) is not None:
            logits = logits / scale
        cap = getattr(cfg, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits

    def check_computation(self, tolerance: float = 1e-4) -> None:
        """Refuse a base model whose own computation the latent loop and the lenses would not reproduce.

        Two things are compared on three tokens, in the base's current dtype, against the model's own forward:
        the decoder fed `embed(ids)` as inputs_embeds (as the latent loop feeds every position) against the
        decoder fed the ids (a model that scales embeddings only on the ids path, as Falcon-H1 does, would
        see its thoughts on another scale); and `unembed` of the final hidden state against its own logits (a
        head that does more than READOUT_FIELDS). Raises ArchitectureError naming the model type, what
        differs and by how much (relative to the largest value); `tolerance` is that relative bound.
        """
        ids = torch.tensor([[self.config.eos_id, self.config.start_id, self.config.eos_id]], device=self.device)
        was_training = self.base.training
        self.base.eval()
        try:
            with torch.no_grad():
                mask = torch.ones_like(ids)
                own = self.base(input_ids=ids, attention_mask=mask).logits.float()
                hidden = self.base.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
                fed = self.base.base_model(inputs_embeds=self.embed(ids), attention_mask=mask).last_hidden_state
                ours = self.unembed(hidden).float()
        finally:
            self.base.train(was_training)
        name = type(self.base).__name__
        for what, a, b in (("its decoder fed embed(ids) as inputs_embeds differs from it fed the ids "
                            "(an embedding scale applied only to ids?)", fed.float(), hidden.float()),
                           ("its logits differ from the output embedding of its final hidden state with "
                            f"{', '.join(READOUT_FIELDS)} applied (a head this library does not reproduce)", ours, own)):
            gap = float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))
            if not gap <= tolerance:
                raise ArchitectureError(f"{name}: {what}, by {gap:.2g} of the largest value; the latent loop and "
                                        "the lenses cannot serve it")

    def _run(self, embeds: Tensor, mask: Tensor, positions: Tensor, cache: DynamicCache) -> Tensor:
        """Run one segment over the cache; returns the final-normalised hidden states."""
        out = self.base.base_model(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True,
            **{self._cache_arg: cache},
        )
        return out.last_hidden_state

    @cached_property
    def _cache_arg(self) -> str:
        """The KV cache's keyword: `cache` from transformers 5.2x on (past_key_values is deprecated there and
        warns on every call), `past_key_values` before."""
        params = inspect.signature(type(self.base.base_model).forward).parameters
        return "cache" if "cache" in params else "past_key_values"

    @contextmanager
    def _residual_edit(self, edit: ThoughtEdit | None, is_latent: Tensor, slot_of: Tensor, attention_mask: Tensor,
                       ) -> Iterator[None]:
        """While the prompt runs, apply a layer edit to that layer's output at the thought-emitting positions."""
        if edit is None:
            yield
            return
        name = act_name(RESID, edit.layer, architecture(self).n_layers)
        emit = edit.positions
        if emit is None:  # the position before each latent, within its unpadded prompt
            batch = is_latent.shape[0]
            rows, cols = torch.nonzero(is_latent, as_tuple=True)
            first = attention_mask.long().argmax(-1)  # left padding: the first real column
            emit = torch.full((batch, int(is_latent.sum(-1).max()) if batch else 0), -1, device=is_latent.device)
            emit[rows, slot_of[rows, cols]] = cols - 1 - first[rows]
        with read_at(self, [name], emit, attention_mask, edit=edit):
            yield

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        labels: Tensor | None = None,
        edit: ThoughtEdit | None = None,
        logits_at: Tensor | None = None,
    ) -> CoconutOutput:
        """Run [batch, seq] sequences, feeding each thought back (edited, if asked) at its <|latent|> position.

        logits_at ([batch, n] or [n] column indices) unembeds only those columns: with a real vocabulary,
        every position's logits would cost more memory than the rest of the pass.
        """
        if logits_at is not None and labels is not None:
            raise ValueError("logits_at cannot be combined with labels: the loss needs every position's logits")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if position_ids is None:
            position_ids = position_ids_from_mask(attention_mask)
        batch, seq = input_ids.shape
        embeds = self.embed(input_ids)
        is_latent = input_ids == self.config.latent_id
        n_thoughts = is_latent.sum(-1)
        # The loop is planned, and the lengths checked, on the host from one copy of both masks (one sync).
        host_latent, host_mask = torch.stack([is_latent, attention_mask.bool()]).cpu()
        self.check_positions(host_mask.sum(-1).tolist(), host_latent.sum(-1).tolist())
        max_k = int(host_latent.sum(-1).max()) if batch else 0
        thoughts = embeds.new_zeros(batch, max_k, embeds.shape[-1])
        slot_of = is_latent.long().cumsum(-1) - 1  # [batch, seq] index of the thought a latent position holds
        feedback = self.config.mode in FEEDBACK_MODES
        # Columns that hold a latent in some row: a segment ends before each of them.
        cuts = torch.nonzero(host_latent.any(0)).flatten().tolist() if feedback else []
        # The rows that hold a latent at each cut, moved to the device in one copy.
        cut_rows = [torch.nonzero(host_latent[:, c]).flatten() for c in cuts]
        cut_rows = torch.cat(cut_rows).to(embeds.device).split([len(r) for r in cut_rows]) if cuts else []
        layer_edit = edit if edit is not None and edit.layer is not None else None
        edit = None if layer_edit is not None else edit
        if edit is not None and not feedback and max_k:
            # No thought is fed back (pause tokens): an edit acts on the input at each latent position.
            rows, cols = torch.nonzero(is_latent, as_tuple=True)
            embeds = embeds.index_put((rows, cols), edit(rows, slot_of[rows, cols], embeds[rows, cols]))
        cache = DynamicCache(config=self.base.config)
        hidden, start = [], 0
        # Inference (no gradients) is checked for NaN and inf; training is not slowed by it.
        watch = _FiniteWatch(self, on=not torch.is_grad_enabled())
        with self._residual_edit(layer_edit, is_latent, slot_of, attention_mask), watch:
            for i, col in enumerate(cuts + [seq]):
                if col > start:
                    h = self._run(embeds[:, start:col], attention_mask[:, :col], position_ids[:, start:col], cache)
                    hidden.append(h)
                start = col
                if col == seq:
                    break
                if col == 0:
                    raise ValueError("a sequence starts with <|latent|>: a thought needs a position before it")
                rows = cut_rows[i]
                thought = hidden[-1][rows, -1]  # the state at col - 1
                slot = slot_of[rows, col]
                if edit is not None:
                    thought = edit(rows, slot, thought)
                thoughts = thoughts.index_put((rows, slot), thought)
                embeds = embeds.index_put((rows, torch.full_like(rows, col)), thought)
        h = torch.cat(hidden, dim=1)
        if not feedback and max_k:
            # Pause tokens are not fed back; still report the state before each of them.
            rows, cols = torch.nonzero(is_latent, as_tuple=True)
            slot = slot_of[rows, cols]
            thoughts = thoughts.index_put((rows, slot), h[rows, cols - 1])
        full = h
        if logits_at is not None:
            logits_at = logits_at.to(h.device)
            h = h[:, logits_at] if logits_at.dim() == 1 else h[torch.arange(batch, device=h.device)[:, None], logits_at]
        logits = self.unembed(h)
        if watch.on:
            self._check_finite(watch, full, logits, logits_at, host_latent, host_mask,
                               edited=edit is not None or layer_edit is not None)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1),
                ignore_index=IGNORE_INDEX,
            )
        return CoconutOutput(logits, thoughts, n_thoughts, loss, cache)

    def _check_finite(self, watch: _FiniteWatch, hidden: Tensor, logits: Tensor, logits_at: Tensor | None,
                      latent: Tensor, mask: Tensor, edited: bool) -> None:
        """Raise NonFiniteActivation if a real position's final hidden state [batch, seq, d] or a logit computed
        [batch, n, vocab] is NaN or inf. One host sync when all is finite.

        The error names the first such row and where it turned non-finite first, in the order the model computed:
        the first segment of the latent loop that holds one, there the first hook point (layer by layer), and its
        columns in that segment: one column is a thought (or a prompt position); several are named as a span
        (attention spreads a NaN to every position of its segment, so which of them was first cannot be told).
        latent, mask: [batch, seq] bool on the CPU.
        """
        real = mask.to(hidden.device)
        bad_hidden = ~torch.isfinite(hidden).all(-1) & real
        bad_logits = ~torch.isfinite(logits).all(-1)
        if not bool(torch.stack([bad_hidden.any(), bad_logits.any()]).any()):
            return
        # Something is not finite: find where it first appears (on the CPU; this runs once, before the error).
        points = watch.columns()
        widths = [f.shape[1] for f in next(iter(watch.flags.values()), [])] or [mask.shape[1]]
        points[FINAL] = bad_hidden.cpu()
        at_logits = torch.zeros_like(mask)
        cols = torch.arange(mask.shape[1]).expand_as(mask) if logits_at is None else \
            logits_at.cpu().expand(len(mask), -1)
        rows, slots = torch.nonzero(bad_logits.cpu(), as_tuple=True)
        at_logits[rows, cols[rows, slots]] = True
        points[LOGITS] = at_logits
        names = list(points)
        bad = torch.stack([points[n] & mask for n in names])  # [points, batch, seq]
        row = int(torch.nonzero(bad.any(0).any(-1))[0])
        start = 0
        for width in widths:  # the first segment, then the first point, of this row that holds one
            seg = bad[:, row, start : start + width]
            if seg.any():
                p = int(torch.nonzero(seg.any(-1))[0])
                point, found = names[p], (torch.nonzero(seg[p]).flatten() + start).tolist()
                break
            start += width
        position = lambda c: int(mask[row, :c].sum())  # noqa: E731  (a column's place in the unpadded prompt)
        col = found[0]
        if len(found) > 1:
            where = f"prompt positions {position(found[0])}-{position(found[-1])} (of {int(mask[row].sum())})"
        elif latent[row, col] and point == act_name("hook_resid_pre", 0):  # the input there: a thought fed back
            where = f"thought {int(latent[row, :col].sum()) + 1} as fed back"
        elif col + 1 < mask.shape[1] and latent[row, col + 1]:
            where = f"thought {int(latent[row, : col + 1].sum()) + 1}"
        else:
            where = f"prompt position {position(col)} (of {int(mask[row].sum())})"
        raise NonFiniteActivation(row, where, point, self._overflow_advice(edited))

    def _overflow_advice(self, edited: bool = False) -> str:
        """What to do about an activation that overflowed, by the model's dtype and whether an edit ran."""
        dtype = self.base.get_input_embeddings().weight.dtype
        if dtype != torch.float32:
            return (f"the model runs in {str(dtype).removeprefix('torch.')}, which cannot hold these values: run it "
                    "in float32 (--dtype float32)")
        if edited:
            return "the run's edit of the thoughts put it there (an edit too large for this model)"
        return ("the model's weights are finite, but its activations overflow float32 on this input "
                "(weights far too large: a diverged run?)")

    def left_padded(self, prompts: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
        """Prompts of token ids as one batch, left-padded with the pad id as forward and generate take them:
        (input_ids, attention_mask), each [batch, max length], on the model's device."""
        width = max(map(len, prompts))
        ids = torch.tensor([[self.config.pad_id] * (width - len(p)) + list(p) for p in prompts], device=self.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        return ids, mask

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], max_new_tokens: int = 128, edit: ThoughtEdit | None = None,
                 ) -> Generation:
        """Greedy decoding after each prompt (which holds its own latents), batched with left padding.

        As in the official implementation, the first new token is kept even if it is eos;
        after it, eos ends the item and is not returned.
        """
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("generate needs a non-empty list of non-empty prompts")
        ids, mask = self.left_padded(prompts)
        out = self.forward(ids, mask, edit=edit, logits_at=torch.tensor([ids.shape[1] - 1], device=self.device))
        tokens = self.continue_greedy(out, mask, max_new_tokens)
        return Generation(tokens, out.thoughts, out.n_thoughts, out.logits[:, -1])

    @torch.no_grad()
    def continue_greedy(self, out: CoconutOutput, attention_mask: Tensor, max_new_tokens: int) -> list[list[int]]:
        """Greedy new tokens after a forward pass over left-padded prompts (its KV cache is extended in place).

        out.logits[:, -1] must be the last column's logits (forward with logits_at ending there does).
        Each row has its own budget: max_new_tokens (at most the format's answer length: one token in RbS's
        layout, whose answer has no eos after it), or fewer where that row would pass the model's position limit
        (limit - its last position), so that a row's answer never depends on the other rows of its batch.
        A row that has finished (eos after its first token, or its budget spent) is fed on, masked out and at
        a position inside the limit, until every row has finished; its tokens are no longer kept.
        Returns the new tokens of each row, eos excluded.
        """
        cache, mask = out.past_key_values, attention_mask
        positions = position_ids_from_mask(mask)[:, -1]  # [batch] the last real position of each row
        if (most := answer_length(self.config.data_format)) is not None:
            max_new_tokens = min(max_new_tokens, most)
        budget = torch.full_like(positions, max(max_new_tokens, 0))
        if (limit := self.max_positions) is not None:
            budget = budget.clamp(max=limit - positions).clamp(min=0)
        budget = budget.tolist()  # the rows' budgets and states are kept on the host: one device sync per step
        logits = out.logits[:, -1]
        tokens: list[list[int]] = [[] for _ in range(len(mask))]
        done = [b == 0 for b in budget]
        with _FiniteWatch(self, on=True, last_only=True) as watch:
            for step in range(max(budget, default=0)):
                nxt = logits.argmax(-1)
                new, flags = torch.stack([nxt, (~torch.isfinite(logits).all(-1)).long()]).tolist()  # the one sync
                if bad := [i for i, (f, d) in enumerate(zip(flags, done)) if f and not d]:  # a row still writing
                    row = bad[0]
                    last = watch.columns(last=True) if step else {}  # the run that gave these logits
                    if step:
                        last[FINAL] = (~torch.isfinite(h[:, -1:]).all(-1)).cpu()
                    point = next((n for n, f in last.items() if f[row].any()), LOGITS)
                    raise NonFiniteActivation(row, f"answer token {step + 1}", point, self._overflow_advice())
                if step > 0:
                    done = [d or t == self.config.eos_id for d, t in zip(done, new)]
                for i, (d, t) in enumerate(zip(done, new)):
                    if not d:
                        tokens[i].append(t)
                done = [d or b <= step + 1 for d, b in zip(done, budget)]
                if all(done):
                    break
                live = torch.tensor([not d for d in done], device=mask.device)
                mask = torch.cat([mask, live.to(mask.dtype)[:, None]], dim=1)
                positions = positions + live.long()  # a finished row stays at its last position, inside the limit
                h = self._run(self.embed(nxt[:, None]), mask, positions[:, None], cache)
                logits = self.unembed(h[:, -1])
        return tokens
