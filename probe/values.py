"""Node values: the probability of each node's whole name where the next reasoning step would write it.

After k thoughts the prompt is forced out of latent mode; the step that follows would name its first
concept next. A node's value there is the product of its name pieces' probabilities (DESIGN.md, "Values").
Hooks play no part: the values are read from the model's output, with an optional edit of the thoughts.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from probe.data.layout import name_pieces
from probe.data.prosqa import ProsQAItem
from probe.data.render import step_prefix, step_prompt, tokenize_item
from probe.model.coconut import CoconutModel, ThoughtEdit


@torch.no_grad()
def node_values(
    model: CoconutModel, tokenizer, items: Sequence[ProsQAItem], k: int, *, batch_size: int = 32, progress: bool = True,
    edit: ThoughtEdit | None = None,
) -> Tensor:
    """[n_items, max_nodes] value of every node after k thoughts (DESIGN.md), nan past each item's nodes.

    The prompt is forced out of latent mode after k thoughts; the language step that follows
    would name its first concept next ("Every" first in the sentence format). A node's value is
    the probability of its name there: the product of its sub-token probabilities. A model
    without latent mode (CoT) is read after k gold language steps instead; an item with fewer
    steps gets nan. edit (rows indexed like items) intervenes on the thoughts first.
    """
    cfg = model.config
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
    and for a CoT model past an item's gold steps). edit, if given, intervenes on the thoughts of every run."""
    out = np.full((len(items), k_max, max(it.n_nodes for it in items)), np.nan)
    for k in tqdm(range(1, k_max + 1), desc="values", unit="k", disable=not progress):
        out[:, k - 1] = node_values(model, tokenizer, items, k, batch_size=batch_size, progress=False, edit=edit).numpy()
    return out
