"""The RbS notebook's measures (probe.analyses.rbs_notebook): walk sets and groups on a hand-built DAG with known answers,
and every number against the notebook's own construction computed by hand (its prompts, a plain Hugging Face
forward with the thoughts written in, output_attentions, its loops over edges and nodes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from conftest import latent_forward_by_hand, randomize_norms
from probe.data.graph import ProsQAGraph
from probe.data.layout import prompt_layout
from probe.data.prosqa import ProsQAItem
from probe.data.render import tokenize_item
from probe.model.coconut import CoconutConfig, CoconutModel
from probe.model.tokenizer import RBS_VOCABULARY, build_rbs_tokenizer, special_tokens
from probe.analyses.rbs_notebook import (NOTEBOOK_GROUPS, edge_attention, notebook_measures, thought_inner_products,
                                walk_sets)

# A DAG in which yumpus (2) is reached both after one edge (Tom -> yumpus) and after two (Tom -> wumpus -> yumpus):
# the walk frontier after two edges is {yumpus, zumpus}, the BFS frontier at depth 2 only {zumpus}. The shortest
# path is Tom -> yumpus -> zumpus -> gorpus (5); lorpus (4), the distractor, is unreachable.
ITEM = ProsQAItem(
    question="Tom is a wumpus. Tom is a yumpus. Every wumpus is a yumpus. Every yumpus is a zumpus. "
             "Every lorpus is a zumpus. Every zumpus is a gorpus. Is Tom a gorpus or lorpus?",
    steps=("Tom is a yumpus.", "Every yumpus is a zumpus.", "Every zumpus is a gorpus."),
    answer="Tom is a gorpus.",
    idx_to_symbol=("Tom", "wumpus", "yumpus", "zumpus", "lorpus", "gorpus"),
    edges=((0, 1), (0, 2), (1, 2), (2, 3), (4, 3), (3, 5)),
    root=0, target=5, neg_target=4,
)
TOK = build_rbs_tokenizer()
K = 4  # the notebook's n_step = 0..3
TOL = 1e-5


def test_walk_sets_follow_walks_not_bfs_depth():
    g = ProsQAGraph.from_item(ITEM)
    assert [g.walk_frontier(n) for n in range(6)] == [[0], [1, 2], [2, 3], [3, 5], [5], []]
    assert [g.frontier(n) for n in range(4)] == [[0], [1, 2], [3], [5]]
    want = {0: ({0}, {0}, {0}), 1: ({1, 2}, {0, 1, 2}, {2}), 2: ({2, 3}, {0, 1, 2, 3}, {3}),
            3: ({3, 5}, {0, 1, 2, 3, 5}, {5}), 4: ({5}, {0, 1, 2, 3, 5}, set())}
    for n, (frontier, reachable, optimal) in want.items():
        s = walk_sets(g, n)
        assert (s.frontier, s.reachable, s.optimal) == (frontier, reachable, optimal)
        assert s.reachable == set(g.reachable(n)) and s.optimal == set(g.optimal(n))  # the same as ours
    with pytest.raises(ValueError, match="n must be >= 0"):
        walk_sets(g, -1)


def test_edge_groups_and_the_skipped_last_edge_on_known_attention():
    """Attention 10^e on edge e's source token and 0.5 * 10^e on its "|" (one head): each scored edge's value is
    1.5 * 10^e, and its group is read from the notebook's rule by hand."""
    g = ProsQAGraph.from_item(ITEM)
    lay = prompt_layout(ITEM, TOK, "rbs")
    n_keys = len(lay.fact)
    pattern = torch.zeros(1, K, 1, n_keys)
    for e in range(len(ITEM.edges)):
        s_pos, _, *bar = lay.fact_positions(e)
        pattern[0, :, 0, s_pos] = 10.0 ** e
        for p in bar:  # the last edge has no "|"
            pattern[0, :, 0, p] = 0.5 * 10.0 ** e
    res = edge_attention(pattern, torch.tensor([lay.fact]), [g])
    v = lambda *edges: sorted(1.5 * 10.0 ** e for e in edges)  # noqa: E731
    # Edges 0 (0,1), 1 (0,2), 2 (1,2), 3 (2,3), 4 (4,3); edge 5 (3,5), written last, is never scored.
    want = {
        0: {"reachable": v(0, 1), "frontier": v(0, 1), "optimal": v(1), "not_reachable": v(2, 3, 4)},
        1: {"reachable": v(0, 1, 2, 3), "frontier": v(2, 3), "optimal": v(3), "not_reachable": v(4)},
        # yumpus (2) is in the walk frontier after two edges: edge (2,3) is a frontier edge, though yumpus was
        # expanded at step 1 (BFS grouping would call it reachable); its target zumpus is not in optimal(3).
        2: {"reachable": v(0, 1, 2, 3), "frontier": v(3), "optimal": [], "not_reachable": v(4)},
        3: {group: [] for group in NOTEBOOK_GROUPS},  # the target is 3 edges away: the item is not measured
    }
    for n in range(K):
        assert {grp: sorted(res.values[n][grp].tolist()) for grp in NOTEBOOK_GROUPS} == want[n]  # exact in float32
    assert res.n_items == [1, 1, 1, 0]
    assert np.isnan(res.mean[3]).all() and res.count[3].tolist() == [0, 0, 0, 0]
    assert res.as_dict()["2"]["optimal"] == {"mean": None, "count": 0}
    assert res.as_dict()["1"]["frontier"]["mean"] == pytest.approx(np.mean(v(2, 3)))


def test_node_groups_on_known_inner_products():
    """With the identity as embedding, <thought, e_v> is the thought's v-th component: set it to v + 1."""
    g = ProsQAGraph.from_item(ITEM)
    thoughts = torch.arange(1.0, 7.0).repeat(1, K, 1)  # [1, K, 6]: thought at every step = (1, ..., 6)
    res = thought_inner_products(thoughts, torch.eye(6), [list(range(6))], [g])
    v = lambda *nodes: [float(x + 1) for x in nodes]  # noqa: E731
    want = {  # thought i = n_step + 1, node sets after i edges; every node appears in some edge
        0: {"reachable": v(0, 1, 2), "frontier": v(1, 2), "optimal": v(2), "not_reachable": v(3, 4, 5)},
        1: {"reachable": v(0, 1, 2, 3), "frontier": v(2, 3), "optimal": v(3), "not_reachable": v(4, 5)},
        2: {"reachable": v(0, 1, 2, 3, 5), "frontier": v(3, 5), "optimal": v(5), "not_reachable": v(4)},
        3: {group: [] for group in NOTEBOOK_GROUPS},
    }
    for n in range(K):
        assert {grp: res.values[n][grp].tolist() for grp in NOTEBOOK_GROUPS} == want[n]
        assert all((res.items[n][grp] == 0).all() for grp in NOTEBOOK_GROUPS)
    assert res.n_items == [1, 1, 1, 0]


def tiny_rbs_model(seed: int = 0) -> CoconutModel:
    """A random 2-layer d32 4-head GPT-2 with RbS's vocabulary and layout (weights at initializer_range 0.3, so that
    attention is far from uniform and a misplaced key shows)."""
    torch.manual_seed(seed)
    base = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=40, n_positions=512,
                                      initializer_range=0.3))
    randomize_norms(base, seed)
    config = CoconutConfig.from_special(special_tokens(TOK), mode="coconut", data_format="rbs",
                                        supervision="optimal", max_latent_stage=4)
    return CoconutModel(base.eval(), config).eval()


def notebook_by_hand(model: CoconutModel, items) -> tuple[dict, dict]:
    """Both measures as the notebook computes them (cells 13, 15, 18, 20), with its prompts in our option and edge
    order: per n_step and item, a prompt of n_step (attention) or n_step + 1 (thoughts) latents and no "[A]", run
    by hand; its node sets by its own expansion loop; its groups by its own conditions. Returns ({n_step: {group:
    values}} for the attention, the same for the inner products)."""
    base, latent = model.base, model.config.latent_id
    wte = base.get_input_embeddings().weight
    attn = {n: {grp: [] for grp in NOTEBOOK_GROUPS} for n in range(K)}
    ips = {n: {grp: [] for grp in NOTEBOOK_GROUPS} for n in range(K)}
    before = base.config._attn_implementation
    base.set_attn_implementation("eager")
    try:
        for it in items:
            question = list(tokenize_item(it, TOK, "rbs").question)
            words = [RBS_VOCABULARY[t] for t in question]
            root = len(question) - 1
            optimal = {n: set(ProsQAGraph.from_item(it).optimal(n)) for n in range(K + 1)}  # RbS's neighbor_k
            for n_step in range(K):
                if len(it.steps) < n_step + 1:  # str(n_step + 1) not in neighbor_k
                    continue
                # cell 15: walk ends after n_step expansions, and everything seen on the way
                current, reachable = [it.root], {it.root}
                for _ in range(n_step):
                    current = [e[1] for node in current for e in it.edges if e[0] == node]
                    reachable.update(current)
                out, _ = latent_forward_by_hand(base, question + [latent] * n_step, root, n_step,
                                                output_attentions=True)
                attn_sum = out.attentions[1][0][:, -1, :].sum(dim=0)  # the last layer, last query, heads summed
                for i in range(1, len(words), 3):
                    if words[i + 2] != "|":
                        break
                    score = float(attn_sum[i : i + 3].sum())
                    if int(words[i]) in reachable:
                        attn[n_step]["reachable"].append(score)
                        if int(words[i]) in current:
                            attn[n_step]["frontier"].append(score)
                            if int(words[i + 1]) in optimal[n_step + 1]:
                                attn[n_step]["optimal"].append(score)
                    else:
                        attn[n_step]["not_reachable"].append(score)
                # cell 20: thought n_step + 1 as fed in at the last latent, against every embedding row
                _, thoughts = latent_forward_by_hand(base, question + [latent] * (n_step + 1), root, n_step + 1)
                products = thoughts[-1] @ wte.T
                current, previous = [it.root], []
                for _ in range(n_step + 1):
                    previous += current
                    current = [e[1] for node in current for e in it.edges if e[0] == node]
                for node in sorted({v for e in it.edges for v in e}):
                    value = float(products[TOK.encode(str(node), add_special_tokens=False)[0]])
                    if node in current + previous:
                        ips[n_step]["reachable"].append(value)
                        if node in current:
                            ips[n_step]["frontier"].append(value)
                            if node in optimal[n_step + 1]:
                                ips[n_step]["optimal"].append(value)
                    else:
                        ips[n_step]["not_reachable"].append(value)
    finally:
        base.set_attn_implementation(before)
    return attn, ips


@torch.no_grad()
def test_every_number_equals_the_notebook_computed_by_hand(official_items):
    model = tiny_rbs_model()
    items = [ITEM, *official_items[:3]]  # 3, 3, 4 and 4 steps; 6 to 41 edges
    attn, ips = notebook_by_hand(model, items)
    res = notebook_measures(model, TOK, items, k=K, batch_size=3, progress=False)  # one batch holds three lengths
    assert res.layer == 1 and res.k == K
    for pooled, want in ((res.attention, attn), (res.inner_product, ips)):
        for n in range(K):
            for j, grp in enumerate(NOTEBOOK_GROUPS):
                assert pooled.count[n, j] == len(want[n][grp])
                np.testing.assert_allclose(pooled.mean[n, j], np.mean(want[n][grp]), rtol=TOL, atol=TOL)
                np.testing.assert_allclose(sorted(pooled.values[n][grp]), sorted(want[n][grp]), rtol=TOL, atol=TOL)
        assert pooled.n_items == [4, 4, 4, 2] and (pooled.count > 0).all()  # every group compared, at every n_step
    # The attention is not uniform: the groups' means differ by far more than the tolerance.
    assert np.ptp(res.attention.mean[1]) > 100 * TOL
    report = res.report()
    assert report["groups"] == list(NOTEBOOK_GROUPS) and set(report["edge_attention"]) == {"0", "1", "2", "3"}


def test_the_command_prints_and_writes_the_library_numbers(tmp_path, official_items):
    import json

    from typer.testing import CliRunner

    from probe.cli import app
    from probe.data.rbs import to_rbs_json
    from probe.model.checkpoint import load_checkpoint, save_checkpoint

    ckpt = save_checkpoint(tiny_rbs_model(), TOK, tmp_path / "ckpt")
    data = tmp_path / "rbs_valid.json"  # in RbS's file format, neighbor_k and all
    data.write_text(json.dumps([to_rbs_json(it) for it in official_items[:4]]))
    out = tmp_path / "nb.json"
    args = ["rbs-notebook", "--ckpt", str(ckpt), "--data", str(data), "--k", "2", "--batch-size", "3", "--json",
            str(out)]
    runner = CliRunner()
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "edge attention (layer 1" in r.stdout and "<thought, node embedding>" in r.stdout
    model, tok = load_checkpoint(ckpt)
    want = notebook_measures(model, tok, official_items[:4], k=2, batch_size=3, progress=False)
    assert json.loads(out.read_text()) == {"ckpt": str(ckpt), "data": str(data), "n": 4, **want.report()}
    frontier = want.attention.as_dict()["1"]["frontier"]
    assert f"{frontier['mean']:.3f} ({frontier['count']})" in r.stdout
    r = runner.invoke(app, args)  # the output exists: refused in one line, before any work
    assert r.exit_code == 2
    assert r.stderr.strip() == f"error: --json {out}: already exists; pass --overwrite to replace it, or choose another path"


def test_a_model_without_thoughts_or_no_thought_is_refused():
    model = tiny_rbs_model()
    with pytest.raises(ValueError, match=r"k must be >= 1 \(thought 1 is the first the notebook measures\), got 0"):
        notebook_measures(model, TOK, [ITEM], k=0, progress=False)
    cot = CoconutModel(model.base, CoconutConfig.from_special(special_tokens(TOK), mode="cot", data_format="rbs"))
    with pytest.raises(ValueError, match="a cot checkpoint has no latent mode"):
        notebook_measures(cot, TOK, [ITEM], k=2, progress=False)
