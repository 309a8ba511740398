"""Capture every continuous thought at every layer: a ThoughtTrace, under TransformerLens hook names.

Plain torch hooks on the Hugging Face modules (probe.model.hooks.read_at), named as TransformerLens 4
names them (`blocks.{l}.hook_resid_post`, `blocks.{l}.attn.hook_pattern`, `ln_final.hook_normalized`),
fire inside CoconutModel's own KV-cached latent loop, so what is captured is exactly what the
model computes (see DESIGN.md, "Capture"). Each hook keeps only the positions that matter as
its segment goes by: the position that emits thought k (k = 1..K) and the first answer
position (the one holding `<|end-latent|>`, whose logits give the first answer token).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from tqdm.auto import tqdm

from probe.artifacts import TRACE_MANIFEST
from probe.formats import check_version, read_field, read_json_object
from probe.data.layout import NONE, prompt_layout
from probe.atomic import atomic_directory, atomic_write_text
from probe.data.prosqa import ProsQAItem
from probe.data.render import render_prompt, step_prompt, tokenize_item
from probe.model.evaluate import prediction
from probe.model.finite import check_finite_tensors
from probe.model.architecture import architecture
from probe.model.hook_names import FINAL, RESID, act_name, check_names, hook_names, layer_index, layer_of
from probe.model.hooks import padded_columns, read_at
from probe.model.rows import rows_are
from probe.model.coconut import CoconutModel

TRACE_FORMAT = 1


class CaptureError(ValueError):
    """A capture that cannot run (bad hook filter, bad items, bad store)."""


# ---------------------------------------------------------------------------- the trace


@dataclass
class ThoughtTrace:
    """Activations at the thought positions of a batch of items, k thoughts each.

    Step s < k is the position that emits thought s + 1; step k is the first answer position.
    Positions and attention keys count tokens of the unpadded prompt (question, start, latents, end).
    For a model without latent mode (CoT) the prompt holds the first k gold steps instead, and
    step s < k is the end of step s + 1 (repeating the last step's end past an item's steps).
    """

    k: int
    indices: Tensor  # [batch] index of each item in its data set
    prompt_ids: Tensor  # [batch, max_len] right-padded with -1
    prompt_len: Tensor  # [batch]
    question_len: Tensor  # [batch]
    positions: Tensor  # [batch, k + 1] prompt position of each step
    fact: Tensor  # [batch, max_len] edge index of the fact at each position, -1 elsewhere
    node: Tensor  # [batch, max_len] node named at each position, -1 elsewhere
    thoughts: Tensor  # [batch, k, d_model] the vectors fed back
    logits: Tensor  # [batch, k + 1, vocab]
    cache: dict[str, Tensor] = field(default_factory=dict)  # hook name -> [batch, k + 1, ...]
    answer_ids: Tensor | None = None  # [batch, max_new] greedy answer after the prompt, eos excluded, -1 padded

    def __getitem__(self, name: str | tuple[str, int]) -> Tensor:
        """[batch, k + 1, ...] one hook's activations, by name or, as TransformerLens's cache takes it, by
        (point, layer) with negative layers from the end: trace["hook_resid_post", -1]."""
        if isinstance(name, tuple):
            point, layer = name
            name = act_name(point, layer, self.n_layers)
        try:
            return self.cache[name]
        except KeyError:
            raise KeyError(f"{name!r} was not captured; this trace holds {sorted(self.cache)}") from None

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def n_layers(self) -> int:
        return 1 + max((layer_of(n) for n in self.cache if n != FINAL), default=-1)

    def stack(self, point: str = RESID) -> Tensor:
        """[batch, k + 1, n_layers, ...]: one hook point across every layer (all must be captured)."""
        return torch.stack([self[act_name(point, l)] for l in range(self.n_layers)], dim=2)

    def answers(self) -> list[list[int]]:
        """Each item's generated answer tokens (capture with max_new_tokens > 0)."""
        if self.answer_ids is None:
            raise CaptureError("this trace holds no answers; capture with max_new_tokens > 0")
        return [[t for t in row if t >= 0] for row in self.answer_ids.tolist()]

    def predictions(self, tokenizer, fmt: str = "sentences") -> list[str]:
        """Each item's prediction by the format's rule (prompt and answer decoded together, text after '#'; in RbS's
        layout after "[A]"): pass the model's config.data_format."""
        prompts = [[t for t in row if t >= 0] for row in self.prompt_ids.tolist()]
        return [prediction(tokenizer, p, a, fmt) for p, a in zip(prompts, self.answers())]

    def select(self, rows: Tensor | Sequence[int]) -> "ThoughtTrace":
        """The trace of some of its items, in the given order."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        pick = {n: getattr(self, n)[rows] for n in _FIELDS}
        return ThoughtTrace(k=self.k, **pick, cache={n: t[rows] for n, t in self.cache.items()},
                            answer_ids=None if self.answer_ids is None else self.answer_ids[rows])

    def to_tensors(self) -> dict[str, Tensor]:
        """Flat name -> tensor, for safetensors."""
        fixed = {n: getattr(self, n) for n in _FIELDS}
        if self.answer_ids is not None:
            fixed["answer_ids"] = self.answer_ids
        return {**{f"trace.{n}": t.contiguous() for n, t in fixed.items()}, **{n: t.contiguous() for n, t in self.cache.items()}}

    @classmethod
    def from_tensors(cls, k: int, tensors: dict[str, Tensor]) -> "ThoughtTrace":
        fixed = {n: tensors[f"trace.{n}"] for n in _FIELDS}
        cache = {n: t for n, t in tensors.items() if not n.startswith("trace.")}
        return cls(k=k, **fixed, cache=cache, answer_ids=tensors.get("trace.answer_ids"))


_FIELDS = ("indices", "prompt_ids", "prompt_len", "question_len", "positions", "fact", "node", "thoughts", "logits")


@contextmanager
def _eager_attention(model: CoconutModel, needed: bool):
    """Attention weights exist only in the eager implementation; switch to it for the capture."""
    before = model.base.config._attn_implementation
    if needed and before != "eager":
        model.base.set_attn_implementation("eager")
    try:
        yield
    finally:
        if needed and before != "eager":
            model.base.set_attn_implementation(before)


@torch.no_grad()
def capture_batch(
    model: CoconutModel, tokenizer, items: Sequence[ProsQAItem], *, k: int | None = None,
    names: Sequence[str] | None = None, dtype: torch.dtype = torch.float32, indices: Sequence[int] | None = None,
    max_new_tokens: int = 0,
) -> ThoughtTrace:
    """Run one batch of items with k forced thoughts (default: the model's) and capture the named hooks.

    max_new_tokens > 0 also decodes each item's greedy answer from the same pass (its KV cache), as
    evaluate does; for a model without latent mode the prompt holds the first k gold steps.
    """
    if not items:
        raise CaptureError("capture needs at least one item")
    cfg = model.config
    arch = architecture(model)
    names = hook_names(arch.n_layers) if names is None else check_names(names, arch.n_layers)
    k = cfg.thought_count(k, error=CaptureError)
    tok_items = [tokenize_item(it, tokenizer, cfg.data_format) for it in items]
    q_len = torch.tensor([len(t.question) for t in tok_items])
    markers = cfg.stage_spec.markers
    if markers:
        prompts = [render_prompt(t, k, cfg.stage_spec, cfg.special) for t in tok_items]
        # Steps: the position emitting thought j (thought_origin + j - 1), then the last prompt position.
        steps = torch.arange(k)[None] + torch.tensor([t.thought_origin for t in tok_items])[:, None]
    else:
        # No latent mode (CoT): "thought" j is the state at the end of gold language step j, the
        # position that names the next step's first node; past an item's last step it repeats.
        prompts = [step_prompt(t, min(k, len(t.steps)), cfg.stage_spec, cfg.special) for t in tok_items]
        ends = [[len(t.question) + sum(map(len, t.steps[:j])) - 1 for j in range(1, len(t.steps) + 1)] or
                [len(t.question) - 1] for t in tok_items]
        steps = torch.tensor([[e[min(j, len(e) - 1)] for j in range(k)] for e in ends], dtype=torch.long)
        steps = steps.reshape(len(items), k)
    index_list = list(indices) if indices is not None else list(range(len(items)))
    model.check_positions([len(p) for p in prompts], k if markers else None, index_list)
    p_len = torch.tensor([len(p) for p in prompts])
    width = int(p_len.max())
    positions = torch.cat([steps, (p_len - 1)[:, None]], dim=1)  # [batch, k + 1]
    ids, mask = model.left_padded(prompts)
    model.eval()
    recorded = names if markers or FINAL in names else [*names, FINAL]  # a CoT "thought" is read from FINAL
    with _eager_attention(model, any(n.endswith("hook_pattern") for n in names)), rows_are(index_list):
        with read_at(model, recorded, positions, mask, dtype=dtype) as acts:
            out = model(ids, mask, logits_at=padded_columns(positions, mask))  # the last step's is the last column
    answer_ids = None
    if max_new_tokens > 0:
        with rows_are(index_list):
            answers = model.continue_greedy(out, mask, max_new_tokens)
        n = max(map(len, answers))
        answer_ids = torch.tensor([a + [-1] * (n - len(a)) for a in answers], dtype=torch.long)
    thoughts = out.thoughts[:, :k] if markers else acts[FINAL][:, :k]
    logits = out.logits.to(dtype)
    cache = {n: acts[n] for n in names}  # pattern keys by prompt position (read_at)
    layouts = [prompt_layout(it, tokenizer, cfg.data_format) for it in items]
    fact = torch.full((len(items), width), NONE)
    node = torch.full((len(items), width), NONE)
    for b, lay in enumerate(layouts):
        fact[b, : len(lay.fact)] = torch.tensor(lay.fact)
        node[b, : len(lay.node)] = torch.tensor(lay.node)
    return ThoughtTrace(
        k=k,
        indices=torch.tensor(index_list),
        prompt_ids=torch.tensor([p + [-1] * (width - len(p)) for p in prompts]),
        prompt_len=p_len, question_len=q_len, positions=positions, fact=fact, node=node,
        thoughts=thoughts.to(dtype).cpu(), logits=logits.cpu(),
        cache={n: t.cpu() for n, t in cache.items()}, answer_ids=answer_ids,
    )


def _pad_to(t: Tensor, width: int, dim: int, value: float) -> Tensor:
    if t.shape[dim] == width:
        return t
    shape = list(t.shape)
    shape[dim] = width - t.shape[dim]
    return torch.cat([t, t.new_full(shape, value)], dim=dim)


def concat_traces(traces: Sequence[ThoughtTrace]) -> ThoughtTrace:
    """One trace from several of equal k and hooks (prompt-width tensors padded to the widest)."""
    if not traces:
        raise CaptureError("nothing to concatenate")
    if len({t.k for t in traces}) != 1 or len({tuple(sorted(t.cache)) for t in traces}) != 1:
        raise CaptureError("traces to concatenate must share k and hook names")
    if len({t.answer_ids is None for t in traces}) != 1:
        raise CaptureError("traces to concatenate must all hold answers or none")
    width = max(t.prompt_ids.shape[1] for t in traces)
    cat = lambda ts, dim=1, v=-1: torch.cat([_pad_to(x, width, dim, v) for x in ts])  # noqa: E731
    cache = {}
    for n in traces[0].cache:
        parts = [t.cache[n] for t in traces]
        cache[n] = cat(parts, -1, 0.0) if n.endswith("hook_pattern") else torch.cat(parts)
    return ThoughtTrace(
        k=traces[0].k, indices=torch.cat([t.indices for t in traces]),
        prompt_ids=cat([t.prompt_ids for t in traces]), prompt_len=torch.cat([t.prompt_len for t in traces]),
        question_len=torch.cat([t.question_len for t in traces]), positions=torch.cat([t.positions for t in traces]),
        fact=cat([t.fact for t in traces]), node=cat([t.node for t in traces]),
        thoughts=torch.cat([t.thoughts for t in traces]), logits=torch.cat([t.logits for t in traces]), cache=cache,
        answer_ids=None if traces[0].answer_ids is None else
        torch.cat([_pad_to(t.answer_ids, max(x.answer_ids.shape[1] for x in traces), 1, -1) for t in traces]),
    )


def _capture_window(
    model: CoconutModel, tokenizer, items: Sequence[ProsQAItem], first_index: int, bar: tqdm, batch_size: int, **kw,
) -> ThoughtTrace:
    """Capture items in batches of similar length (less padding), returned in their own order."""
    order = sorted(range(len(items)), key=lambda i: len(items[i].question))
    traces = []
    for j in range(0, len(order), batch_size):
        rows = order[j : j + batch_size]
        traces.append(capture_batch(model, tokenizer, [items[i] for i in rows], indices=[first_index + i for i in rows],
                                    **kw))
        bar.update(len(rows))
    trace = concat_traces(traces)
    return trace.select(torch.argsort(torch.tensor(order)))


def capture(
    model: CoconutModel, tokenizer, items: Sequence[ProsQAItem], *, k: int | None = None,
    names: Sequence[str] | None = None, dtype: torch.dtype = torch.float32, batch_size: int = 32,
    progress: bool = True, max_new_tokens: int = 0, first_index: int = 0,
) -> ThoughtTrace:
    """Capture a (small) data set in memory; use capture_to_disk for a large one. first_index: the data-set index
    of items[0] (trace.indices, and the item an error names)."""
    if not items:
        raise CaptureError("capture needs at least one item")
    with tqdm(total=len(items), desc="capture", unit="item", disable=not progress) as bar:
        return _capture_window(model, tokenizer, items, first_index, bar, batch_size, k=k, names=names, dtype=dtype,
                               max_new_tokens=max_new_tokens)


def capture_to_disk(
    model: CoconutModel, tokenizer, items: Sequence[ProsQAItem], out: str | Path, *, k: int | None = None,
    names: Sequence[str] | None = None, dtype: torch.dtype = torch.float32, batch_size: int = 32,
    shard_size: int = 256, source: dict | None = None, progress: bool = True, first_index: int = 0,
    max_new_tokens: int = 0, replace: bool = False,
) -> "TraceStore":
    """Stream a data set's traces to safetensors shards of shard_size items plus a JSON manifest.

    Memory stays one shard's worth; within a shard, items are batched by length and stored in order.

    Written into a temporary directory that is renamed into place, so a failed run leaves nothing.
    first_index: the data-set index of items[0] (a part of a larger data set, as one rank captures).
    max_new_tokens > 0 also stores each item's greedy answer (trace.answer_ids), decoded in the same pass.
    replace: swap out what out holds (kept whole until the new store is in place); without, it is an error.
    """
    out = Path(out)
    if out.exists() and not replace:
        raise CaptureError(f"{out}: already exists; choose a new directory")
    if not items:
        raise CaptureError("capture needs at least one item")
    arch = architecture(model)
    names = hook_names(arch.n_layers) if names is None else check_names(names, arch.n_layers)
    k = model.config.thought_count(k, error=CaptureError)
    shards = []
    bar = tqdm(total=len(items), desc="capture", unit="item", disable=not progress)
    try:
        with atomic_directory(out, replace=replace) as tmp:
            for i in range(0, len(items), shard_size):
                tr = _capture_window(model, tokenizer, items[i : i + shard_size], first_index + i, bar, batch_size,
                                     k=k, names=names, dtype=dtype, max_new_tokens=max_new_tokens)
                file = f"shard-{len(shards):05d}.safetensors"
                save_file(tr.to_tensors(), str(tmp / file), metadata={"k": str(tr.k)})
                shards.append({"file": file, "n": len(tr), "first": int(tr.indices[0])})
            manifest = {
                "format": TRACE_FORMAT, "k": k, "n_items": len(items), "first_index": first_index, "names": names,
                "dtype": str(dtype).removeprefix("torch."), "n_layers": arch.n_layers, "d_model": model.d_model,
                "mode": model.config.mode, "max_new_tokens": max_new_tokens, "source": source or {}, "shards": shards,
            }
            atomic_write_text(tmp / TRACE_MANIFEST, json.dumps(manifest, indent=1))
    finally:
        bar.close()
    return TraceStore(out)


class TraceStore:
    """Traces streamed to disk, read back lazily: one shard, or one hook across shards, at a time."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        mf = self.path / TRACE_MANIFEST
        if not mf.is_file():
            raise CaptureError(f"{self.path}: not a trace store (no {TRACE_MANIFEST})")
        self.manifest = m = read_json_object(mf, CaptureError, "trace store manifest")
        check_version(m.get("format"), TRACE_FORMAT, str(mf), "format", CaptureError)
        source = str(mf)
        read_field(m, "k", int, source, CaptureError, minimum=0)
        read_field(m, "names", list, source, CaptureError, items=str)
        n_items = read_field(m, "n_items", int, source, CaptureError, minimum=1)
        for i, shard in enumerate(read_field(m, "shards", list, source, CaptureError, items=dict)):
            where = f"{mf}: shards[{i}]"
            file = Path(read_field(shard, "file", str, where, CaptureError))
            read_field(shard, "n", int, where, CaptureError, minimum=1)
            if file.is_absolute() or ".." in file.parts:
                raise CaptureError(f"{where} names {str(file)!r}, outside the store; a store's shards lie inside it")
        if (held := sum(s["n"] for s in m["shards"])) != n_items:
            raise CaptureError(f"{mf}: n_items is {n_items} but its shards hold {held}; the manifest was edited or "
                               "belongs to other shards: capture the data again")
        missing = [s["file"] for s in m["shards"] if not (self.path / s["file"]).is_file()]
        if missing:
            raise CaptureError(f"{self.path}: missing shard file(s) {missing}")

    def __len__(self) -> int:
        return self.manifest["n_items"]

    @property
    def k(self) -> int:
        return self.manifest["k"]

    @property
    def names(self) -> list[str]:
        return list(self.manifest["names"])

    @property
    def n_shards(self) -> int:
        return len(self.manifest["shards"])

    def shard(self, i: int, names: Sequence[str] | None = None) -> ThoughtTrace:
        """One shard as a ThoughtTrace (only the named hooks, if given)."""
        if not 0 <= i < self.n_shards:
            raise IndexError(f"shard {i} is out of range: {self.path} has {self.n_shards}")
        file = self.path / self.manifest["shards"][i]["file"]
        keep = None if names is None else set(names)
        if keep is not None and (bad := sorted(keep - set(self.names))):
            raise KeyError(f"{bad} were not captured in {self.path}")
        try:
            with safe_open(str(file), framework="pt") as f:
                tensors = {n: f.get_tensor(n) for n in f.keys() if n.startswith("trace.") or keep is None or n in keep}
        except Exception as e:  # safetensors raises its own error types for a corrupt file
            raise CaptureError(f"{file}: cannot read the shard ({type(e).__name__}: {e}); the file is damaged or "
                               "truncated: copy the store again or capture the data again") from None
        wanted = [f"trace.{n}" for n in _FIELDS] + sorted(keep if keep is not None else self.names)
        if absent := [n for n in wanted if n not in tensors]:
            raise CaptureError(f"{file}: the shard holds no tensor {absent[0]} ({len(absent)} missing); it is not "
                               "this store's shard, or was damaged: capture the data again")
        check_finite_tensors(tensors.items(), str(file), CaptureError)
        trace = ThoughtTrace.from_tensors(self.k, tensors)
        if len(trace) != (n := self.manifest["shards"][i]["n"]):
            raise CaptureError(f"{file}: the shard holds {len(trace)} items but the manifest says {n}; it is not this "
                               "store's shard: capture the data again")
        return trace

    def __iter__(self) -> Iterator[ThoughtTrace]:
        for i in range(self.n_shards):
            yield self.shard(i)

    def load(self, names: Sequence[str] | None = None) -> ThoughtTrace:
        """Every shard in memory as one trace (for data sets that fit)."""
        return concat_traces([self.shard(i, names) for i in range(self.n_shards)])


@torch.no_grad()
def continuation_residuals(
    model: CoconutModel, trace: ThoughtTrace, continuations: Sequence[tuple[int, int, Sequence[int]]],
    layers: Sequence[int], *, batch_size: int = 32,
) -> list[Tensor]:
    """The residual stream where a trace's prompt, cut after one of its steps, goes on with given tokens.

    continuations: (row, step, tokens): trace row `row`'s prompt up to and including the position of step
    `step` (trace.positions), then `tokens` as ordinary tokens (its latents before the cut are fed back as
    usual). Returns, per continuation, [len(tokens), len(layers), d_model] float32: `blocks.{l}.hook_resid_post`
    at each appended token's position, the residual that predicts the token after it. A lens reads a
    multi-piece name from these (probe.readouts.lens.read_lens).
    """
    layers = [layer_index(l, architecture(model).n_layers, CaptureError) for l in layers]
    names = [act_name(RESID, l) for l in layers]
    prompts = [[t for t in trace.prompt_ids[row].tolist() if t >= 0] for row, _, _ in continuations]
    seqs = [p[: int(trace.positions[row, step]) + 1] + list(toks)
            for p, (row, step, toks) in zip(prompts, continuations)]
    model.check_positions([len(q) for q in seqs], None, [int(trace.indices[row]) for row, _, _ in continuations])
    out: list[Tensor] = []
    model.eval()
    for i in range(0, len(seqs), batch_size):
        chunk, conts = seqs[i : i + batch_size], continuations[i : i + batch_size]
        ids, mask = model.left_padded(chunk)
        width, n = ids.shape[1], max(len(c[2]) for c in conts)
        # each row's appended tokens are its last len(tokens) positions; shorter rows repeat their first one
        wanted = torch.tensor([[len(q) - len(c[2]) + min(j, len(c[2]) - 1) for j in range(n)]
                               for q, c in zip(chunk, conts)])
        with read_at(model, names, wanted, mask, dtype=torch.float32) as acts, \
                rows_are([int(trace.indices[c[0]]) for c in conts]):
            model(ids, mask, logits_at=torch.tensor([width - 1], device=model.device))
        stacked = torch.stack([acts[name] for name in names], dim=2).cpu()  # [chunk, n, layers, d]
        out += [stacked[r, : len(c[2])] for r, c in enumerate(conts)]
    return out
