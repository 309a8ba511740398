"""ProsQA loading, validation and graph facts, on hand-built graphs with known answers."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from probe.data.graph import ProsQAGraph
from probe.data.prosqa import DataError, items_from_json, load_items, save_items

SYMBOLS = ["Tom", "Ann", "wumpus", "yumpus", "zumpus", "lempus", "rompus", "sterpus", "gorpus"]
EDGES = [[0, 2], [0, 3], [2, 4], [3, 4], [4, 5], [3, 6], [1, 7], [7, 8]]


def sentence(p: int, c: int) -> str:
    s = SYMBOLS
    return f"{s[p]} is a {s[c]}." if s[p][0].isupper() else f"Every {s[p]} is a {s[c]}."


def hand_item(**changes) -> dict:
    """Tom -> {wumpus, yumpus} -> zumpus -> lempus; yumpus -> rompus; Ann -> sterpus -> gorpus."""
    d = {
        "question": " ".join(sentence(p, c) for p, c in EDGES) + " Is Tom a lempus or gorpus?",
        "steps": ["Tom is a wumpus.", "Every wumpus is a zumpus.", "Every zumpus is a lempus."],
        "answer": "Tom is a lempus.",
        "idx_to_symbol": list(SYMBOLS),
        "edges": copy.deepcopy(EDGES),
        "root": 0,
        "target": 5,
        "neg_target": 8,
    }
    d.update(changes)
    return d


@pytest.fixture
def graph() -> ProsQAGraph:
    return ProsQAGraph.from_item(items_from_json([hand_item()])[0])


def test_depth_reachable_frontier(graph):
    inf = np.inf
    np.testing.assert_array_equal(graph.depth, [0, inf, 1, 1, 2, 3, 2, inf, inf])
    assert graph.reachable(1) == [0, 2, 3]
    assert graph.frontier(1) == [2, 3]
    assert graph.frontier(2) == [4, 6]
    assert graph.reachable(3) == [0, 2, 3, 4, 5, 6]
    assert graph.frontier(4) == []


def test_optimal_nodes_lie_on_shortest_paths(graph):
    assert graph.optimal(0) == [0]
    assert graph.optimal(1) == [2, 3]  # both wumpus and yumpus reach zumpus in one step
    assert graph.optimal(2) == [4]  # rompus is on the frontier but not on a path to lempus
    assert graph.optimal(3) == [5]
    assert sorted(graph.shortest_paths()) == [[0, 2, 4, 5], [0, 3, 4, 5]]


def test_heights_shortest_and_longest(graph):
    #                                      Tom Ann wum yum zum lem rom ste gor
    np.testing.assert_array_equal(graph.height_shortest, [2, 2, 2, 1, 1, 0, 0, 1, 0])
    np.testing.assert_array_equal(graph.height_longest, [3, 2, 2, 2, 1, 0, 0, 1, 0])


def test_parents_children(graph):
    assert graph.parents[4] == (2, 3)
    assert graph.children[0] == (2, 3)
    assert graph.children[5] == ()
    assert graph.parents[1] == ()


def test_question_facts_and_options():
    item = items_from_json([hand_item()])[0]
    assert item.question_facts() == [tuple(e) for e in EDGES]
    assert item.options() == (5, 8)


def test_official_split_loads_and_agrees_with_its_steps(official_items):
    assert len(official_items) == 300
    for it in official_items:
        g = ProsQAGraph.from_item(it)
        # every official item's steps are one shortest path: its length is the target's depth
        assert len(it.steps) == g.target_depth
        assert g.depth[it.neg_target] == np.inf


def test_save_and_load_round_trip(tmp_path, official_items):
    path = tmp_path / "out.json"
    save_items(official_items[:5], path)
    assert load_items(path) == official_items[:5]
    assert json.loads(path.read_text())[0].keys() == json.loads(json.dumps(official_items[0].to_json())).keys()


BAD = [
    ("missing field", lambda d: d.pop("neg_target"), "missing field(s) neg_target"),
    ("edge out of range", lambda d: d["edges"].append([2, 40]), "edge 8 [2, 40] has an index out of range for 9 symbols"),
    ("root out of range", lambda d: d.update(root=9), "root index 9 is out of range"),
    ("not a pair", lambda d: d["edges"].append([1]), "edge 8 must be a [parent, child] pair"),
    ("cycle", lambda d: d["edges"].append([5, 2]), "the graph has a cycle: wumpus -> zumpus -> lempus -> wumpus"),
    ("unreachable target", lambda d: d.update(target=7), "target 'sterpus' is not reachable from root 'Tom'"),
    ("reachable neg_target", lambda d: d.update(neg_target=6), "neg_target 'rompus' is reachable from root 'Tom'"),
    ("question disagrees", lambda d: d["edges"].pop(), "the facts in the question differ from the edges"),
    ("bad sentence", lambda d: d.update(question="Blah blah. Is Tom a lempus or gorpus?"), "cannot parse the fact"),
    ("duplicate name", lambda d: d["idx_to_symbol"].__setitem__(1, "Tom"), "idx_to_symbol holds a name twice"),
    ("wrong type", lambda d: d.update(steps="Tom is a wumpus."), "field 'steps' must be a list of strings"),
]


@pytest.mark.parametrize("what,change,message", BAD, ids=[b[0] for b in BAD])
def test_bad_items_are_rejected_naming_file_and_index(tmp_path, what, change, message):
    bad = hand_item()
    change(bad)
    path = tmp_path / "data.json"
    path.write_text(json.dumps([hand_item(), bad]))
    with pytest.raises(DataError) as e:
        load_items(path)
    assert str(e.value).startswith(f"{path}: item 1: ")
    assert message in str(e.value)


def test_malformed_and_missing_files(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[{"question": ')
    with pytest.raises(DataError, match=r"broken.json: not a valid JSON file"):
        load_items(path)
    path.write_text('{"question": "x"}')
    with pytest.raises(DataError, match=r"broken.json: expected a JSON list of ProsQA items, got one item \(an object "
                                        r"with field 'question'\); the official format"):
        load_items(path)
    with pytest.raises(DataError, match=r"nothere.json: no such ProsQA data file"):
        load_items(tmp_path / "nothere.json")


def test_items_are_identified_by_their_named_graph_and_question():
    """item_key: the same for another view of an item (facts and options reordered, indices renumbered, another
    gold path), different for another name, edge or root; duplicates() groups a data set by it."""
    import random

    from probe.data.prosqa import duplicates, item_key

    base = items_from_json([hand_item()])[0]
    key = item_key(base)
    # Facts and options in another order (reshuffled draws until the options are swapped too).
    view = next(v for v in (base.reshuffled(random.Random(s)) for s in range(20)) if v.options() != base.options())
    assert view.question != base.question and item_key(view) == key
    # idx_to_symbol renumbered: every index moves, the named graph is the same.
    perm = list(reversed(range(len(SYMBOLS))))  # new index of old node i is perm.index(i)
    new = {old: perm.index(old) for old in range(len(SYMBOLS))}
    renumbered = items_from_json([hand_item(idx_to_symbol=[SYMBOLS[i] for i in perm],
                                            edges=[[new[p], new[c]] for p, c in EDGES],
                                            root=new[0], target=new[5], neg_target=new[8])])[0]
    assert renumbered.edges != base.edges and item_key(renumbered) == key
    # The other shortest path (through yumpus) as the gold steps: the same question.
    other_path = items_from_json([hand_item(steps=["Tom is a yumpus.", "Every yumpus is a zumpus.",
                                                   "Every zumpus is a lempus."])])[0]
    assert item_key(other_path) == key
    # A name changed (gorpus -> jompus, everywhere): another item; so is another edge set or another root.
    renamed = items_from_json([json.loads(json.dumps(hand_item()).replace("gorpus", "jompus"))])[0]
    fewer = items_from_json([hand_item(edges=EDGES[:-1] + [[1, 8]],
                                       question=" ".join(sentence(p, c) for p, c in EDGES[:-1] + [[1, 8]])
                                       + " Is Tom a lempus or gorpus?")])[0]
    assert len({key, item_key(renamed), item_key(fewer)}) == 3
    d = duplicates([base, renamed, view, renumbered, fewer, renamed])
    assert d.groups.tolist() == [0, 1, 0, 0, 2, 1]
    assert (d.n_items, d.n_distinct, d.with_copy, d.merged) == (6, 3, 5, 3)
    assert (duplicates([]).n_distinct, duplicates([]).with_copy) == (0, 0)
