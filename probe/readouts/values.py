"""Node values: the probability that the model names each node as the next node after k thoughts.

Two readouts (DESIGN.md, "Frontier measures"), chosen by what the checkpoint was trained to do (`readout_of`):

- "language", for a model trained with language steps (Coconut's curriculum, the official GPT-2
  checkpoints): after k thoughts the prompt is forced out of latent mode; the step that follows would
  name its first concept next. A node's value there is the product of its name pieces' probabilities.
- "emitted", for a model whose thought j was trained to emit the next node (`supervision: optimal`, the
  "Reasoning by Superposition" recipe): thought k itself, read through the model's unembedding, is the
  value after k thoughts. Nothing is forced; a node's value is the probability of its name's token
  (`layout.name_tokens`, the token the thought was trained toward), so names that share that token
  (`layout.indistinct_names(first_token=True)`) read as one, each with its probability.

Hooks play no part: the values are read from the model's output, with an optional edit of the thoughts.
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from probe.data.layout import name_pieces, name_tokens
from probe.data.prosqa import ProsQAItem
from probe.data.render import render_prompt, step_prefix, step_prompt, tokenize_item
from probe.model.coconut import CoconutConfig, CoconutModel, ThoughtEdit
from probe.model.hook_names import layer_index
from probe.model.rows import rows_are

Readout = Literal["language", "emitted"]


def readout_of(config: CoconutConfig) -> Readout:
    """How a checkpoint's node values are read: "emitted" for a model with thoughts trained to emit the next node
    (supervision optimal), "language" for every other (the next language step after forcing the end)."""
    return "emitted" if config.supervision == "optimal" and config.stage_spec.markers else "language"


@torch.no_grad()
def emitted_values(
    model: CoconutModel, tokenizer, items: Sequence[ProsQAItem], k: int, *, batch_size: int = 32,
    progress: bool = True, edit: ThoughtEdit | None = None,
) -> Tensor:
    """[n_items, k, max_nodes] the "emitted" readout after each of thoughts 1..k, nan past each item's nodes.

    Entry [b, j - 1, v] is softmax(unembed(thought j))[token of v's name]: the probability that thought j,
    read through the model's own unembedding, names v (for a pause model, the state before pause j). With
    an edit, thought j is the edited thought as it is fed back, and later thoughts follow from it.
    Raises ValueError for k < 1 (there is no thought to read) or a model without latent mode.
    """
    cfg = model.config
    if not cfg.stage_spec.markers:
        raise ValueError(f"a {cfg.mode} model has no thoughts to read; use the language readout")
    if k < 1:
        raise ValueError(f"the emitted readout reads thought k; k must be >= 1, got {k}")
    out = torch.full((len(items), k, max(it.n_nodes for it in items)), float("nan"))
    model.eval()
    for i in tqdm(range(0, len(items), batch_size), desc=f"values k={k}", unit="batch", disable=not progress):
        chunk = items[i : i + batch_size]
        prompts = [render_prompt(tokenize_item(it, tokenizer, cfg.data_format), k, cfg.stage_spec, cfg.special)
                   for it in chunk]
        ids, mask = model.left_padded(prompts)
        rows_edit = None if edit is None else edit.rows(list(range(i, i + len(chunk))))
        with rows_are(range(i, i + len(chunk))):
            res = model(ids, mask, edit=rows_edit, logits_at=torch.tensor([ids.shape[1] - 1]))
        names = [name_tokens(it, tokenizer, cfg.data_format) for it in chunk]
        vals = values_from_logits(model.unembed(res.thoughts[:, :k]), names)
        out[i : i + len(chunk), :, : vals.shape[-1]] = vals
    return out


def values_from_logits(logits: Tensor, name_ids: Sequence[Sequence[int]]) -> Tensor:
    """[n_items, k, max_nodes] softmax(logits) at each item's node-name tokens, nan past each item's nodes.

    logits: [n_items, k, vocab], e.g. a ThoughtTrace's logits at the positions emitting thoughts 1..k
    (`trace.logits[:, :k]`); name_ids: per item, the token of each node's name (`layout.name_tokens`).
    This is the "emitted" readout of thoughts that were captured, with no further pass.
    """
    probs = logits.float().softmax(-1).cpu()
    out = torch.full((*probs.shape[:2], max(map(len, name_ids))), float("nan"))
    for b, ids in enumerate(name_ids):
        out[b, :, : len(ids)] = probs[b][:, list(ids)]
    return out


def emitted_nodes(logits: Tensor, name_ids: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """What each thought emits: (node [n_items, k], token [n_items, k]).

    logits: [n_items, k, vocab] at the positions emitting thoughts 1..k; token is each argmax over the whole
    vocabulary, node the index of the item's node whose name token (name_ids) it is, -1 for a token that
    names no node of the item.
    """
    token = logits.argmax(-1).cpu().numpy()
    node = np.array([[list(ids).index(t) if t in ids else -1 for t in row] for ids, row in zip(name_ids, token.tolist())],
                    dtype=np.int64).reshape(token.shape)
    return node, token


def read_after(config: CoconutConfig, j: int | None, k: int, *, layer: int | None = None, n_layers: int = 0,
               all_at: int = 1) -> int | None:
    """The number of thoughts after which node values first read what an edit of thought j made of it.

    j: the edited thought (1..k), or None when every thought is edited (then the language readout reads after
    `all_at` thoughts: the caller's choice). layer: where the edit acts (None: the thought fed back; else that
    layer's residual at the position emitting thought j, of a model with n_layers layers).

    The language readout forces the end after j thoughts, a step that reads thought j as fed back: j. The emitted
    readout reads thought j itself, which an edit of the thought fed back, or of the last layer's residual, sets
    directly (a replacement would read as itself): the first read the model computes from it is thought j + 1
    (None past k, or when every thought is edited). An edit of an earlier layer changes how thought j itself is
    computed: j (all_at when every thought is edited).
    """
    if readout_of(config) == "language":
        return all_at if j is None else j
    direct = layer is None or layer_index(layer, n_layers) == n_layers - 1
    if not direct:
        return all_at if j is None else j
    if j is None:
        return None
    return j + 1 if j + 1 <= k else None


@torch.no_grad()
def node_values(
    model: CoconutModel, tokenizer, items: Sequence[ProsQAItem], k: int, *, batch_size: int = 32, progress: bool = True,
    edit: ThoughtEdit | None = None,
) -> Tensor:
    """[n_items, max_nodes] value of every node after k thoughts (DESIGN.md), nan past each item's nodes.

    A model trained to emit a node with each thought is read by `emitted_values` (thought k itself). For
    every other, the prompt is forced out of latent mode after k thoughts; the language step that follows
    would name its first concept next ("Every" first in the sentence format). A node's value is
    the probability of its name there: the product of its sub-token probabilities. A model
    without latent mode (CoT) is read after k gold language steps instead; an item with fewer
    steps gets nan. edit (rows indexed like items) intervenes on the thoughts first.
    """
    cfg = model.config
    if readout_of(cfg) == "emitted":
        return emitted_values(model, tokenizer, items, k, batch_size=batch_size, progress=progress, edit=edit)[:, -1]
    prefix = step_prefix(cfg.data_format)
    lead = tokenizer.encode(prefix, add_special_tokens=False) if prefix else []
    out = torch.full((len(items), max(it.n_nodes for it in items)), float("nan"))
    # Rows of (item, node, sequence, name pieces): the prompt once per item for every name's first
    # piece, and the prompt plus all but the last piece for each name that has more than one.
    rows: list[tuple[int, list[int], list[list[int]]]] = []
    for b, it in enumerate(items):
        prompt = step_prompt(tokenize_item(it, tokenizer, cfg.data_format), k, cfg.stage_spec, cfg.special)
        if prompt is None:
            continue
        pieces = name_pieces(it, tokenizer, cfg.data_format)
        out[b, : it.n_nodes] = 0.0  # log-probabilities, summed over pieces below
        rows.append((b, prompt + lead, pieces))
    first = {b: torch.tensor([name[0] for name in pieces]) for b, _, pieces in rows}
    seqs = [(b, -1, p, None) for b, p, _ in rows]  # -1: every node's first piece
    seqs += [(b, v, p + name[:-1], name) for b, p, pieces in rows for v, name in enumerate(pieces) if len(name) > 1]
    model.eval()
    for i in tqdm(range(0, len(seqs), batch_size), desc=f"values k={k}", unit="batch", disable=not progress):
        chunk = seqs[i : i + batch_size]
        ids, mask = model.left_padded([s[2] for s in chunk])
        width = ids.shape[1]
        rows_edit = None if edit is None else edit.rows([s[0] for s in chunk])
        tail = max([1] + [len(s[3]) - 1 for s in chunk if s[3] is not None])  # columns any read needs
        with rows_are([s[0] for s in chunk]):
            logp = model(ids, mask, edit=rows_edit, logits_at=torch.arange(width - tail, width)).logits
        logp = logp.float().log_softmax(-1).cpu()  # [chunk, tail, vocab]: the last `tail` columns
        for row, (b, v, _, name) in enumerate(chunk):
            if v < 0:  # the first piece of every name, read at the prompt's last position
                out[b, : items[b].n_nodes] += logp[row, -1, first[b]]
            else:  # the later pieces of one name: piece j (j >= 1) is predicted at width - len(name) + j
                pos = torch.arange(tail - len(name) + 1, tail)
                out[b, v] += logp[row, pos, torch.tensor(name[1:])].sum()
    return out.exp()


def values_by_k(
    model: CoconutModel, tokenizer, items: Sequence[ProsQAItem], k_max: int, *, batch_size: int = 32,
    progress: bool = True, edit: ThoughtEdit | None = None,
) -> np.ndarray:
    """[n_items, k_max, max_nodes] node_values after each k = 1..k_max thoughts (nan past each item's nodes,
    and for a CoT model past an item's gold steps). edit, if given, intervenes on the thoughts of every run.
    The emitted readout reads all k_max thoughts from one pass."""
    if readout_of(model.config) == "emitted":
        return emitted_values(model, tokenizer, items, k_max, batch_size=batch_size, progress=progress,
                              edit=edit).numpy()
    out = np.full((len(items), k_max, max(it.n_nodes for it in items)), np.nan)
    for k in tqdm(range(1, k_max + 1), desc="values", unit="k", disable=not progress):
        out[:, k - 1] = node_values(model, tokenizer, items, k, batch_size=batch_size, progress=False, edit=edit).numpy()
    return out
