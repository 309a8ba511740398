"""ProsQA items in the official JSON format: loading, validation and saving."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from dataclasses import asdict, dataclass, replace
from typing import Any, Iterable, Sequence

import networkx as nx
import numpy as np

from probe.atomic import atomic_write_text
from probe.formats import read_json

REQUIRED_FIELDS = ("question", "steps", "answer", "idx_to_symbol", "edges", "root", "target", "neg_target")

_FACT = re.compile(r"^(?:Every (?P<concept>\S+)|(?P<person>\S+)) is a (?P<child>\S+)$")
_QUERY = re.compile(r"^Is (?P<root>\S+) a (?P<a>\S+) or (?P<b>\S+)\?$")


class DataError(ValueError):
    """A ProsQA file or item that breaks the official format."""


@dataclass(frozen=True)
class ProsQAItem:
    """One ProsQA question: a DAG of 'Every X is a Y' facts, a root person and two candidate concepts."""

    question: str
    steps: tuple[str, ...]
    answer: str
    idx_to_symbol: tuple[str, ...]
    edges: tuple[tuple[int, int], ...]
    root: int
    target: int
    neg_target: int

    @property
    def n_nodes(self) -> int:
        return len(self.idx_to_symbol)

    def name(self, node: int) -> str:
        return self.idx_to_symbol[node]

    def index(self, name: str) -> int:
        """Node index of a symbol name."""
        try:
            return self.idx_to_symbol.index(name)
        except ValueError:
            raise KeyError(f"{name!r} is not a node of this item") from None

    def question_facts(self) -> list[tuple[int, int]]:
        """The (parent, child) edges in the order the question states them."""
        facts, _ = parse_question(self.question)
        return [(self.index(p), self.index(c)) for p, c in facts]

    def options(self) -> tuple[int, int]:
        """The two candidate concepts in the order the question asks them."""
        _, (_, a, b) = parse_question(self.question)
        return self.index(a), self.index(b)

    def reshuffled(self, rng: random.Random) -> "ProsQAItem":
        """The same item with its facts in a new random order and its two options in a random order
        (Reasoning by Superposition reshuffles both every time an item is seen); steps and answer unchanged."""
        *facts, _ = _sentences(self.question)
        _, (root, a, b) = parse_question(self.question)
        facts = rng.sample(facts, len(facts))
        if rng.random() < 0.5:
            a, b = b, a
        return replace(self, question=" ".join([*facts, f"Is {root} a {a} or {b}?"]))

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["steps"] = list(self.steps)
        d["idx_to_symbol"] = list(self.idx_to_symbol)
        d["edges"] = [list(e) for e in self.edges]
        return {k: d[k] for k in REQUIRED_FIELDS}


def _sentences(question: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.?])\s+", question.strip()) if s.strip()]


def parse_question(question: str) -> tuple[list[tuple[str, str]], tuple[str, str, str]]:
    """Split a ProsQA question into its facts [(parent, child)] and its query (root, a, b)."""
    sentences = _sentences(question)
    if not sentences or not (m := _QUERY.match(sentences[-1])):
        raise ValueError(f"the question does not end with 'Is X a A or B?': {question[-60:]!r}")
    facts = []
    for s in sentences[:-1]:
        f = _FACT.match(s.rstrip("."))
        if not s.endswith(".") or not f:
            raise ValueError(f"cannot parse the fact {s!r} (expected 'Every X is a Y.' or 'Name is a Y.')")
        facts.append((f["concept"] or f["person"], f["child"]))
    return facts, (m["root"], m["a"], m["b"])


# The fields of an item of Coconut's other data sets (GSM8K, ProntoQA: facebookresearch/coconut's README, "Data").
COCONUT_FIELDS = ("question", "steps", "answer")


def _check_item(raw: Any) -> ProsQAItem:
    """Build an item from a decoded JSON object, raising ValueError with what is wrong. Fields beyond the official
    ones are ignored (RbS's neighbor_k is read by probe.data.rbs)."""
    if not isinstance(raw, dict):
        raise ValueError(f"expected an object, got {type(raw).__name__}")
    missing = [k for k in REQUIRED_FIELDS if k not in raw]
    if missing and all(k in raw for k in COCONUT_FIELDS) and set(missing) == set(REQUIRED_FIELDS) - set(COCONUT_FIELDS):
        raise ValueError("holds only question, steps and answer, as the items of Coconut's other data sets (GSM8K, "
                         "ProntoQA) do: not a ProsQA item, which also names its graph (idx_to_symbol, edges, root, "
                         "target, neg_target); give a ProsQA file (facebookresearch/coconut's data/prosqa_*.json, or "
                         "`probe data generate`)")
    if missing:
        raise ValueError(f"missing field(s) {', '.join(missing)}")
    for k in ("question", "answer"):
        if not isinstance(raw[k], str):
            raise ValueError(f"field {k!r} must be a string")
    for k in ("steps", "idx_to_symbol"):
        if not isinstance(raw[k], list) or not all(isinstance(s, str) for s in raw[k]):
            raise ValueError(f"field {k!r} must be a list of strings")
    symbols = raw["idx_to_symbol"]
    n = len(symbols)
    if len(set(symbols)) != n:
        raise ValueError("idx_to_symbol holds a name twice")
    if not raw["steps"]:
        raise ValueError("field 'steps' is empty")
    for k in ("root", "target", "neg_target"):
        v = raw[k]
        if not isinstance(v, int) or isinstance(v, bool):
            raise ValueError(f"field {k!r} must be an integer, got {v!r}")
        if not 0 <= v < n:
            raise ValueError(f"{k} index {v} is out of range for {n} symbols")
    edges = raw["edges"]
    if not isinstance(edges, list):
        raise ValueError("field 'edges' must be a list of [parent, child] pairs")
    for j, e in enumerate(edges):
        if not (isinstance(e, list) and len(e) == 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in e)):
            raise ValueError(f"edge {j} must be a [parent, child] pair of integers, got {e!r}")
        if not all(0 <= x < n for x in e):
            raise ValueError(f"edge {j} {e} has an index out of range for {n} symbols")
    g = nx.DiGraph()
    g.add_nodes_from(range(n))
    g.add_edges_from(tuple(e) for e in edges)
    if not nx.is_directed_acyclic_graph(g):
        cycle = [symbols[u] for u, _ in nx.find_cycle(g)]
        raise ValueError(f"the graph has a cycle: {' -> '.join(cycle + cycle[:1])}")
    root, target, neg = raw["root"], raw["target"], raw["neg_target"]
    if not nx.has_path(g, root, target):
        raise ValueError(f"target {symbols[target]!r} is not reachable from root {symbols[root]!r}")
    if nx.has_path(g, root, neg):
        raise ValueError(f"neg_target {symbols[neg]!r} is reachable from root {symbols[root]!r}")
    facts, (q_root, a, b) = parse_question(raw["question"])
    index = {s: i for i, s in enumerate(symbols)}
    unknown = sorted({x for f in facts for x in f} - index.keys())
    if unknown:
        raise ValueError(f"the question names {unknown} that are not in idx_to_symbol")
    if {(index[p], index[c]) for p, c in facts} != {tuple(e) for e in edges}:
        raise ValueError("the facts in the question differ from the edges")
    if q_root != symbols[root] or {a, b} != {symbols[target], symbols[neg]}:
        raise ValueError(f"the query 'Is {q_root} a {a} or {b}?' does not ask about root, target and neg_target")
    return ProsQAItem(
        question=raw["question"],
        steps=tuple(raw["steps"]),
        answer=raw["answer"],
        idx_to_symbol=tuple(symbols),
        edges=tuple((int(p), int(c)) for p, c in edges),
        root=root,
        target=target,
        neg_target=neg,
    )


def item_from_json(raw: Any, source: str = "<item>") -> ProsQAItem:
    """Validate one decoded official-format item; errors name the source."""
    try:
        return _check_item(raw)
    except ValueError as e:
        raise DataError(f"{source}: {e}") from None


def item_list(data: Any, source: str = "<data>") -> list:
    """A decoded data file as its list of items (both formats hold a JSON list); raises DataError naming the source
    and saying what it holds instead: one item, an object that wraps the list, or other JSON."""
    if isinstance(data, list):
        return data
    said = "expected a JSON list of ProsQA items, got"
    official = "the official format, facebookresearch/coconut's data/prosqa_*.json, is a JSON list of items"
    if isinstance(data, dict):
        lists = [k for k, v in data.items() if isinstance(v, list)]
        if "question" in data:
            raise DataError(f"{source}: {said} one item (an object with field 'question'); {official}: write it "
                            "as [item]")
        if len(data) == 1 and lists:
            raise DataError(f"{source}: {said} an object holding a list under {lists[0]!r}; {official}: write that "
                            "list alone as the file")
        keys = ", ".join(repr(k) for k in list(data)[:5]) + (", ..." if len(data) > 5 else "")
        raise DataError(f"{source}: {said} an object (keys {keys or 'none'}); {official}")
    kind = {str: "a string", bool: "a boolean", type(None): "null"}.get(type(data), "a number")
    raise DataError(f"{source}: {said} {kind}; {official}")


def items_from_json(data: Any, source: str = "<data>") -> list[ProsQAItem]:
    """Validate a decoded official-format list; errors name the source and the item index."""
    data = item_list(data, source)
    items = []
    for i, raw in enumerate(data):
        try:
            items.append(_check_item(raw))
        except ValueError as e:
            raise DataError(f"{source}: item {i}: {e}") from None
    return items


def item_at(items: Sequence[ProsQAItem], index: int, source: str = "the data", setting: str = "index") -> ProsQAItem:
    """The one rule for item-index arguments (every command and the app): items[index], 0 <= index < len(items).

    Negative indices are refused (an index names an item of a file, as `probe data stats` counts them).
    Raises DataError naming the setting, the value, the source and its range.
    """
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(items):
        span = f"0..{len(items) - 1}" if items else "none"
        raise DataError(f"{setting} {index} is out of range: {source} has {len(items)} items ({span})")
    return items[index]


def load_items(path: str | os.PathLike, limit: int | None = None) -> list[ProsQAItem]:
    """Load and validate a ProsQA file: the official JSON format, or RbS's (its items carry `neighbor_k`; told by
    that field and validated with it, `probe.data.rbs.load_rbs`). Raises DataError naming the file and the item."""
    from probe.data.rbs import read_items

    return read_items(path, limit)[0]


def read_data_file(path: str | os.PathLike, limit: int | None = None, what: str = "ProsQA data file") -> Any:
    """The decoded JSON of a data file (its first `limit` items, where it is a list): a JSON list as the official
    repository writes it, in UTF-8 (a byte-order mark allowed) or UTF-16/32, or JSON Lines (one item per line, as
    `datasets.Dataset.to_json` writes; read as the list of its lines). Raises DataError naming the file when it is
    missing or is not JSON (probe.formats.read_json)."""
    data = read_json(path, DataError, what, json_lines=True)
    return data[:limit] if isinstance(data, list) and limit is not None else data


def save_items(items: Iterable[ProsQAItem], path: str | os.PathLike) -> None:
    """Write items in the official JSON format (atomically)."""
    atomic_write_text(path, json.dumps([it.to_json() for it in items], indent=1))


def persons_and_concepts(items: Sequence[ProsQAItem]) -> tuple[list[str], list[str]]:
    """Sorted names of parentless nodes (persons) and of the other nodes (concepts)."""
    persons, concepts = set(), set()
    for it in items:
        has_parent = {c for _, c in it.edges}
        for i, s in enumerate(it.idx_to_symbol):
            (concepts if i in has_parent else persons).add(s)
    return sorted(persons), sorted(concepts)


def item_key(item: ProsQAItem) -> str:
    """The identity of an item's content: a sha256 (hex) of its graph and question, written with node names.

    Hashed: the set of node names, the set of (parent, child) edges by name, the root's name and the two options
    as an unordered pair. That is the whole question (a validated item's facts are its edges and its query asks
    about root, target and neg_target), read as a set: the order of the facts and of the two options is a view of
    the item (`reshuffled`, which Reasoning by Superposition applies every time an item is seen), not another item.
    Names are content: the model reads them and a probe has one column per name, so the same graph under other
    names is another item. Their indices are not: renumbering idx_to_symbol changes neither a prompt nor any
    target. The steps and the answer are left out (the answer follows from the graph; the steps pick one of the
    shortest paths, and the question stays the same).
    """
    name = item.idx_to_symbol
    content = {"nodes": sorted(name), "edges": sorted([name[p], name[c]] for p, c in item.edges),
               "root": name[item.root], "options": sorted([name[item.target], name[item.neg_target]])}
    return hashlib.sha256(json.dumps(content, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class Duplicates:
    """Which items of a data set share their content (`item_key`): copies of one item are one item to every split."""

    groups: np.ndarray  # [n_items] int: the content group of each item, numbered by first appearance (0..n_distinct-1)

    @property
    def n_items(self) -> int:
        return len(self.groups)

    @property
    def n_distinct(self) -> int:
        return int(self.groups.max()) + 1 if len(self.groups) else 0

    @property
    def with_copy(self) -> int:
        """Items whose content some other item of the data set has too (every copy counts, the first one too)."""
        sizes = np.bincount(self.groups) if len(self.groups) else np.zeros(0, int)
        return int(sizes[sizes > 1].sum())

    @property
    def merged(self) -> int:
        """Items that are a copy of an earlier item (n_items - n_distinct): what a split merges with their original.
        Fits report it as `duplicates_merged`."""
        return self.n_items - self.n_distinct


def duplicates(items: Sequence[ProsQAItem]) -> Duplicates:
    """The content groups of a data set's items (equal `item_key`, equal group)."""
    first: dict[str, int] = {}
    return Duplicates(np.array([first.setdefault(item_key(it), len(first)) for it in items], dtype=np.int64))
