"""RbS's data files: neighbor_k read by its kind (optimal or reachable), checked against the edges, bad items named."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import probe.data.generate as generate
from probe.cli import app
from probe.data.prosqa import DataError, item_from_json, load_items
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


def test_generated_items_written_in_rbs_format(tmp_path, monkeypatch):
    runner = CliRunner()
    out = tmp_path / "gen_rbs.json"
    r = runner.invoke(app, ["data", "generate", "--n", "12", "--seed", "3", "--format", "rbs", "--out", str(out)])
    assert r.exit_code == 0, r.output
    f = load_rbs(out)
    assert f.kind == "optimal" and len(f.items) == 12
    official = tmp_path / "gen.json"
    assert runner.invoke(app, ["data", "generate", "--n", "12", "--seed", "3", "--out", str(official)]).exit_code == 0
    assert f.prosqa_items == load_items(official)  # the same items, plus neighbor_k
    assert all("neighbor_k" not in raw for raw in json.loads(official.read_text()))
    # an item past RbS's node tokens: one line naming the file and the item, nothing written
    items = load_items(official)[:3]
    big = items[2].to_json()
    extra = [f"zz{i}" for i in range(32 - len(big["idx_to_symbol"]))]
    big["idx_to_symbol"] += extra
    for name in extra:
        big["edges"].append([big["root"], big["idx_to_symbol"].index(name)])
        big["question"] = big["question"].replace(" Is ", f" {big['idx_to_symbol'][big['root']]} is a {name}. Is ", 1)
    items[2] = item_from_json(big)
    monkeypatch.setattr(generate, "generate_items", lambda n, seed, progress=False: items)
    bad = tmp_path / "big.json"
    r = runner.invoke(app, ["data", "generate", "--n", "3", "--format", "rbs", "--out", str(bad)])
    assert r.exit_code == 2 and r.stderr.strip().count("\n") == 0
    assert r.stderr.strip() == (f"error: {bad}: item 2: an item with 32 nodes cannot be written with RbS's 31 node "
                                f"tokens")
    assert not bad.exists()
    r = runner.invoke(app, ["data", "generate", "--n", "3", "--format", "bfs", "--out", str(bad)])
    assert r.exit_code == 2 and r.stderr.strip() == "error: --format 'bfs': expected official or rbs"


@pytest.mark.parametrize("kind", ["optimal", "reachable"])
def test_data_stats_says_the_format_and_what_its_neighbor_k_holds(tmp_path, official_items, kind):
    from typer.testing import CliRunner

    from probe.cli import app

    path = _write(tmp_path, [to_rbs_json(it, kind) for it in official_items[:5]])
    r = CliRunner().invoke(app, ["data", "stats", str(path)])
    stats = json.loads(r.stdout)
    assert r.exit_code == 0 and (stats["format"], stats["neighbor_k"], stats["n"]) == ("rbs", kind, 5)
    assert ("refused for training" in stats["neighbor_k_means"]) == (kind == "reachable")
    official = _write(tmp_path, [it.to_json() for it in official_items[:5]], "official.json")
    assert json.loads(CliRunner().invoke(app, ["data", "stats", str(official)]).stdout)["format"] == "official"
