"""The measures of "Reasoning by Superposition"'s notebook, by its own definitions, beside ours (probe.analyses.frontier).

github Ber666/reasoning-by-superposition, notebook.ipynb (docs/rbs-notes.md, section 5). Its n_step runs 0..3;
thought i = n_step + 1 is the last hidden state (after the final norm) at the root's position + n_step, fed in at
the i-th latent. It differs from our measures (DESIGN.md, "Frontier measures") in four ways:

- **Node sets are walks** (`walk_sets`): its frontier after n edges is the set of nodes at the end of a walk of
  exactly n edges from the root (`ProsQAGraph.walk_frontier`), not the nodes at BFS depth n; a node reached at
  several depths is in the frontier of each. Its reachable set, the union of those over 0..n, is our reachable(n);
  its optimal set, frontier ∩ neighbor_k[n] (neighbor_k of RbS's optimal files is our optimal(n)), is our optimal(n).
- **Groups are nested**, not disjoint: optimal ⊂ frontier ⊂ reachable, and not reachable is the rest.
- **Means are pooled** over every scored edge (or node) of every item, not averaged per item.
- **Items**: at n_step, only items whose target is at least n_step + 1 edges from the root (the notebook skips an
  item whose neighbor_k has no key n_step + 1, which in RbS's files means exactly that).

Edge attention (cells 13 and 15): the attention of the last layer at the position emitting thought n_step + 1 (the
last position of "prefix + <|latent|> x n_step", no "[A]"), summed over heads; an edge's score is the sum over its
tokens (in RbS's layout s, t and the "|" after it); the edge written last (followed by "[Q]") is never scored, as the
notebook's loop stops there. An edge is grouped by its source s at n_step: reachable (s within n_step edges: the
notebook's `within_k`), frontier (s in the walk frontier of n_step), optimal (frontier, and its target in
optimal(n_step + 1)), not reachable (the notebook's `invalid`).

Inner products (cells 18 and 20): thought i against every row of the input embedding (wte), raw (no
normalisation), at each node that appears in some edge (at its name's token: node v is token v in RbS's
vocabulary), grouped with i = n_step + 1: reachable (within i edges), frontier (walk frontier of i), optimal
(frontier ∩ optimal(i)), not reachable.

Order: prompts are rendered as everywhere in this toolkit (`probe.data.render`): edges in the item's file order,
options by `rbs_target_first` (fixed per item). The notebook draws a new option order for every prompt and, for the
attention only, reshuffles the edges first (random.shuffle, unseeded), so its numbers are one random draw of orders.

`edge_attention`, `thought_inner_products` and `walk_sets` are pure functions of captured tensors and graphs;
`notebook_measures` runs the model (one capture: thoughts and the last layer's `attn.hook_pattern`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from probe.capture.trace import capture
from probe.data.graph import ProsQAGraph
from probe.data.layout import name_tokens
from probe.data.prosqa import ProsQAItem
from probe.model.architecture import architecture
from probe.model.coconut import CoconutModel
from probe.model.hook_names import act_name

# The notebook's groups, by their legend (its code's lists: att_group_within_k / inner_prod_within_k,
# ..._frontier, ..._optimal, ..._invalid). Nested: optimal ⊂ frontier ⊂ reachable; not_reachable is the rest.
NOTEBOOK_GROUPS = ("reachable", "frontier", "optimal", "not_reachable")


@dataclass(frozen=True)
class WalkSets:
    """The notebook's node sets after n edges from the root."""

    n: int
    frontier: frozenset[int]  # nodes at the end of a walk of exactly n edges
    reachable: frozenset[int]  # the union of the walk frontiers of 0..n edges (= ProsQAGraph.reachable(n))
    optimal: frozenset[int]  # frontier ∩ optimal(n) (= ProsQAGraph.optimal(n))


def walk_sets(g: ProsQAGraph, n: int) -> WalkSets:
    """The walk frontier, its union over 0..n (reachable) and frontier ∩ optimal(n), by the notebook's definitions.
    Raises ValueError for n < 0."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    frontiers = [frozenset(g.walk_frontier(j)) for j in range(n + 1)]
    return WalkSets(n, frontiers[-1], frozenset().union(*frontiers), frontiers[-1] & frozenset(g.optimal(n)))


def included(g: ProsQAGraph, n_step: int) -> bool:
    """Whether the notebook measures an item at n_step: its target is at least n_step + 1 edges away (its RbS file's
    neighbor_k has the key n_step + 1)."""
    return g.target_depth >= n_step + 1


@dataclass
class PooledGroups:
    """One notebook measure: every value it pools, by n_step and group (for its histograms, cell 21), and the
    pooled means it prints."""

    measure: str  # "edge_attention" or "inner_product"
    values: list[dict[str, np.ndarray]]  # [n_step] group -> [n_values] float64, every scored edge or node pooled
    items: list[dict[str, np.ndarray]]  # [n_step] group -> [n_values] row (in the items given) of each value
    n_items: list[int]  # [n_step] items measured (`included`)

    @property
    def n_steps(self) -> list[int]:
        return list(range(len(self.values)))

    @property
    def mean(self) -> np.ndarray:
        """[n_steps, 4] the pooled mean of each group (NOTEBOOK_GROUPS order), nan where a group holds no value."""
        return np.array([[v[g].mean() if len(v[g]) else np.nan for g in NOTEBOOK_GROUPS] for v in self.values])

    @property
    def count(self) -> np.ndarray:
        """[n_steps, 4] how many values each pooled mean is over."""
        return np.array([[len(v[g]) for g in NOTEBOOK_GROUPS] for v in self.values], dtype=np.int64)

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """{"n_step": {"n_items": int, group: {"mean": float or None, "count": int}}}, the report's form."""
        mean, count = self.mean, self.count
        return {str(n): {"n_items": self.n_items[n],
                         **{g: {"mean": None if np.isnan(mean[n, j]) else float(mean[n, j]),
                                "count": int(count[n, j])} for j, g in enumerate(NOTEBOOK_GROUPS)}}
                for n in self.n_steps}


class _Pool:
    """Values and their rows, collected group by group for one n_step."""

    def __init__(self) -> None:
        self.values: dict[str, list[float]] = {g: [] for g in NOTEBOOK_GROUPS}
        self.rows: dict[str, list[int]] = {g: [] for g in NOTEBOOK_GROUPS}
        self.n_items = 0

    def add(self, row: int, value: float, *, reachable: bool, frontier: bool, optimal: bool) -> None:
        """One value into the notebook's nested groups: not reachable, or reachable and, within it, frontier and,
        within that, optimal."""
        groups = ("reachable", *(("frontier",) if frontier else ()), *(("optimal",) if frontier and optimal else ())) \
            if reachable else ("not_reachable",)
        for group in groups:
            self.values[group].append(value)
            self.rows[group].append(row)


def _pooled(measure: str, pools: list[_Pool]) -> PooledGroups:
    return PooledGroups(
        measure,
        [{g: np.asarray(p.values[g], dtype=np.float64) for g in NOTEBOOK_GROUPS} for p in pools],
        [{g: np.asarray(p.rows[g], dtype=np.int64) for g in NOTEBOOK_GROUPS} for p in pools],
        [p.n_items for p in pools],
    )


def edge_attention(patterns: Tensor, fact: Tensor, graphs: Sequence[ProsQAGraph]) -> PooledGroups:
    """The notebook's layer-2 edge attention (cells 13 and 15; module docstring), pooled by edge group.

    patterns: [n_items, n_steps, n_heads, n_keys] one layer's post-softmax attention (the notebook's: the last layer)
    from the position emitting thought n_step + 1 (the first n_steps steps of a ThoughtTrace's
    `blocks.{l}.attn.hook_pattern`), keys at prompt positions; fact: [n_items, n_keys'] the edge (index into the
    graph's edges) whose fact each prompt position holds, -1 elsewhere (ThoughtTrace.fact); graphs: the items'.
    Attention is summed over heads, then over an edge's positions; the edge whose fact comes last in the prompt is
    not scored. Values are post-softmax weights summed over heads (the notebook's 8) and over an edge's tokens, so
    an edge's value lies in [0, n_heads]. Raises ValueError for an item whose prompt holds no fact.
    """
    n_items, n_steps = patterns.shape[:2]
    n_keys = min(patterns.shape[-1], fact.shape[1])
    summed = patterns[..., :n_keys].float().sum(dim=2)  # [n_items, n_steps, n_keys]
    pools = [_Pool() for _ in range(n_steps)]
    for b, g in enumerate(graphs):
        f = fact[b, :n_keys].long()
        pos = torch.nonzero(f >= 0).flatten()
        if not len(pos):
            raise ValueError(f"item {b}: its prompt holds no fact (no position names an edge)")
        onehot = torch.zeros(n_keys, len(g.edges))
        onehot[pos, f[pos]] = 1.0
        per_edge = (summed[b] @ onehot).double().numpy()  # [n_steps, n_edges]
        last = int(f[pos[-1]])
        for n in range(n_steps):
            if not included(g, n):
                continue
            pools[n].n_items += 1
            now, after = walk_sets(g, n), frozenset(g.optimal(n + 1))
            for e, (s, t) in enumerate(g.edges):
                if e == last:
                    continue
                pools[n].add(b, float(per_edge[n, e]), reachable=s in now.reachable, frontier=s in now.frontier,
                             optimal=t in after)
    return _pooled("edge_attention", pools)


def thought_inner_products(thoughts: Tensor, embeddings: Tensor, name_ids: Sequence[Sequence[int]],
                           graphs: Sequence[ProsQAGraph]) -> PooledGroups:
    """The notebook's thought-embedding inner products (cells 18 and 20; module docstring), pooled by node group.

    thoughts: [n_items, n_steps, d_model], step n_step holding thought n_step + 1 as fed back (ThoughtTrace.thoughts);
    embeddings: [vocab, d_model] the input embedding (wte; the notebook's `model.embedding.weight`); name_ids: per
    item, the token of each node's name (`layout.name_tokens`; node v is token v in RbS's vocabulary). Values are raw
    dot products, in the model's units. Only nodes that appear in some edge are counted.
    """
    n_items, n_steps, _ = thoughts.shape
    pools = [_Pool() for _ in range(n_steps)]
    for b, (ids, g) in enumerate(zip(name_ids, graphs)):
        products = (thoughts[b].double() @ embeddings[list(ids)].double().T).numpy()  # [n_steps, n_nodes]
        nodes = sorted({v for e in g.edges for v in e})
        for n in range(n_steps):
            if not included(g, n):
                continue
            pools[n].n_items += 1
            sets = walk_sets(g, n + 1)
            for v in nodes:
                pools[n].add(b, float(products[n, v]), reachable=v in sets.reachable, frontier=v in sets.frontier,
                             optimal=v in sets.optimal)
    return _pooled("inner_product", pools)


@dataclass
class NotebookMeasures:
    """The notebook's two measures of one checkpoint on a data set, at n_step = 0..k - 1 (thoughts 1..k)."""

    k: int
    layer: int  # the layer whose attention is read (the last)
    attention: PooledGroups
    inner_product: PooledGroups

    def report(self) -> dict[str, Any]:
        """The `probe rbs-notebook --json` report."""
        return {"k": self.k, "layer": self.layer, "groups": list(NOTEBOOK_GROUPS),
                "edge_attention": self.attention.as_dict(), "inner_product": self.inner_product.as_dict()}


def notebook_measures(model: CoconutModel, tokenizer, items: Sequence[ProsQAItem], *, k: int = 4, batch_size: int = 32,
                      progress: bool = True) -> NotebookMeasures:
    """Both notebook measures at n_step = 0..k - 1 from one capture with k thoughts (no answer decoded).

    By causality the attention at the position emitting thought n_step + 1 and the thoughts up to it are those of
    the notebook's shorter prompts (n_step or n_step + 1 latents, no "[A]"). model: one with latent mode; items are
    rendered in its data format (the notebook's is "rbs"). Raises ValueError for k < 1, or a model without latent mode (no
    thoughts); the capture's errors (CaptureError, PositionError) name the item.
    """
    cfg = model.config
    k = cfg.thought_count(k, minimum=1, why="thought 1 is the first the notebook measures")
    if not cfg.stage_spec.markers:
        raise ValueError(f"a {cfg.mode} checkpoint has no latent mode: the notebook's measures read its thoughts")
    layer = architecture(model).n_layers - 1
    name = act_name("attn.hook_pattern", layer)
    trace = capture(model, tokenizer, items, k=k, names=[name], batch_size=batch_size, progress=progress)
    graphs = [ProsQAGraph.from_item(it) for it in items]
    names = [name_tokens(it, tokenizer, cfg.data_format) for it in items]
    embeddings = model.base.get_input_embeddings().weight.detach().cpu()
    return NotebookMeasures(
        k, layer,
        attention=edge_attention(trace[name][:, :k], trace.fact, graphs),
        inner_product=thought_inner_products(trace.thoughts, embeddings, names, graphs),
    )
