"""The data files of "Reasoning by Superposition" (Zhu, Hao et al. 2025) and "Emergence of Superposition" (2509.23365).

Their files (`prosqa_{train,valid,test}_graph_4_coconut.json`, the Emergence repository's `*_shuffled` and `*_bfs*`
files) hold official ProsQA items plus one field, `neighbor_k`: a dict from depth (a decimal string) to node
indices. It means one of two things, told apart here from the edges (docs/rbs-notes.md, section 1):

- "optimal" (`*_coconut*` files): `neighbor_k[k]` is optimal_k, the nodes at depth k on a shortest root -> target
  path, for k = 0..the target's depth. After j thoughts, thought j + 1 is trained toward one of them.
- "reachable" (`*_bfs*` files): `neighbor_k[k]` is reachable_k, every node within k edges of the root, root
  included. It is the target of the Emergence paper's BFS loss: a model trained on it is told the search,
  so such a file never trains (`load_training_items`).

Training views an item as RbS and the Emergence paper do (`rbs_view`). A node index is also a token of RbS's
vocabulary (`probe.model.tokenizer.RBS_VOCABULARY`: node tokens 0..30), so an item with more nodes cannot be written
in their layout.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, replace
from typing import Any, Iterable, Literal, Sequence

from probe.atomic import atomic_write_text
from probe.data.graph import ProsQAGraph
from probe.data.prosqa import DataError, ProsQAItem, _check_item, item_list, items_from_json, read_data_file

NEIGHBORS = "neighbor_k"
RBS_NODES = 31  # node tokens 0..30 in RbS's vocabulary
# The words of RbS's layout besides node indices (`probe.data.render`, data format "rbs"): its first token, the edge
# separator, the markers before the two options, before the root and before the one-token answer.
RBS_EOS, RBS_EDGE, RBS_QUESTION, RBS_ROOT, RBS_ANSWER = "<eos>", "|", "[Q]", "[R]", "[A]"
Kind = Literal["optimal", "reachable"]
KINDS: tuple[str, ...] = ("optimal", "reachable")


@dataclass(frozen=True)
class RbSItem:
    """An official item and its `neighbor_k`, one node set per depth 0..len(neighbors) - 1."""

    item: ProsQAItem
    neighbors: tuple[frozenset[int], ...]
    kind: Kind


@dataclass(frozen=True)
class RbSFile:
    """A data file in RbS's format: its items, and what its `neighbor_k` holds (one kind for the whole file)."""

    path: str
    items: list[RbSItem]
    kind: Kind

    @property
    def prosqa_items(self) -> list[ProsQAItem]:
        return [r.item for r in self.items]


def is_rbs_data(data: Any) -> bool:
    """Whether decoded JSON is in RbS's format: a list whose items carry `neighbor_k`."""
    return isinstance(data, list) and bool(data) and isinstance(data[0], dict) and NEIGHBORS in data[0]


def expected_neighbors(g: ProsQAGraph, kind: Kind, depths: int) -> list[frozenset[int]]:
    """What `neighbor_k` holds at depths 0..depths - 1 for a file of this kind: optimal_k or reachable_k."""
    pick = g.optimal if kind == "optimal" else g.reachable
    return [frozenset(pick(k)) for k in range(depths)]


def _neighbors(raw: Any, n: int) -> tuple[frozenset[int], ...]:
    """`neighbor_k` as node sets by depth; raises ValueError saying what is malformed."""
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"field {NEIGHBORS!r} must be an object from depth ('0', '1', ...) to node indices")
    keys = sorted(raw, key=lambda k: int(k) if isinstance(k, str) and k.isdigit() else -1)
    if keys != [str(k) for k in range(len(keys))]:
        raise ValueError(f"field {NEIGHBORS!r} must have the depths '0'..'{len(keys) - 1}' as keys, got {sorted(raw)}")
    out = []
    for k in keys:
        nodes = raw[k]
        if not isinstance(nodes, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in nodes):
            raise ValueError(f"{NEIGHBORS}[{k!r}] must be a list of node indices, got {nodes!r}")
        if bad := [v for v in nodes if not 0 <= v < n]:
            raise ValueError(f"{NEIGHBORS}[{k!r}] holds node index {bad[0]}, out of range for {n} symbols")
        out.append(frozenset(nodes))
    return tuple(out)


def _kind(item: ProsQAItem, neighbors: Sequence[frozenset[int]]) -> Kind:
    """Which kind of `neighbor_k` an item's sets are, from its edges; raises ValueError naming the first depth at
    which they are neither."""
    g = ProsQAGraph.from_item(item)
    for kind in KINDS:
        if expected_neighbors(g, kind, len(neighbors)) == list(neighbors):
            if kind == "optimal" and len(neighbors) != g.target_depth + 1:
                raise ValueError(f"{NEIGHBORS} has depths 0..{len(neighbors) - 1}, but the target is at depth "
                                 f"{g.target_depth}")
            return kind
    optimal, reachable = (expected_neighbors(g, k, len(neighbors)) for k in KINDS)
    k = next(k for k in range(len(neighbors)) if neighbors[k] not in (optimal[k], reachable[k]))
    raise ValueError(f"{NEIGHBORS}['{k}'] = {sorted(neighbors[k])} disagrees with the edges: they give optimal nodes "
                     f"{sorted(optimal[k])} and reachable nodes {sorted(reachable[k])} at depth {k}")


def rbs_item(raw: Any) -> RbSItem:
    """One decoded RbS item, validated as an official item, then its node indices against RbS's vocabulary and its
    `neighbor_k` against its edges. Raises ValueError saying what is wrong."""
    if isinstance(raw, dict) and NEIGHBORS not in raw:
        raise ValueError(f"missing field {NEIGHBORS!r} (an RbS item holds the official fields and {NEIGHBORS})")
    item = _check_item(raw)
    if item.n_nodes > RBS_NODES:
        raise ValueError(f"node index {RBS_NODES} is outside RbS's vocabulary (node tokens 0..{RBS_NODES - 1}); "
                         f"this item has {item.n_nodes} nodes")
    neighbors = _neighbors(raw[NEIGHBORS], item.n_nodes)
    return RbSItem(item, neighbors, _kind(item, neighbors))


def rbs_items_from_json(data: Any, source: str = "<data>") -> RbSFile:
    """Validate a decoded RbS file; errors name the source and the item index. Raises DataError for a malformed
    item, or a file whose items are of both kinds."""
    data = item_list(data, source)
    items: list[RbSItem] = []
    for i, raw in enumerate(data):
        try:
            items.append(rbs_item(raw))
        except ValueError as e:
            raise DataError(f"{source}: item {i}: {e}") from None
        if items[-1].kind != items[0].kind:
            raise DataError(f"{source}: item {i}: its {NEIGHBORS} holds {items[-1].kind} nodes, but item 0's holds "
                            f"{items[0].kind} nodes; a file holds one kind")
    if not items:
        raise DataError(f"{source}: no items")
    return RbSFile(source, items, items[0].kind)


KIND_MEANING = {
    "optimal": "neighbor_k[k] is optimal_k, the nodes at depth k on a shortest root -> target path (RbS's *_coconut* "
               "files: thought k's training targets)",
    "reachable": "neighbor_k[k] is reachable_k, every node within k edges of the root (the *_bfs* files: the targets "
                 "of the Emergence paper's BFS loss; refused for training)",
}


def read_items(path: str | os.PathLike, limit: int | None = None) -> tuple[list[ProsQAItem], RbSFile | None]:
    """The items of a data file in either format, told apart by their fields (RbS's items carry neighbor_k), and
    the RbS file when it is one (its kind: what its neighbor_k holds), else None. The one reader behind
    `probe.data.prosqa.load_items`. Raises DataError naming the file and the item."""
    data = item_list(read_data_file(path, limit), str(path))
    carries = [isinstance(raw, dict) and NEIGHBORS in raw for raw in data]
    if any(carries) and not all(carries):
        i = carries.index(not carries[0])
        raise DataError(f"{path}: item {i} {'carries' if carries[i] else 'lacks'} {NEIGHBORS} but item 0 "
                        f"{'does not' if carries[i] else 'carries it'}; a file holds one format, the official one "
                        f"(no item carries {NEIGHBORS}) or RbS's (every item does)")
    if is_rbs_data(data):
        f = rbs_items_from_json(data, str(path))
        return f.prosqa_items, f
    return items_from_json(data, str(path)), None


def load_rbs(path: str | os.PathLike, limit: int | None = None) -> RbSFile:
    """Load and validate a data file in RbS's format (see the module docstring). Raises DataError naming the file
    (and the item) for a missing or unreadable file, or a malformed item."""
    data = read_data_file(path, limit, "RbS data file")
    return rbs_items_from_json(data, str(path))


def to_rbs_json(item: ProsQAItem, kind: Kind = "optimal") -> dict[str, Any]:
    """An official item written as an RbS item: its fields and `neighbor_k` of the given kind (optimal: depths
    0..the target's; reachable: 0..4, as the Emergence repository's BFS files hold). Raises DataError for an item
    with more nodes than RbS's vocabulary holds."""
    if item.n_nodes > RBS_NODES:
        raise DataError(f"an item with {item.n_nodes} nodes cannot be written with RbS's {RBS_NODES} node tokens")
    g = ProsQAGraph.from_item(item)
    depths = g.target_depth + 1 if kind == "optimal" else 5
    sets = expected_neighbors(g, kind, depths)
    return {**item.to_json(), NEIGHBORS: {str(k): sorted(s) for k, s in enumerate(sets)}}



def save_rbs_items(items: Iterable[ProsQAItem], path: str | os.PathLike, kind: Kind = "optimal") -> None:
    """Write items as an RbS data file (`to_rbs_json` of each, atomically). Raises DataError naming the first item
    (by index) that RbS's vocabulary cannot write; nothing is written then."""
    out = []
    for i, item in enumerate(items):
        try:
            out.append(to_rbs_json(item, kind))
        except DataError as e:
            raise DataError(f"{path}: item {i}: {e}") from None
    atomic_write_text(path, json.dumps(out, indent=1))


def load_training_items(path: str | os.PathLike, limit: int | None = None) -> list[ProsQAItem]:
    """The items of a file a model trains on: an official file, or an RbS file whose `neighbor_k` holds optimal sets.

    Raises DataError naming the file for an RbS file of kind "reachable" (the `*_bfs*` files): its `neighbor_k` is
    the whole reachable set, the target of the Emergence paper's BFS loss, and a model trained toward it is told the
    search that this toolkit then claims to find. (Our trainer computes its targets from the edges and would not read
    `neighbor_k` at all; such a file is refused because it is meant for that loss.) Other errors as `load_items`."""
    items, f = read_items(path, limit)
    if f is not None and f.kind == "reachable":
        raise DataError(f"{path}: its {NEIGHBORS} holds reachable sets (a BFS file, the target of the Emergence "
                        "paper's BFS loss): a model trained on it is told the search that this toolkit then claims "
                        "to find, so it never trains; use the optimal-set (*_coconut*) file of the split")
    return items


@dataclass(frozen=True)
class RbSView:
    """One training view of an item in RbS's layout: the item with its edges in the view's order and (with node
    shuffling) its node ids permuted, and the order of the two options."""

    item: ProsQAItem
    target_first: bool  # the target is the first option after "[Q]"
    permutation: tuple[int, ...]  # [n_nodes] the view's id of each original node id (the identity without shuffling)


def permute_nodes(item: ProsQAItem, permutation: Sequence[int]) -> ProsQAItem:
    """The item with node v renamed permutation[v] in edges, root, target and neg_target, and idx_to_symbol
    re-indexed so that every id still names the same symbol; question, steps and answer (written with names) are
    unchanged, so the result is the same item by content (`item_key`). Raises ValueError for a permutation that is
    not a bijection on 0..n_nodes - 1."""
    n = item.n_nodes
    if sorted(permutation) != list(range(n)):
        raise ValueError(f"not a permutation of 0..{n - 1}: {list(permutation)}")
    symbols = [""] * n
    for old, new in enumerate(permutation):
        symbols[new] = item.idx_to_symbol[old]
    return replace(item, idx_to_symbol=tuple(symbols),
                   edges=tuple((permutation[s], permutation[t]) for s, t in item.edges), root=permutation[item.root],
                   target=permutation[item.target], neg_target=permutation[item.neg_target])


def rbs_view(item: ProsQAItem, rng: random.Random, shuffle_nodes: bool = False) -> RbSView:
    """A view of an item as RbS's and the Emergence paper's training draw one each time an item is seen (EoS
    dataset.py, expand_data and its get_prefix; RbS dataset.py, get_prefix), in their order of draws:

    1. with shuffle_nodes (Emergence only): the sorted ids that appear in edges, shuffled (`rng.shuffle` of a copy),
       map old -> new by position (`permute_nodes`). Ids that appear in no edge keep theirs (EoS assumes there are
       none: every node of their files is in an edge);
    2. the edges in a new random order (`rng.shuffle`);
    3. the target listed first with probability 1/2 (`rng.random() < 0.5`).
    """
    n = item.n_nodes
    permutation = list(range(n))
    if shuffle_nodes:
        old = sorted({v for e in item.edges for v in e})
        new = old.copy()
        rng.shuffle(new)
        for o, w in zip(old, new):
            permutation[o] = w
        item = permute_nodes(item, permutation)
    edges = list(item.edges)
    rng.shuffle(edges)
    target_first = rng.random() < 0.5
    return RbSView(replace(item, edges=tuple(edges)), target_first, tuple(permutation))
