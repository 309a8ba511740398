"""Training in RbS's layout: its views (edges, options and, as the Emergence paper trains, node indices shuffled at
every view), the stream that draws them, and the configurations and files that cannot train."""

from __future__ import annotations

import json
import random

import pytest

from probe.data.generate import N_NODES
from probe.data.graph import ProsQAGraph
from probe.data.prosqa import DataError, item_from_json, item_key
from probe.data.rbs import RBS_NODES, permute_nodes, rbs_view, to_rbs_json
from probe.model.tokenizer import RBS_VOCABULARY
from probe.train.loop import ConfigError, TrainConfig, _setup, _stream, train

WORD = {w: i for i, w in enumerate(RBS_VOCABULARY)}


def rbs_config(tmp_path, **kw) -> TrainConfig:
    base = dict(name="r", out_dir=str(tmp_path / "run"), tokenizer="rbs", data_format="rbs", supervision="optimal",
                model={"model_type": "gpt2", "n_layer": 1, "n_embd": 16, "n_head": 2}, train_size=16, batch_size=8,
                epochs_per_stage=1, max_latent_stage=6, num_epochs=7, seed=4)
    base.update(kw)
    return TrainConfig(**base)


def test_a_view_is_the_same_item_under_a_bijection_of_its_node_ids(official_items):
    for it in official_items[:30]:
        for seed in range(3):
            view = rbs_view(it, random.Random(seed), shuffle_nodes=True)
            p, v = view.permutation, view.item
            assert sorted(p) == list(range(it.n_nodes))  # a bijection on 0..n-1
            item_from_json(v.to_json())  # a valid item: the question's facts are its edges, by name
            assert item_key(v) == item_key(it)  # the same content: names, edges by name, root and options
            assert v.name(v.target) == it.name(it.target) and v.answer == it.answer
            assert [v.idx_to_symbol[p[u]] for u in range(it.n_nodes)] == list(it.idx_to_symbol)
            assert sorted(v.edges) == sorted((p[a], p[b]) for a, b in it.edges)
            assert (v.root, v.target, v.neg_target) == (p[it.root], p[it.target], p[it.neg_target])
    views = [rbs_view(official_items[0], random.Random(s), shuffle_nodes=True) for s in range(40)]
    assert len({v.permutation for v in views}) == 40  # a new permutation at every view
    assert 10 < sum(v.target_first for v in views) < 30
    plain = rbs_view(official_items[0], random.Random(0))
    assert plain.permutation == tuple(range(official_items[0].n_nodes))
    assert sorted(plain.item.edges) == sorted(official_items[0].edges) and plain.item.edges != official_items[0].edges
    with pytest.raises(ValueError, match="not a permutation"):
        permute_nodes(official_items[0], [0] * official_items[0].n_nodes)


def _replayed_views(stream, pool, epoch, b, shuffle_nodes):
    """The views of batch b, drawn again as the stream's contract says: one rng per (epoch, batch), each item's view
    then its stage."""
    s = stream.spec
    rng = random.Random(f"{s.seed}:batch:{epoch}:{b}")
    out = []
    for _, index in stream._views(epoch, b):
        it = pool[index]
        out.append((it, rbs_view(it, rng, shuffle_nodes)))
        s.draw_stage(s.stages[epoch], len(it.steps), rng)
    return out


@pytest.mark.parametrize("shuffle_nodes", [True, False])
def test_the_stream_writes_each_view_and_its_targets_under_the_permutation(tmp_path, shuffle_nodes):
    """Every row, read back token by token, is the pool item with each node id v written p[v] (p the view's
    permutation, applied by hand here), and its thoughts are trained toward p(optimal_j) of the original item."""
    run = _setup(rbs_config(tmp_path, shuffle_nodes=shuffle_nodes), False, "cpu")
    stream = _stream(run, run.state.plan)
    latent, answer = WORD["<|latent|>"], WORD["[A]"]
    moved = 0
    for epoch in (1, 6):  # stage 1: thoughts 1 and 2 trained; stage 6: every item at its answer stage
        batch = stream.batch(epoch, 0)
        for row, (it, view) in enumerate(_replayed_views(stream, run.pool, epoch, 0, shuffle_nodes)):
            p = view.permutation
            moved += p != tuple(range(it.n_nodes))
            mask = batch["attention_mask"][row].bool()
            ids = batch["input_ids"][row][mask].tolist()
            words = [RBS_VOCABULARY[i] for i in ids]
            q_len = 3 * len(it.edges) + 5
            facts = " ".join(words[1:q_len - 5]).split(" | ")
            assert words[0] == "<eos>" and words[q_len - 5] == "[Q]" and words[q_len - 2] == "[R]"
            assert sorted(tuple(map(int, f.split())) for f in facts) == sorted((p[a], p[b]) for a, b in it.edges)
            first, second = (it.target, it.neg_target) if view.target_first else (it.neg_target, it.target)
            assert words[q_len - 4 : q_len - 2] == [str(p[first]), str(p[second])]
            assert words[q_len - 1] == str(p[it.root])
            g = ProsQAGraph.from_item(it)
            depth = len(it.steps)
            stage = min(1 if epoch == 1 else 6, depth)
            # the supervised units: thought j (at the root's position + j - 1) toward p(optimal_j), then the answer
            left = int(mask.nonzero()[0])  # the row's left padding (collate aligns the first latents)
            units = [(int(pos) - left, sorted(t for t in ts.tolist() if t >= 0))
                     for pos, ts in zip(batch["target_pos"][row], batch["target_ids"][row]) if pos >= 0]
            last = min(stage + 1, depth)
            thoughts = [(q_len - 1 + j - 1, sorted(p[v] for v in g.optimal(j))) for j in range(1, last + 1)]
            if stage < depth:
                assert ids[q_len:] == [latent] * stage
                assert units == thoughts
            else:
                assert ids[q_len:] == [latent] * 6 + [answer, p[it.target]]
                assert units == sorted(thoughts + [(len(ids) - 2, [p[it.target]])])
    assert moved == (16 if shuffle_nodes else 0)


def test_the_bfs_files_never_train(tmp_path, official_items):
    bfs = tmp_path / "prosqa_train_graph_4_bfs.json"
    bfs.write_text(json.dumps([to_rbs_json(it, "reachable") for it in official_items[:4]]))
    for kw in (dict(), dict(tokenizer="word", data_format="graph")):
        with pytest.raises(DataError) as e:
            train(rbs_config(tmp_path, train_data=str(bfs), **kw), progress=False)
        assert str(e.value).startswith(f"{bfs}: its neighbor_k holds reachable sets") and "\n" not in str(e.value)
        assert "told the search" in str(e.value)
    optimal = tmp_path / "prosqa_train_graph_4_coconut.json"
    optimal.write_text(json.dumps([to_rbs_json(it) for it in official_items[:4]]))
    run = _setup(rbs_config(tmp_path, train_data=str(optimal), val_data=str(bfs)), False, "cpu")
    assert len(run.pool) == 4 and len(run.val_items) == 4  # a BFS file may still be evaluated on


def test_items_past_rbs_node_tokens_are_named_by_file_and_item(tmp_path, official_items):
    big = official_items[0].to_json()
    extra = [f"zz{i}" for i in range(RBS_NODES + 1 - len(big["idx_to_symbol"]))]
    big["idx_to_symbol"] += extra
    for name in extra:  # each new node a child of node 0 (a person), so the item stays valid
        big["edges"].append([0, big["idx_to_symbol"].index(name)])
        big["question"] = big["question"].replace(" Is ", f" {big['idx_to_symbol'][0]} is a {name}. Is ", 1)
    item_from_json(big)
    data = tmp_path / "big.json"
    data.write_text(json.dumps([official_items[1].to_json(), big]))
    for field in ("train_data", "val_data"):
        with pytest.raises(DataError) as e:
            train(rbs_config(tmp_path, **{field: str(data)}), progress=False)
        assert str(e.value) == (f"{data}: item 1: an item of {RBS_NODES + 1} nodes cannot be written in RbS's layout "
                                f"(node tokens 0..{RBS_NODES - 1})")
    assert N_NODES <= RBS_NODES  # so no generated pool needs the check


@pytest.mark.parametrize("kw, message", [
    (dict(tokenizer="word"), "data_format rbs is written in RbS's tokens: tokenizer must be rbs, got 'word'"),
    (dict(data_format="graph"), "tokenizer rbs writes only RbS's layout: data_format must be rbs, got 'graph'"),
    (dict(supervision="language"), "data_format rbs has no language steps to supervise: supervision must be optimal"),
    (dict(mode="cot"), "mode cot trains language steps, which data_format rbs does not have"),
    (dict(tokenizer="word", data_format="graph", shuffle_nodes=True),
     "shuffle_nodes permutes node indices, which only data_format rbs writes; got data_format 'graph'"),
])
def test_configurations_that_cannot_train_in_rbs_layout_are_refused(tmp_path, kw, message):
    with pytest.raises(ConfigError) as e:
        rbs_config(tmp_path, **kw)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_a_checkpoint_continued_in_another_layout_is_refused(tmp_path):
    first = train(rbs_config(tmp_path, num_epochs=1, train_size=8), progress=False).last_checkpoint
    cfg = rbs_config(tmp_path, out_dir=str(tmp_path / "graph"), tokenizer="word", data_format="graph",
                     load_model_path=str(first), num_epochs=1)
    with pytest.raises(ConfigError, match=f"the tokenizer of {first} is RbS's, which writes only RbS's layout"):
        train(cfg, progress=False)
