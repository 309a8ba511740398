"""RbS's data files: neighbor_k read by its kind (optimal or reachable), checked against the edges, bad items named."""

from __future__ import annotations

import json

import pytest

from probe.data.prosqa import DataError
from probe.data.rbs import load_rbs, to_rbs_json

# Validation item 0 by hand (docs/rbs-notes.md, section 1): Tom -> terpus -> brimpus -> lempus is its only
# shortest path; its neighbor_k in RbS's valid file is {"0": [1], "1": [3], "2": [14], "3": [16]} under RbS's
# numbering. Ours numbers nodes by idx_to_symbol too, so the sets are named here by name.
OPTIMAL_0 = [["Tom"], ["terpus"], ["brimpus"], ["lempus"]]


def _write(tmp_path, items, name="f.json"):
    path = tmp_path / name
    path.write_text(json.dumps(items))
    return path


def test_an_optimal_file_is_read_and_its_sets_are_the_shortest_path_nodes(tmp_path, official_items):
    raw = [to_rbs_json(it) for it in official_items[:20]]
    f = load_rbs(_write(tmp_path, raw))
    assert f.kind == "optimal" and len(f.items) == 20
    first = f.items[0]
    assert [sorted(first.item.name(v) for v in s) for s in first.neighbors] == OPTIMAL_0


def test_a_bfs_file_is_told_apart_from_the_edges(tmp_path, official_items):
    raw = [to_rbs_json(it, "reachable") for it in official_items[:20]]
    f = load_rbs(_write(tmp_path, raw))
    assert f.kind == "reachable"
    first = f.items[0]
    root = first.item.root
    assert all(root in s for s in first.neighbors) and len(first.neighbors) == 5
    assert [first.item.name(v) for v in sorted(first.neighbors[1])] == sorted(
        [first.item.name(root), "terpus", "dumpus"], key=first.item.index)  # Tom's children and Tom


@pytest.mark.parametrize("breakage, message", [
    (lambda d: d.pop("neighbor_k"), "item 1: missing field 'neighbor_k'"),
    (lambda d: d["neighbor_k"].update({"1": [99]}), "item 1: neighbor_k['1'] holds node index 99, out of range"),
    (lambda d: d["neighbor_k"].update({"1": d["neighbor_k"]["2"]}), "item 1: neighbor_k['1'] = "),
    (lambda d: d["neighbor_k"].pop("1"), "item 1: field 'neighbor_k' must have the depths"),
    (lambda d: d.pop("edges"), "item 1: missing field(s) edges"),
])
def test_a_malformed_item_is_named_by_file_and_index(tmp_path, official_items, breakage, message):
    raw = [to_rbs_json(it) for it in official_items[:3]]
    breakage(raw[1])
    path = _write(tmp_path, raw)
    with pytest.raises(DataError) as e:
        load_rbs(path)
    assert str(e.value).startswith(f"{path}: {message}"), str(e.value)


def test_a_file_of_both_kinds_and_an_item_past_the_vocabulary_are_refused(tmp_path, official_items):
    raw = [to_rbs_json(official_items[0]), to_rbs_json(official_items[1], "reachable")]
    with pytest.raises(DataError, match="item 1: its neighbor_k holds reachable nodes, but item 0's holds optimal"):
        load_rbs(_write(tmp_path, raw))
    big = to_rbs_json(official_items[0])
    extra = [f"zz{i}" for i in range(31 - len(big["idx_to_symbol"]) + 1)]
    big["idx_to_symbol"] += extra
    big["edges"] += [[0, len(big["idx_to_symbol"]) - 1]]
    big["question"] = big["question"].replace(" Is ", f" Every {big['idx_to_symbol'][0]} is a {extra[-1]}. Is ", 1)
    with pytest.raises(DataError, match="outside RbS's vocabulary"):
        load_rbs(_write(tmp_path, [big], "big.json"))
