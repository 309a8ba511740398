"""The latent-search measures of DESIGN.md as pure functions of captured values, vectors and graphs.

Step k (1-based) is compared with frontier_k. Nodes fall in four disjoint groups at step k:
optimal (optimal_k), frontier (frontier_k outside optimal_k), reachable (depth < k) and
unreachable (depth > k, or never reached).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from probe.data.graph import FRONTIER, GROUPS, OPTIMAL, REACHABLE, UNREACHABLE, ProsQAGraph, node_groups  # noqa: F401
from probe.data.prosqa import ProsQAItem, parse_question

@dataclass
class GroupMeans:
    """A quantity averaged over each node group, per item and step."""

    per_item: np.ndarray  # [n_items, n_steps, 4] mean within the group, nan where the group is empty
    steps: list[int]  # the k of each step

    @property
    def mean(self) -> np.ndarray:
        """[n_steps, 4] mean over the items that have the group."""
        return nanmean_items(self.per_item)

    def as_dict(self) -> dict[str, dict[str, float]]:
        """{"k": {group: mean}}, the report's form."""
        m = self.mean
        return {str(k): {name: float(m[i, j]) for j, name in enumerate(GROUPS)} for i, k in enumerate(self.steps)}


def group_means(per_node: np.ndarray, graphs: Sequence[ProsQAGraph], steps: Sequence[int]) -> GroupMeans:
    """Average per-node values [n_items, n_steps, max_nodes] within each step's node groups."""
    out = np.full((len(graphs), len(steps), len(GROUPS)), np.nan)
    for b, g in enumerate(graphs):
        for s, k in enumerate(steps):
            groups = node_groups(g, k)
            vals = per_node[b, s, : g.n_nodes]
            for j in range(len(GROUPS)):
                if (groups == j).any():
                    out[b, s, j] = float(vals[groups == j].mean())
    return GroupMeans(out, list(steps))


def inner_products(
    thoughts: Tensor, embeddings: Tensor, name_ids: Sequence[Sequence[int]], graphs: Sequence[ProsQAGraph],
) -> GroupMeans:
    """<thought_k, embedding(v)> by node group (Zhu et al. 2025, Table 5).

    thoughts: [n_items, k, d_model]; embeddings: [vocab, d_model] the input embedding;
    name_ids: per item, the token of each node's name.
    """
    n, k, _ = thoughts.shape
    max_nodes = max(g.n_nodes for g in graphs)
    per_node = np.full((n, k, max_nodes), np.nan)
    for b, ids in enumerate(name_ids):
        e = embeddings[torch.as_tensor(list(ids))].float()  # [n_nodes, d]
        per_node[b, :, : len(ids)] = (thoughts[b].float() @ e.T).numpy()
    return group_means(per_node, graphs, range(1, k + 1))


def edge_groups(g: ProsQAGraph, k: int) -> np.ndarray:
    """[n_edges] group of every edge (in g.edges order) for thought k: its source node's group at step k - 1.

    Thought k expands frontier_{k-1}, so the edges it needs are those leaving it: "optimal" edges
    leave optimal_{k-1}, "frontier" edges leave the rest of frontier_{k-1}, "reachable" edges leave
    nodes already expanded, and "unreachable" edges leave nodes the search has not reached.
    """
    source = node_groups(g, k - 1)
    return np.array([source[u] for u, _ in g.edges], dtype=np.int64)


@dataclass
class AttentionByGroup:
    """Attention mass from the position emitting thought k to each edge fact, averaged within edge groups."""

    per_head: np.ndarray  # [n_items, n_steps, n_layers, n_heads, 4] mean over the group's edges, nan where it has none
    frontier_gap: np.ndarray  # [n_items, n_steps, n_layers] head-averaged: frontier edges minus the other edges
    steps: list[int]

    @property
    def per_item(self) -> np.ndarray:
        """[n_items, n_steps, n_layers, 4] averaged over heads (a group mean is linear in the attention)."""
        return self.per_head.mean(axis=3)

    @property
    def mean(self) -> np.ndarray:
        """[n_steps, n_layers, 4] mean over the items that have the group."""
        return nanmean_items(self.per_item)

    @property
    def head_mean(self) -> np.ndarray:
        """[n_steps, n_layers, n_heads, 4] mean over the items that have the group."""
        return nanmean_items(self.per_head)

    @property
    def gap_mean(self) -> np.ndarray:
        """[n_steps, n_layers] the frontier gap, mean over the items that have both kinds of edge."""
        return nanmean_items(self.frontier_gap)

    def invalidate(self, invalid: np.ndarray) -> None:
        """Set [n_items, n_steps] entries (steps an item does not reach) to nan in place."""
        self.per_head[invalid] = np.nan
        self.frontier_gap[invalid] = np.nan

    def as_dict(self) -> dict[str, dict[str, dict[str, float]]]:
        """{"k": {"layer": {group: mean}}}, the report's form."""
        m = self.mean
        return {str(k): {str(l): {name: float(m[i, l, j]) for j, name in enumerate(GROUPS)}
                         for l in range(m.shape[1])} for i, k in enumerate(self.steps)}

    def heads_dict(self) -> dict[str, dict[str, dict[str, list[float]]]]:
        """{"k": {"layer": {group: [mean per head]}}}."""
        m = self.head_mean
        return {str(k): {str(l): {name: m[i, l, :, j].tolist() for j, name in enumerate(GROUPS)}
                         for l in range(m.shape[1])} for i, k in enumerate(self.steps)}

    def gap_dict(self) -> dict[str, dict[str, float]]:
        """{"k": {"layer": frontier gap}}."""
        m = self.gap_mean
        return {str(k): {str(l): float(m[i, l]) for l in range(m.shape[1])} for i, k in enumerate(self.steps)}


def nanmean_items(x: np.ndarray) -> np.ndarray:
    """The mean over axis 0 (items) ignoring nan, nan without a warning where every item is nan."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a group empty in every item: nan
        return np.nanmean(x, axis=0)


def attention_by_group(patterns: Tensor, fact: Tensor, graphs: Sequence[ProsQAGraph]) -> AttentionByGroup:
    """Attention from each thought's position to the facts, summed over a fact's tokens, by edge group and head.

    patterns: [n_items, n_steps, n_layers, n_heads, n_keys] (ThoughtTrace.stack("attn.hook_pattern"));
    step s (0-based) is the position emitting thought s + 1, so only the first n_steps - 1 steps of a
    trace with an answer position are thoughts; fact: [n_items, n_keys] edge index of the fact at
    each key position (-1 elsewhere). Each group's figure is the mean over its edges of the attention an
    edge gets (a per-edge figure, so group sizes do not weigh in). The frontier gap ("Emergence of
    Superposition", Zhu et al. 2025, track this attention during training) is, with heads averaged, the
    mean attention on the edges that leave frontier_{k-1} (optimal and frontier edges) minus the mean on
    every other edge; nan where either set is empty.
    """
    n, n_steps, n_layers, n_heads = patterns.shape[:4]
    out = np.full((n, n_steps, n_layers, n_heads, len(GROUPS)), np.nan)
    gap = np.full((n, n_steps, n_layers), np.nan)
    for b, g in enumerate(graphs):
        n_keys = min(patterns.shape[-1], fact.shape[1])
        f = fact[b, :n_keys].long()
        onehot = torch.zeros(n_keys, len(g.edges))
        pos = torch.nonzero(f >= 0).flatten()
        onehot[pos, f[pos]] = 1.0
        per_edge = (patterns[b, ..., :n_keys].float() @ onehot).numpy()  # [n_steps, n_layers, n_heads, n_edges]
        for s in range(n_steps):
            groups = edge_groups(g, s + 1)
            for j in range(len(GROUPS)):
                if (groups == j).any():
                    out[b, s, :, :, j] = per_edge[s][..., groups == j].mean(-1)
            front = groups <= FRONTIER
            if front.any() and (~front).any():
                heads = per_edge[s].mean(1)  # [n_layers, n_edges]
                gap[b, s] = heads[:, front].mean(-1) - heads[:, ~front].mean(-1)
    return AttentionByGroup(out, gap, list(range(1, n_steps + 1)))


@dataclass
class Parallelism:
    """Cumulative top-1/2/3 frontier values per item (the paper's parallelism analysis)."""

    k: int
    cumulative: np.ndarray  # [n_items, 3] sum of the j largest frontier values, j = 1, 2, 3

    @property
    def mean(self) -> dict[str, float]:
        """Mean cumulative top-j value over items (nan when there are none)."""
        if not len(self.cumulative):
            return {f"top{j + 1}": float("nan") for j in range(3)}
        return {f"top{j + 1}": float(self.cumulative[:, j].mean()) for j in range(3)}

    def percentiles(self, q: Sequence[float] = tuple(range(101))) -> np.ndarray:
        """[len(q), 3] each cumulative sum at the q-th percentile over items (the paper's curves)."""
        if not len(self.cumulative):
            return np.full((len(q), 3), np.nan)
        return np.percentile(self.cumulative, q, axis=0)


def parallelism(values: np.ndarray, graphs: Sequence[ProsQAGraph], k: int) -> Parallelism:
    """From node values [n_items, max_nodes] after k thoughts: sorted frontier_k values, cumulated."""
    cum = np.zeros((len(graphs), 3))
    for b, g in enumerate(graphs):
        vals = np.sort(values[b, g.frontier(k)])[::-1]
        top = np.zeros(3)
        top[: min(3, len(vals))] = vals[:3]
        cum[b] = np.cumsum(top)
    return Parallelism(k, cum)


def frontier_mass(values: np.ndarray, graphs: Sequence[ProsQAGraph], k: int) -> np.ndarray:
    """[n_items] total value on frontier_k after k thoughts."""
    return np.array([float(values[b, g.frontier(k)].sum()) for b, g in enumerate(graphs)])


@dataclass
class ValueByHeight:
    """Frontier nodes' values against their height, split by whether they reach the target."""

    k: int
    height: np.ndarray  # [n_points]
    value: np.ndarray  # [n_points]
    reaches_target: np.ndarray  # [n_points] bool

    def means(self) -> dict[bool, dict[int, float]]:
        """{reaches_target: {height: mean value}}."""
        out: dict[bool, dict[int, float]] = {True: {}, False: {}}
        for r in (True, False):
            for h in sorted(set(self.height[self.reaches_target == r].tolist())):
                sel = (self.height == h) & (self.reaches_target == r)
                out[r][int(h)] = float(self.value[sel].mean())
        return out


def value_by_height(values: np.ndarray, graphs: Sequence[ProsQAGraph], k: int, height: str = "shortest") -> ValueByHeight:
    """Each frontier_k node's value after k thoughts, with its height (shortest or longest path to a leaf)."""
    if height not in ("shortest", "longest"):
        raise ValueError(f"height must be 'shortest' or 'longest', got {height!r}")
    hs, vs, rs = [], [], []
    for b, g in enumerate(graphs):
        h = g.height_shortest if height == "shortest" else g.height_longest
        for v in g.frontier(k):
            hs.append(int(h[v]))
            vs.append(float(values[b, v]))
            rs.append(bool(np.isfinite(g.distance_to_target[v])))
    return ValueByHeight(k, np.array(hs, dtype=np.int64), np.array(vs), np.array(rs, dtype=bool))


CATEGORIES = ("correct_path", "longer_path", "hallucination", "wrong_target", "correct_label", "incorrect_label")


def parse_steps(text: str, fmt: str = "sentences") -> list[tuple[str, str]]:
    """The (parent, child) names of the language steps before the '###' answer line."""
    steps = []
    for line in text.split("###")[0].splitlines():
        line = line.strip()
        if not line:
            continue
        if fmt == "edges":
            parts = line.split()
            steps.append((parts[0], parts[1]) if len(parts) == 2 else (line, ""))
        else:
            try:
                facts, _ = parse_question(f"{line} Is x a y or z?")
            except ValueError:
                facts = [(line, "")]
            steps.extend(facts)
    return steps


def path_category(item: ProsQAItem, steps: Sequence[tuple[str, str]], answer_correct: bool) -> str:
    """The paper's reasoning-path category of a continuation (a partial path is correct when it can be completed).

    No steps: correct or incorrect label. An unknown name, a missing edge or a broken chain:
    hallucination. A chain from which the target cannot be reached: wrong target. A chain on a
    shortest root -> target path: correct path; otherwise a longer path.
    """
    if not steps:
        return "correct_label" if answer_correct else "incorrect_label"
    g = ProsQAGraph.from_item(item)
    symbols = {n: i for i, n in enumerate(item.idx_to_symbol)}
    edges = set(g.edges)
    chain: list[int] = []
    for parent, child in steps:
        if parent not in symbols or child not in symbols:
            return "hallucination"
        u, v = symbols[parent], symbols[child]
        if (u, v) not in edges or (chain and chain[-1] != u):
            return "hallucination"
        chain = chain or [u]
        chain.append(v)
    if not np.isfinite(g.distance_to_target[chain[-1]]):
        return "wrong_target"
    on_shortest = all(g.depth[w] + g.distance_to_target[w] == g.target_depth for w in chain)
    consecutive = all(g.depth[b] == g.depth[a] + 1 for a, b in zip(chain, chain[1:]))
    return "correct_path" if on_shortest and consecutive else "longer_path"
