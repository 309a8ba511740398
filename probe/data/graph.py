"""Graph facts of a ProsQA item, as DESIGN.md defines them (depth, frontier, optimal, height), and the walk frontier
of "Reasoning by Superposition"'s notebook."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import networkx as nx
import numpy as np

from probe.data.prosqa import ProsQAItem

@dataclass(frozen=True)
class ProsQAGraph:
    """The DAG of one item with per-node facts; node ids index idx_to_symbol."""

    n_nodes: int
    edges: tuple[tuple[int, int], ...]
    root: int
    target: int
    neg_target: int

    @classmethod
    def from_item(cls, item: ProsQAItem) -> "ProsQAGraph":
        return cls(item.n_nodes, item.edges, item.root, item.target, item.neg_target)

    @cached_property
    def nx(self) -> nx.DiGraph:
        g = nx.DiGraph()
        g.add_nodes_from(range(self.n_nodes))
        g.add_edges_from(self.edges)
        return g

    @cached_property
    def parents(self) -> tuple[tuple[int, ...], ...]:
        return tuple(tuple(sorted(self.nx.predecessors(v))) for v in range(self.n_nodes))

    @cached_property
    def children(self) -> tuple[tuple[int, ...], ...]:
        return tuple(tuple(sorted(self.nx.successors(v))) for v in range(self.n_nodes))

    @cached_property
    def depth(self) -> np.ndarray:
        """[n_nodes] BFS distance from root; inf where unreachable."""
        d = np.full(self.n_nodes, np.inf)
        for v, k in nx.single_source_shortest_path_length(self.nx, self.root).items():
            d[v] = k
        return d

    @cached_property
    def distance_to_target(self) -> np.ndarray:
        """[n_nodes] shortest distance from each node to the target; inf where it cannot reach it."""
        d = np.full(self.n_nodes, np.inf)
        for v, k in nx.single_source_shortest_path_length(self.nx.reverse(copy=False), self.target).items():
            d[v] = k
        return d

    @cached_property
    def height_shortest(self) -> np.ndarray:
        """[n_nodes] shortest distance to any leaf (the paper's text)."""
        return self._height(min)

    @cached_property
    def height_longest(self) -> np.ndarray:
        """[n_nodes] longest distance to any leaf (the paper's figure caption)."""
        return self._height(max)

    def _height(self, pick) -> np.ndarray:
        h = np.zeros(self.n_nodes, dtype=np.int64)
        for v in reversed(list(nx.topological_sort(self.nx))):
            kids = self.children[v]
            h[v] = 0 if not kids else 1 + pick(h[c] for c in kids)
        return h

    @cached_property
    def layer(self) -> np.ndarray:
        """[n_nodes] drawing layer, root to leaves: the depth of nodes the root reaches; for the others,
        their longest distance from a node without parents (so their own edges point down)."""
        gen = np.zeros(self.n_nodes, dtype=np.int64)
        for i, nodes in enumerate(nx.topological_generations(self.nx)):
            gen[list(nodes)] = i
        return np.where(np.isfinite(self.depth), self.depth, gen).astype(np.int64)

    @property
    def target_depth(self) -> int:
        return int(self.depth[self.target])

    def reachable(self, k: int) -> list[int]:
        """Nodes with depth <= k."""
        return [int(v) for v in np.flatnonzero(self.depth <= k)]

    def frontier(self, k: int) -> list[int]:
        """Nodes with depth == k."""
        return [int(v) for v in np.flatnonzero(self.depth == k)]

    def walk_frontier(self, k: int) -> list[int]:
        """Nodes at the end of a walk of exactly k edges from the root: what "Reasoning by Superposition"'s notebook
        calls the frontier (its `current_node_set`; docs/rbs-notes.md, section 5). It differs from frontier(k)
        where a node is reached at several depths: it is then in the walk frontier of each. Their union over
        0..k is reachable(k)."""
        ends = {self.root}
        for _ in range(k):
            ends = {c for v in ends for c in self.children[v]}
        return sorted(ends)

    def optimal(self, k: int) -> list[int]:
        """Nodes at depth k on some shortest root -> target path."""
        on_path = self.depth + self.distance_to_target == self.target_depth
        return [int(v) for v in np.flatnonzero(on_path & (self.depth == k))]

    def shortest_paths(self) -> list[list[int]]:
        """Every shortest root -> target path."""
        return [list(p) for p in nx.all_shortest_paths(self.nx, self.root, self.target)]


# Nodes fall in four disjoint groups at step k (1-based): optimal (optimal_k), frontier (frontier_k outside
# optimal_k), reachable (depth < k) and unreachable (depth > k, or never reached).
GROUPS = ("optimal", "frontier", "reachable", "unreachable")
OPTIMAL, FRONTIER, REACHABLE, UNREACHABLE = range(4)


def node_groups(g: ProsQAGraph, k: int) -> np.ndarray:
    """[n_nodes] group index (OPTIMAL, FRONTIER, REACHABLE, UNREACHABLE) of every node at step k."""
    groups = np.full(g.n_nodes, UNREACHABLE)
    groups[g.depth < k] = REACHABLE
    groups[g.depth == k] = FRONTIER
    groups[g.optimal(k)] = OPTIMAL
    return groups
