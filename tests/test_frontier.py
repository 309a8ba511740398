"""Latent-search measures on hand-built graphs and planted vectors, with answers worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probe.data.graph import ProsQAGraph
from probe.analyses.frontier import (FRONTIER, OPTIMAL, REACHABLE, UNREACHABLE, attention_by_group, edge_groups, frontier_mass,
                            inner_products, node_groups, parallelism, value_by_height)

# root 0 -> 1, 2; 1 -> 3 (target); 2 -> 4 (neg_target), 2 -> 5; 6 -> 4 (never reached from the root)
G = ProsQAGraph(n_nodes=7, edges=((0, 1), (0, 2), (1, 3), (2, 4), (2, 5), (6, 4)), root=0, target=3, neg_target=4)
# root 0 -> 1 -> 2 (target), 0 -> 3 -> 2, 0 -> 4 (neg): two shortest paths
H = ProsQAGraph(n_nodes=5, edges=((0, 1), (1, 2), (0, 3), (3, 2), (0, 4)), root=0, target=2, neg_target=4)


def test_node_groups_by_hand():
    assert node_groups(G, 1).tolist() == [REACHABLE, OPTIMAL, FRONTIER, UNREACHABLE, UNREACHABLE, UNREACHABLE, UNREACHABLE]
    assert node_groups(G, 2).tolist() == [REACHABLE, REACHABLE, REACHABLE, OPTIMAL, FRONTIER, FRONTIER, UNREACHABLE]
    assert node_groups(H, 1).tolist() == [REACHABLE, OPTIMAL, UNREACHABLE, OPTIMAL, FRONTIER]


def test_a_thought_made_of_the_frontier_ranks_the_frontier_first():
    d = 16
    emb = torch.eye(d)  # orthonormal name embeddings: token i is e_i
    names = [[0, 1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11]]
    # thought 1 = normalised sum of frontier_1 embeddings; thought 2 likewise for frontier_2.
    t = torch.zeros(2, 2, d)
    for b, (g, ids) in enumerate(zip((G, H), names)):
        for k in (1, 2):
            f = g.frontier(k)
            t[b, k - 1] = emb[[ids[v] for v in f]].sum(0) / len(f) ** 0.5
    ip = inner_products(t, emb, names, [G, H])
    # G step 1: frontier {1, 2}, each at 1/sqrt(2); step 2: {3, 4, 5} at 1/sqrt(3); others 0.
    assert ip.per_item[0, 0].tolist() == pytest.approx([2 ** -0.5, 2 ** -0.5, 0.0, 0.0])
    assert ip.per_item[0, 1].tolist() == pytest.approx([3 ** -0.5, 3 ** -0.5, 0.0, 0.0])
    # H step 2: frontier_2 = {2}, the target, alone and optimal: no non-optimal frontier node.
    assert ip.per_item[1, 1, OPTIMAL] == pytest.approx(1.0) and np.isnan(ip.per_item[1, 1, FRONTIER])
    report = ip.as_dict()
    assert report["2"]["frontier"] == pytest.approx(3 ** -0.5)  # only G has the group at step 2
    # Step 1: G's optimal node 1 at 1/sqrt(2); H's optimal nodes 1 and 3 at 1/sqrt(3) (frontier_1 = {1, 3, 4}).
    assert report["1"]["optimal"] == pytest.approx((2 ** -0.5 + 3 ** -0.5) / 2)
    for k in ("1", "2"):
        r = report[k]
        assert r["optimal"] > r["reachable"] and r["frontier"] > r["unreachable"]


def test_edge_groups_follow_the_source_node_one_step_earlier():
    # Thought 1 expands the root: both root edges are optimal (the root is optimal_0), the rest unexplored.
    O, F, R, U = OPTIMAL, FRONTIER, REACHABLE, UNREACHABLE
    assert edge_groups(G, 1).tolist() == [O, O, U, U, U, U]
    # Thought 2 expands frontier_1 = {1 (optimal), 2}: (1,3) optimal, (2,4) and (2,5) frontier, root edges done.
    assert edge_groups(G, 2).tolist() == [R, R, O, F, F, U]


def test_attention_mass_by_edge_group_by_hand():
    # Keys: edge e's fact on positions 2e and 2e + 1, then two query tokens (no fact).
    fact = torch.tensor([[0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, -1, -1]])
    pat = torch.zeros(1, 2, 1, 2, 14)  # [items, steps, layers, heads, keys]
    pat[0, 0, 0, 0, 0] = pat[0, 0, 0, 0, 3] = 0.5  # step 1, head 0: edges 0 and 1 (both optimal)
    pat[0, 0, 0, 1, 13] = 1.0  # head 1: the query, no fact
    pat[0, 1, 0, 0, 4] = pat[0, 1, 0, 0, 6] = 0.5  # step 2, head 0: edge 2 (optimal), edge 3 (frontier)
    pat[0, 1, 0, 1, 11] = 1.0  # head 1: edge 5, whose source 6 is never reached
    att = attention_by_group(pat, fact, [G])
    # Heads averaged: step 1 gives edges 0, 1 a quarter each; the query's half goes to no edge.
    np.testing.assert_allclose(att.per_item[0, 0, 0], [0.25, np.nan, np.nan, 0.0])
    # Step 2: optimal edge 2 = 0.25; frontier edges 3, 4 = (0.25 + 0) / 2; reachable 0; unreachable edge 5 = 0.5.
    np.testing.assert_allclose(att.per_item[0, 1, 0], [0.25, 0.125, 0.0, 0.5])
    assert att.as_dict()["2"]["0"] == pytest.approx({"optimal": 0.25, "frontier": 0.125, "reachable": 0.0,
                                                     "unreachable": 0.5})
    # Per head: step 1 head 0 puts 0.5 on each optimal edge, head 1 nothing on any edge; step 2 head 1 puts its
    # whole mass on edge 5, the one unreachable edge.
    np.testing.assert_allclose(att.per_head[0, 0, 0, :, OPTIMAL], [0.5, 0.0])
    np.testing.assert_allclose(att.per_head[0, 1, 0, :, UNREACHABLE], [0.0, 1.0])
    assert att.heads_dict()["2"]["0"]["unreachable"] == [0.0, 1.0]
    # The frontier gap (heads averaged): step 1, edges 0 and 1 (leaving the root) at 0.25 against 0 elsewhere;
    # step 2, edges 2, 3, 4 (leaving frontier_1) at (0.25 + 0.25 + 0) / 3 against edges 0, 1, 5 at (0 + 0 + 0.5) / 3.
    np.testing.assert_allclose(att.frontier_gap[0, :, 0], [0.25, 0.0], atol=1e-7)
    assert att.gap_dict()["1"]["0"] == pytest.approx(0.25)


def test_parallelism_mass_and_height():
    values = np.zeros((2, 7))
    values[0, [1, 2]] = [0.3, 0.6]  # G: frontier_1 = {1, 2}
    values[1, [1, 3, 4]] = [0.5, 0.2, 0.1]  # H: frontier_1 = {1, 3, 4}
    par = parallelism(values, [G, H], k=1)
    np.testing.assert_allclose(par.cumulative, [[0.6, 0.9, 0.9], [0.5, 0.7, 0.8]])
    assert par.mean == pytest.approx({"top1": 0.55, "top2": 0.8, "top3": 0.85})
    assert par.percentiles([0, 100])[:, 0].tolist() == pytest.approx([0.5, 0.6])
    assert frontier_mass(values, [G, H], 1).tolist() == pytest.approx([0.9, 0.8])
    vh = value_by_height(values, [G, H], k=1)
    # G: node 1 (height 1, reaches the target 3), node 2 (height 1, cannot); H: 1 and 3 (height 1, reach), 4 (leaf).
    assert vh.height.tolist() == [1, 1, 1, 1, 0]
    assert vh.reaches_target.tolist() == [True, False, True, True, False]
    assert vh.means() == {True: {1: pytest.approx((0.3 + 0.5 + 0.2) / 3)}, False: {0: 0.1, 1: 0.6}}
    with pytest.raises(ValueError, match="height must be"):
        value_by_height(values, [G], 1, height="middle")


@pytest.mark.parametrize("fmt", ["sentences", "edges", "graph"])
def test_node_values_are_next_name_probabilities(tiny_model, word_tokenizer, official_items, fmt):
    """The value of a node: the probability of its name as the next step's first word, after k thoughts and
    <|end-latent|> ('Every' first in the sentence format), from a prompt written by hand in each format."""
    from dataclasses import replace

    from conftest import prompt_by_hand
    from probe.readouts.values import node_values, values_by_k

    tiny_model.config = replace(tiny_model.config, data_format=fmt)
    items = official_items[:3]
    k = 2
    vals = node_values(tiny_model, word_tokenizer, items, k, progress=False)
    lead = [word_tokenizer.convert_tokens_to_ids("Every")] if fmt == "sentences" else []
    cfg = tiny_model.config
    for b, it in enumerate(items):
        prompt = prompt_by_hand(it, word_tokenizer, fmt, k, cfg.special) + lead
        with torch.no_grad():
            probs = tiny_model(torch.tensor([prompt])).logits[0, -1].softmax(-1)
        want = [float(probs[word_tokenizer.convert_tokens_to_ids(n)]) for n in it.idx_to_symbol]
        np.testing.assert_allclose(vals[b, : it.n_nodes].numpy(), want, rtol=1e-4, atol=1e-7)
        assert torch.isnan(vals[b, it.n_nodes :]).all()
    # values_by_k: the values after each k = 1..K, the k-th slice the values after k thoughts
    by_k = values_by_k(tiny_model, word_tokenizer, items, 2, progress=False)
    assert by_k.shape == (3, 2, vals.shape[1])
    np.testing.assert_allclose(by_k[:, 1], vals.numpy(), rtol=1e-6)
    np.testing.assert_allclose(by_k[:, 0], node_values(tiny_model, word_tokenizer, items, 1, progress=False).numpy(),
                               rtol=1e-6)


@pytest.mark.parametrize("mode", ["coconut", "pause_as_thought"])
def test_emitted_values_read_each_thought_through_the_unembedding(tiny_model, word_tokenizer, official_items, mode):
    """A model trained to emit a node with each thought (supervision optimal) is read at the thought itself: the
    value after j thoughts is the softmax, at the position emitting thought j (question_len + j - 1 of a prompt
    written by hand), at each name's token; nothing is forced. An edit of thought 2 is what thought 2 reads."""
    from dataclasses import replace

    from conftest import prompt_by_hand
    from probe.model.coconut import ThoughtEdit
    from probe.readouts.values import node_values, readout_of, values_by_k

    assert readout_of(tiny_model.config) == "language"
    tiny_model.config = replace(tiny_model.config, data_format="graph", supervision="optimal", mode=mode)
    assert readout_of(tiny_model.config) == "emitted"
    items, k = official_items[:3], 3
    by_k = values_by_k(tiny_model, word_tokenizer, items, k, progress=False)
    assert by_k.shape == (3, k, max(it.n_nodes for it in items))
    for b, it in enumerate(items):
        prompt = prompt_by_hand(it, word_tokenizer, "graph", k, tiny_model.config.special)
        q = prompt.index(tiny_model.config.start_id)
        with torch.no_grad():
            logits = tiny_model(torch.tensor([prompt])).logits[0]
        ids = [word_tokenizer.convert_tokens_to_ids(n) for n in it.idx_to_symbol]
        for j in range(1, k + 1):
            want = logits[q + j - 1].softmax(-1)[ids].numpy()
            np.testing.assert_allclose(by_k[b, j - 1, : it.n_nodes], want, rtol=1e-4, atol=1e-7)
        assert np.isnan(by_k[b, :, it.n_nodes :]).all()
    np.testing.assert_allclose(node_values(tiny_model, word_tokenizer, items, 2, progress=False).numpy(), by_k[:, 1],
                               rtol=1e-5, atol=1e-8)
    if mode == "coconut":  # an edited thought is what it reads; the thought after it follows from it
        d = tiny_model.base.config.hidden_size
        planted = torch.randn(3, 3, d)
        edit = ThoughtEdit(mask=torch.tensor([[False, True, False]] * 3), replace=planted)
        got = values_by_k(tiny_model, word_tokenizer, items, k, progress=False, edit=edit)
        for b, it in enumerate(items):
            ids = [word_tokenizer.convert_tokens_to_ids(n) for n in it.idx_to_symbol]
            want = tiny_model.unembed(planted[b, 1]).softmax(-1)[ids].detach().numpy()
            np.testing.assert_allclose(got[b, 1, : it.n_nodes], want, rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(got[:, 0], by_k[:, 0], rtol=1e-5)
        assert np.nanmax(np.abs(got[:, 2] - by_k[:, 2])) > 1e-4
    with pytest.raises(ValueError, match="k must be >= 1"):
        node_values(tiny_model, word_tokenizer, items, 0, progress=False)


def test_node_values_multiply_the_pieces_of_a_split_name(official_items, bpe_tokenizer):
    from conftest import tiny_base
    from probe.readouts.values import node_values
    from probe.data.layout import name_pieces
    from probe.data.render import render_prompt, tokenize_item
    from probe.model.coconut import CoconutConfig, CoconutModel
    from probe.model.tokenizer import add_latent_tokens

    tok = bpe_tokenizer
    sp = add_latent_tokens(tok)
    model = CoconutModel(tiny_base("gpt2", len(tok), sp.eos_id), CoconutConfig.from_special(sp))
    it = official_items[0]
    vals = node_values(model, tok, [it], k=1, progress=False)[0]
    pieces = name_pieces(it, tok, "sentences")
    assert max(len(p) for p in pieces) > 1
    prompt = render_prompt(tokenize_item(it, tok, "sentences"), 1, model.config.stage_spec, sp) + \
        tok.encode("Every", add_special_tokens=False)
    for v, p in enumerate(pieces):
        want, ctx = 1.0, list(prompt)
        for t in p:  # one piece at a time, the whole prefix recomputed
            with torch.no_grad():
                want *= float(model(torch.tensor([ctx])).logits[0, -1].softmax(-1)[t])
            ctx.append(t)
        assert float(vals[v]) == pytest.approx(want, rel=1e-4, abs=1e-9)


def _item(names, edges, target, neg):
    from probe.data.prosqa import ProsQAItem

    return ProsQAItem(question="", steps=(), answer="", idx_to_symbol=tuple(names), edges=tuple(edges), root=0,
                      target=target, neg_target=neg)


def test_path_categories_by_hand():
    from probe.analyses.frontier import path_category

    g = _item(["Tom", "a1", "b1", "tgt", "neg", "b2", "x"], G.edges, 3, 4)
    cases = {
        (): "correct_label",
        (("Tom", "a1"), ("a1", "tgt")): "correct_path",
        (("a1", "tgt"),): "correct_path",  # partial: the thoughts covered the first step
        (("Tom", "a1"),): "correct_path",  # partial: completed by a1 -> tgt
        (("Tom", "b1"), ("b1", "neg")): "wrong_target",
        (("Tom", "b1"),): "wrong_target",  # tgt cannot be reached from b1
        (("Tom", "tgt"),): "hallucination",  # no such edge
        (("Tom", "zzz"),): "hallucination",  # no such node
        (("Tom", "a1"), ("b1", "b2")): "hallucination",  # broken chain
    }
    for steps, want in cases.items():
        assert path_category(g, steps, answer_correct=True) == want, steps
    assert path_category(g, (), answer_correct=False) == "incorrect_label"
    # Tom -> n1 -> tgt is shortest; Tom -> n3 -> n4 -> tgt is longer.
    lg = _item(["Tom", "n1", "tgt", "n3", "n4", "neg"], [(0, 1), (1, 2), (0, 3), (3, 4), (4, 2), (0, 5)], 2, 5)
    assert path_category(lg, (("Tom", "n3"), ("n3", "n4"), ("n4", "tgt")), True) == "longer_path"
    assert path_category(lg, (("n3", "n4"),), True) == "longer_path"
    assert path_category(lg, (("Tom", "n1"), ("n1", "tgt")), False) == "correct_path"


def test_parse_steps_in_both_formats():
    from probe.analyses.frontier import parse_steps

    text = "Every a1 is a tgt.\nTom is a a1.\n### Tom is a tgt."
    assert parse_steps(text, "sentences") == [("a1", "tgt"), ("Tom", "a1")]
    assert parse_steps("a1 tgt\nTom a1\n### Tom is a tgt.", "edges") == [("a1", "tgt"), ("Tom", "a1")]
    assert parse_steps("### Tom is a tgt.", "edges") == []
    assert parse_steps("what is this\n### Tom is a tgt.", "sentences") == [("what is this", "")]


def test_names_sharing_a_first_token_are_one_name_to_the_emitted_readout(official_items, bpe_tokenizer):
    """A byte-level BPE splits names into pieces, and some share their first piece: the language readout tells
    them apart (whole names), the emitted readout and the decomposition cannot (first tokens)."""
    from probe.data.layout import indistinct_names, name_pieces, name_tokens

    it = next(it for it in official_items
              if len(set(name_tokens(it, bpe_tokenizer, "graph"))) < it.n_nodes)
    pieces = name_pieces(it, bpe_tokenizer, "graph")
    first = name_tokens(it, bpe_tokenizer, "graph")
    by_first: dict[int, list[str]] = {}
    for name, t in zip(it.idx_to_symbol, first):
        by_first.setdefault(t, []).append(name)
    want = sorted(tuple(g) for g in by_first.values() if len(g) > 1)
    assert want and sorted(indistinct_names(it, bpe_tokenizer, "graph", first_token=True)) == want
    whole = indistinct_names(it, bpe_tokenizer, "graph")
    assert len(whole) < len(want) or whole != want  # whole names are told apart where their later pieces differ
    assert all(len({tuple(pieces[it.index(n)]) for n in g}) == 1 for g in whole)
