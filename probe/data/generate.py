"""A ProsQA generator after Coconut (Hao et al. 2024, arXiv 2412.06769), appendix A.2, Algorithm 1.

Construction of one item:

1. Grow a DAG of ``N_NODES`` nodes one at a time (``_grow``), starting from nodes 0 (label 0b01) and
   1 (label 0b10). Each new node draws an in-degree ``n_in ~ Poisson(1.5)`` and its candidate parents:
   with probability 0.35 the nodes with label 0b01 (never a descendant of node 1), with 0.35 those with
   label 0b10 (never a descendant of node 0), else every existing node; ``n_in = min(n_in, #candidates)``.
   Parents are drawn without replacement with weight ``depth * 1.5 + 1``, where ``depth`` is the
   *longest* distance from any parentless node (0 for parentless nodes; the paper's "depth_to_root").
   The node's label is the OR of its parents' labels (0 without parents).
2. Drop the isolated nodes (no parent and no child) and renumber the rest in creation order.
3. For each side s in {0, 1}, the candidate targets are the leaves with label ``1 << s`` (descend from
   node s only). The root is the side whose deepest such leaf (BFS distance from node s) lies deeper,
   ties by a fair coin; the target is a deepest leaf on the root's side, the neg_target any leaf on the
   other side (both uniform among ties). Reject when a side has no leaf, when the target depth is not in
   3..6, or when there are more parentless nodes than person names.
4. Parentless nodes get person names, the others concept names, sampled without replacement.

Choices fitted to the official validation split (300 items) and why:

- Algorithm 1 as printed also offers the label-0 nodes (parentless "persons" and their label-0
  descendants) as candidates in the two one-sided branches. The official split is inconsistent with
  that: it has 2.51 persons per item where the printed rule gives 4.4 (extra persons keep getting
  children), its node count varies with sd 2.05 (printed rule: 1.6) and its edge count (36.3) and number
  of shortest paths (1.61) are out of reach (34.7 and 1.44 at a matching node count). Offering label-0
  nodes only in the "every node" branch reproduces all of these (2.6 persons, node sd 2.0), so we do so.
- N_NODES = 28 is fixed: the official maximum is 28 and, after dropping isolated nodes, the mean (22.8)
  and sd (2.0) of the node count match; the variation comes only from the dropped persons.
- The official split has no isolated node but does keep small components of persons, hence step 2.
- The official target is always the deepest root-side leaf, and the other side's deepest leaf is never
  deeper than the target, hence step 3; it also fits the step counts (the root-side-at-random rule gives
  mean 3.53 steps against 3.75). The official file puts the root at index 1 in 65% of items; we keep
  nodes 0 and 1 symmetric (root at index 1 in 50%) as nothing in Algorithm 1 tells them apart.
- Depth as the longest rather than the shortest distance from a parentless node: both match nodes and
  edges, the longest one fits the number of shortest paths (1.63 vs 1.54) and persons better.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from tqdm import tqdm

from probe.data.graph import ProsQAGraph
from probe.data.prosqa import ProsQAItem

# persons_and_concepts(load_items("prosqa_valid.json")) on the official validation split.
PERSON_NAMES = (
    "Alex", "Bob", "Carol", "Davis", "Eva", "Fae", "Gabriel", "Jack", "Max", "Oliver", "Polly", "Rex",
    "Sally", "Sam", "Stella", "Tom", "Wren",
)
CONCEPT_NAMES = (
    "bompus", "boompus", "brimpus", "chorpus", "dumpus", "felpus", "fompus", "gerpus", "gorpus",
    "grimpus", "gwompus", "hilpus", "impus", "jelpus", "jompus", "kerpus", "lempus", "lorpus", "numpus",
    "quimpus", "rempus", "rompus", "rorpus", "scrompus", "shumpus", "sterpus", "storpus", "terpus",
    "timpus", "tumpus", "vumpus", "worpus", "wumpus", "yerpus", "yimpus", "yumpus", "zhorpus", "zumpus",
)
N_NODES = 28
IN_DEGREE_MEAN = 1.5
P_ONE_SIDE = 0.35
DEPTH_WEIGHT = 1.5
MIN_STEPS, MAX_STEPS = 3, 6


def _grow(rng: np.random.Generator, n_nodes: int) -> tuple[list[list[int]], list[int]]:
    """Algorithm 1: each node's parents (in drawn order) and its label (bit s: descends from node s)."""
    parents: list[list[int]] = [[], []]
    labels = [0b01, 0b10]
    depth = [0, 0]
    groups: dict[int, list[int]] = {0: [], 1: [0], 2: [1], 3: []}
    for idx in range(2, n_nodes):
        n_in = rng.poisson(IN_DEGREE_MEAN)
        r = rng.random()
        candidates = groups[1] if r < P_ONE_SIDE else groups[2] if r < 2 * P_ONE_SIDE else list(range(idx))
        n_in = min(n_in, len(candidates))
        weights = np.array([depth[c] * DEPTH_WEIGHT + 1 for c in candidates])
        picked = [int(c) for c in rng.choice(candidates, size=n_in, replace=False, p=weights / weights.sum())]
        label = 0
        for p in picked:
            label |= labels[p]
        parents.append(picked)
        labels.append(label)
        depth.append(1 + max(depth[p] for p in picked) if picked else 0)
        groups[label].append(idx)
    return parents, labels


def _bfs_depth(children: Sequence[Sequence[int]], source: int) -> list[int]:
    """Distance from source to every node; -1 where unreachable."""
    dist = [-1] * len(children)
    dist[source] = 0
    queue = deque([source])
    while queue:
        u = queue.popleft()
        for v in children[u]:
            if dist[v] < 0:
                dist[v] = dist[u] + 1
                queue.append(v)
    return dist


def _fact(names: Sequence[str], is_person: Sequence[bool], parent: int, child: int) -> str:
    subject = names[parent] if is_person[parent] else f"Every {names[parent]}"
    return f"{subject} is a {names[child]}."


def _make_item(rng: np.random.Generator, parents: list[list[int]], labels: list[int]) -> ProsQAItem | None:
    """Steps 2-4 of the module docstring on a grown graph; None when the graph is rejected."""
    has_child = {p for ps in parents for p in ps}
    keep = [v for v in range(len(parents)) if parents[v] or v in has_child]
    new = {v: i for i, v in enumerate(keep)}
    n = len(keep)
    edges = [(new[p], new[v]) for v in keep for p in parents[v]]
    label = [labels[v] for v in keep]
    children: list[list[int]] = [[] for _ in range(n)]
    for p, c in edges:
        children[p].append(c)
    leaves = [[v for v in range(n) if not children[v] and label[v] == 1 << s] for s in (0, 1)]
    if not leaves[0] or not leaves[1]:
        return None
    dists = [_bfs_depth(children, s) for s in (0, 1)]
    deepest = [max(dists[s][v] for v in leaves[s]) for s in (0, 1)]
    root = int(deepest[1] > deepest[0]) if deepest[0] != deepest[1] else int(rng.integers(2))
    is_person = [not parents[v] for v in keep]
    if not MIN_STEPS <= deepest[root] <= MAX_STEPS or sum(is_person) > len(PERSON_NAMES):
        return None
    targets = [v for v in leaves[root] if dists[root][v] == deepest[root]]
    target = targets[rng.integers(len(targets))]
    neg_target = leaves[1 - root][rng.integers(len(leaves[1 - root]))]

    persons = iter(rng.choice(PERSON_NAMES, size=sum(is_person), replace=False).tolist())
    concepts = iter(rng.choice(CONCEPT_NAMES, size=n - sum(is_person), replace=False).tolist())
    names = [next(persons) if p else next(concepts) for p in is_person]
    facts = [_fact(names, is_person, p, c) for p, c in edges]
    a, b = (names[target], names[neg_target]) if rng.random() < 0.5 else (names[neg_target], names[target])
    question = " ".join(facts[i] for i in rng.permutation(len(facts))) + f" Is {names[root]} a {a} or {b}?"
    paths = ProsQAGraph(n, tuple(edges), root, target, neg_target).shortest_paths()
    path = paths[rng.integers(len(paths))]
    return ProsQAItem(
        question=question,
        steps=tuple(_fact(names, is_person, p, c) for p, c in zip(path, path[1:])),
        answer=f"{names[root]} is a {names[target]}.",
        idx_to_symbol=tuple(names),
        edges=tuple(edges),
        root=root,
        target=target,
        neg_target=neg_target,
    )


def generate_item(rng: np.random.Generator) -> ProsQAItem:
    """One ProsQA item, resampling graphs until one is accepted (about 1.1 tries on average)."""
    while (item := _make_item(rng, *_grow(rng, N_NODES))) is None:
        pass
    return item


def generate_items(n: int, seed: int, progress: bool = False) -> list[ProsQAItem]:
    """n items drawn from np.random.default_rng(seed); the same seed gives the same items."""
    rng = np.random.default_rng(seed)
    return [generate_item(rng) for _ in tqdm(range(n), desc="ProsQA", disable=not progress)]


@dataclass(frozen=True)
class DatasetStats:
    """Per-item means and sample standard deviations (ddof=1) of a ProsQA dataset; a standard deviation of one item
    is undefined (None)."""

    n_items: int
    mean_nodes: float
    std_nodes: float | None
    mean_edges: float
    std_edges: float | None
    mean_steps: float
    std_steps: float | None
    step_counts: dict[int, int]
    mean_shortest_paths: float
    std_shortest_paths: float | None

    def se(self, name: str) -> float | None:
        """Standard error of the mean of 'nodes', 'edges', 'steps' or 'shortest_paths' (None for one item)."""
        std = getattr(self, f"std_{name}")
        return None if std is None else std / np.sqrt(self.n_items)


def dataset_stats(items: Sequence[ProsQAItem]) -> DatasetStats:
    """Node, edge, step and shortest-path statistics (paths: distinct shortest root -> target paths).

    Raises ValueError for no items; with one item the standard deviations are None (undefined)."""
    if not items:
        raise ValueError("no items to describe")
    columns = {
        "nodes": [it.n_nodes for it in items],
        "edges": [len(it.edges) for it in items],
        "steps": [len(it.steps) for it in items],
        "shortest_paths": [len(ProsQAGraph.from_item(it).shortest_paths()) for it in items],
    }
    moments = {}
    for name, values in columns.items():
        moments[f"mean_{name}"] = float(np.mean(values))
        moments[f"std_{name}"] = float(np.std(values, ddof=1)) if len(values) > 1 else None
    return DatasetStats(n_items=len(items), step_counts=dict(sorted(Counter(columns["steps"]).items())), **moments)
