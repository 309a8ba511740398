"""`analyze` and `probe analyze`: measures checked against independent computations and hand-worked cases."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import tiny_base
from probe.analyses.analyze import _verbalise, analyze
from probe.capture.trace import capture_batch
from probe.cli import app
from probe.data.graph import ProsQAGraph
from probe.data.layout import name_tokens
from probe.data.prosqa import ProsQAItem
from probe.data.render import tokenize_item
from probe.model.evaluate import evaluate
from probe.analyses.findings import check_report
from probe.analyses.frontier import CATEGORIES, GROUPS, node_groups
from probe.model.coconut import CoconutConfig, CoconutModel
from probe.model.tokenizer import special_tokens

runner = CliRunner()

# Tom -> wumpus -> yumpus (target); Tom -> zumpus -> rompus (neg_target); lempus -> rompus (unreached).
ITEM = ProsQAItem(
    question="Tom is a wumpus. Tom is a zumpus. Every wumpus is a yumpus. Every zumpus is a rompus. "
             "Every lempus is a rompus. Is Tom a yumpus or rompus?",
    steps=("Tom is a wumpus.", "Every wumpus is a yumpus."), answer="Tom is a yumpus.",
    idx_to_symbol=("Tom", "wumpus", "zumpus", "yumpus", "rompus", "lempus"),
    edges=((0, 1), (0, 2), (1, 3), (2, 4), (5, 4)), root=0, target=3, neg_target=4,
)
G = ProsQAGraph.from_item(ITEM)


@pytest.mark.parametrize("text, k, category, first, group", [
    ("Every wumpus is a yumpus.\n### Tom is a yumpus.", 1, "correct_path", "wumpus", "optimal"),
    ("Every zumpus is a rompus.\n### Tom is a rompus.", 1, "wrong_target", "zumpus", "frontier"),
    ("Every lempus is a rompus.\n### Tom is a rompus.", 1, "wrong_target", "lempus", "unreachable"),
    ("Every wumpus is a rompus.\n### Tom is a rompus.", 1, "hallucination", "wumpus", "optimal"),
    ("Every gorpus is a yumpus.\n### Tom is a yumpus.", 2, "hallucination", "gorpus", "unknown"),
    ("Tom is a wumpus.\nEvery wumpus is a yumpus.\n### Tom is a yumpus.", 0, "correct_path", "Tom", "optimal"),
    ("Tom is a wumpus.\n### Tom is a yumpus.", 2, "correct_path", "Tom", "reachable"),
    ("### Tom is a yumpus.", 2, "correct_label", None, None),
    ("### Tom is a rompus.", 2, "incorrect_label", None, None),
])
def test_verbalised_thought_is_checked_against_the_graph(text, k, category, first, group):
    correct = text.endswith("yumpus.")
    v = _verbalise(ITEM, G, k, text, correct, "sentences")
    assert (v.category, v.first_node, v.first_group, v.k) == (category, first, group, k)


@pytest.fixture(scope="module")
def tiny(official_items, word_tokenizer):
    tok = word_tokenizer
    sp = special_tokens(tok)
    model = CoconutModel(tiny_base("gpt2", len(tok), sp.eos_id), CoconutConfig.from_special(sp, max_latent_stage=2))
    return model, tok


@pytest.mark.parametrize("fmt", ["sentences", "edges", "graph"])
def test_analysis_agrees_with_independent_computations(tiny, official_items, fmt):
    """Every measure against a computation by hand, in each data format (prompts written from the format's
    description, conftest.prompt_by_hand)."""
    from dataclasses import replace

    from conftest import prompt_by_hand

    model, tok = tiny
    model = CoconutModel(model.base, replace(model.config, data_format=fmt))
    items = official_items[:5]
    a = analyze(model, tok, items, k_max=2, batch_size=3, progress=False)
    graphs = [ProsQAGraph.from_item(it) for it in items]
    assert a.k_max == 2 and a.n == 5 and a.values.shape == (5, 2, max(it.n_nodes for it in items))
    # Values: node b's probability as the next name, from a plain forward of the forced prompt (+ "Every").
    lead = [tok.convert_tokens_to_ids("Every")] if fmt == "sentences" else []
    for b in (0, 3):
        prompt = prompt_by_hand(items[b], tok, fmt, 2, model.config.special) + lead
        with torch.no_grad():
            probs = model(torch.tensor([prompt])).logits[0, -1].softmax(-1)
        want = probs[torch.tensor(name_tokens(items[b], tok))].numpy()
        np.testing.assert_allclose(a.values[b, 1, : items[b].n_nodes], want, rtol=1e-4, atol=1e-8)
        # Frontier mass and top-1: the sum and the largest of the frontier's values.
        f = graphs[b].frontier(2)
        assert a.frontier_mass[b, 1] == pytest.approx(want[f].sum(), rel=1e-4)
        assert a.parallelism[2].cumulative[b, 0] == pytest.approx(want[f].max(), rel=1e-4)
    # Inner products: the model's own thought against the input embedding of each name, by group.
    gen = model.generate([prompt_by_hand(items[1], tok, fmt, 2, model.config.special)])
    emb = model.base.get_input_embeddings().weight.detach()
    ips = (gen.thoughts[0, 0] @ emb[torch.tensor(name_tokens(items[1], tok))].T).numpy()
    groups = node_groups(graphs[1], 1)
    for j, g in enumerate(GROUPS):
        if (groups == j).any():
            assert a.inner_product.per_item[1, 0, j] == pytest.approx(ips[groups == j].mean(), rel=1e-4, abs=1e-5)
    # Continuations and accuracy at each forced k: exactly what evaluate generates.
    assert a.accuracy == evaluate(model, tok, items, progress=False).accuracy
    for k in (0, 2):
        ev = evaluate(model, tok, items, k=k, progress=False)
        assert a.accuracy_by_k[k] == ev.accuracy
        assert [row[k].text for row in a.verbalised] == [r.text for r in ev.items]
        assert [row[k].correct for row in a.verbalised] == [r.correct for r in ev.items]
    # Attention by edge group at thought 1, computed by hand: an eager forward of the question and
    # <|start-latent|> (the position emitting thought 1), heads averaged, summed over each fact's tokens
    # (the facts are the question's sentences, found word by word), averaged over the edges that leave the
    # root (group "optimal" at step 0) and over all others ("unreachable").
    sp = model.config.special
    before = model.base.config._attn_implementation
    model.base.set_attn_implementation("eager")
    try:
        for b in (0, 2):
            it = items[b]
            ids = prompt_by_hand(it, tok, fmt, 0, sp)[:-1]  # the question, then <|start-latent|>
            with torch.no_grad():
                att = model.base(torch.tensor([ids]), output_attentions=True).attentions  # per layer [1, h, q, k]
            sentences = [s.strip() for s in it.question.replace(".", ".|").replace("?", "?|").split("|") if s.strip()]
            start, per_edge = 0, {}
            for sentence in sentences[:-1]:
                *head, parent, _is, _a, child = sentence.rstrip(".").split()
                # a fact's tokens: its sentence, or "parent child |" in the compact formats
                n = len(tok.encode(sentence, add_special_tokens=False)) if fmt == "sentences" else 3
                per_edge[(it.index(parent), it.index(child))] = [float(l[0, :, -1, start : start + n].mean(0).sum())
                                                                 for l in att]
                start += n
            leaves_root = [e for e in per_edge if e[0] == it.root]
            for j, group in ((0, leaves_root), (3, [e for e in per_edge if e[0] != it.root])):
                want = np.mean([per_edge[e] for e in group], axis=0)  # [layers]
                np.testing.assert_allclose(a.attention.per_item[b, 0, :, j], want, rtol=1e-4, atol=1e-6)
            assert np.isnan(a.attention.per_item[b, 0, :, 1:3]).all()  # no frontier or reachable edge at step 0
    finally:
        model.base.set_attn_implementation(before)
    rep = a.report()
    assert set(rep["inner_product"]["1"]) == set(GROUPS)
    assert set(rep["parallelism"]["2"]) == {"top1", "top2", "top3"}
    for k in ("0", "1", "2"):
        assert set(rep["categories"][k]) == set(CATEGORIES) and sum(rep["categories"][k].values()) == 5
    node = rep["items"][0]["nodes"][items[0].name(items[0].root)]
    assert node["depth"] == 0 and node["group"]["1"] == "reachable"


def test_a_cot_control_is_read_after_k_gold_steps(official_items, word_tokenizer):
    tok = word_tokenizer
    sp = special_tokens(tok)
    model = CoconutModel(tiny_base("gpt2", len(tok), sp.eos_id, seed=1), CoconutConfig.from_special(sp, mode="cot"))
    items = [it for it in official_items if len(it.steps) == 3][:2] + [next(it for it in official_items
                                                                            if len(it.steps) == 4)]
    trace = capture_batch(model, tok, items, k=4, names=[])
    for b, it in enumerate(items):
        t = tokenize_item(it, tok)
        ends = [len(t.question) + sum(map(len, t.steps[:j])) - 1 for j in range(1, len(t.steps) + 1)]
        assert trace.positions[b, :4].tolist() == (ends + [ends[-1]] * 4)[:4]
        ids = torch.tensor([list(t.question) + [x for s in t.steps[:4] for x in s]])
        with torch.no_grad():
            hidden = model.base.base_model(input_ids=ids).last_hidden_state[0]
        torch.testing.assert_close(trace.thoughts[b], hidden[trace.positions[b, :4]], rtol=1e-4, atol=1e-5)
    a = analyze(model, tok, items, k_max=4, progress=False)
    # Step 4 exists only for the item with 4 steps: the others are nan there and left out of the means.
    assert a.step_valid[:, 3].tolist() == [False, False, True]
    assert np.isnan(a.values[:2, 3]).all() and np.isfinite(a.values[2, 3, : items[2].n_nodes]).all()
    assert len(a.parallelism[4].cumulative) == 1 and sum(a.categories()[4].values()) == 1


@pytest.fixture(scope="module")
def shipped():
    from probe.model.checkpoint import default_checkpoint

    return default_checkpoint()


def test_probe_analyze_writes_the_report_and_figures_with_a_control(shipped, official_path, official_items, tmp_path,
                                                                   tmp_path_factory):
    out = tmp_path / "an"
    control = shipped.parent / "prosqa-pause"
    r = runner.invoke(app, ["analyze", "--data", str(official_path), "--limit", "6", "--k-max", "2",
                            "--control", str(control), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "frontier measures by thought k (model | control)" in r.output
    alone = runner.invoke(app, ["analyze", "--data", str(official_path), "--limit", "2", "--k-max", "1",
                                "--out", str(tmp_path_factory.mktemp("alone") / "an")])
    assert alone.exit_code == 0 and "frontier measures by thought k" in alone.output and "control" not in alone.output
    rep = json.loads((out / "report.json").read_text())
    assert check_report(rep, "analyze", "report.json") is rep  # what probe findings reads of it is there
    from probe.model.checkpoint import load_checkpoint

    items = official_items[:6]
    for rpt, ckpt in ((rep, shipped), (rep["control"], control)):
        model, tok = load_checkpoint(ckpt)
        assert rpt["n"] == 6 and rpt["accuracy"] == pytest.approx(evaluate(model, tok, items, progress=False).accuracy)
        assert set(rpt["inner_product"]) == {"1", "2"} and set(rpt["inner_product"]["1"]) == set(GROUPS)
        assert set(rpt["parallelism"]["1"]) == {"top1", "top2", "top3"}
        p = rpt["parallelism"]["2"]
        assert p["top1"] <= p["top2"] <= p["top3"] <= 1 + 1e-6
        assert set(rpt["frontier_value_mass"]) == {"1", "2"}
        assert set(rpt["categories"]) == {"0", "1", "2"} and sum(rpt["categories"]["2"].values()) == 6
        assert len(rpt["items"]) == 6 and set(rpt["items"][0]["verbalised"]) == {"0", "1", "2"}
    assert rep["mode"] == "coconut" and rep["control"]["mode"] == "pause_as_thought"
    assert rep["data"] == str(official_path)  # named, for probe findings
    figures = ("values_by_group", "frontier_mass", "value_by_height", "parallelism", "categories", "verbalised",
               "inner_product", "attention", "attention_gap", "superposition")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["report.json", "summary.md", "plotly.min.js"] + [f"{n}.html" for n in figures])
    # one plotly.js for the folder, which every page loads
    page = (out / "inner_product.html").read_text()
    assert '<script charset="utf-8" src="plotly.min.js"></script>' in page and len(page) < 500_000
    assert (out / "plotly.min.js").stat().st_size > 1_000_000
    r1 = f"| 1 | {rep['frontier_value_mass']['1']:.3f} / {rep['control']['frontier_value_mass']['1']:.3f} |"
    assert r1 in (out / "summary.md").read_text()
    # The same directory again is refused; a broken data file is named; nothing half-written is left.
    r = runner.invoke(app, ["analyze", "--data", str(official_path), "--limit", "2", "--out", str(out)])
    assert r.exit_code == 2 and "already exists" in r.output
    bad = tmp_path / "bad.json"
    bad.write_text('[{"question": 1}]')
    r = runner.invoke(app, ["analyze", "--data", str(bad), "--out", str(tmp_path / "an2")])
    assert r.exit_code == 2 and "bad.json" in r.output
    r = runner.invoke(app, ["analyze", "--data", str(official_path), "--limit", "2", "--control",
                            str(tmp_path / "nope"), "--out", str(tmp_path / "an3")])
    assert r.exit_code == 2 and "nope" in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["an", "bad.json"]


def test_the_card_section_is_replaced_not_repeated():
    from probe.release.card import replace_card_section

    card = "# m\n\nintro\n\n## Accuracy\n\n| a |\n"
    once = replace_card_section(card, "## Latent search\n\nold\n")
    assert once == card + "\n## Latent search\n\nold\n"
    twice = replace_card_section(once, "## Latent search\n\nnew\n")
    assert twice == card + "\n## Latent search\n\nnew\n"
    middle = "# m\n\n## Latent search\n\nold\n\n## Training\n\nt\n"
    assert replace_card_section(middle, "## Latent search\n\nnew\n") == \
        "# m\n\n## Latent search\n\nnew\n\n## Training\n\nt\n"


def test_emitted_nodes_name_the_items_node_or_none():
    from probe.readouts.values import emitted_nodes

    logits = torch.zeros(2, 2, 10)
    logits[0, 0, 4] = logits[0, 1, 9] = logits[1, 0, 2] = logits[1, 1, 5] = 1.0
    node, token = emitted_nodes(logits, [[7, 4, 2], [2, 5]])
    assert token.tolist() == [[4, 9], [2, 5]]
    assert node.tolist() == [[1, -1], [0, 1]]  # token 9 names no node of item 0


def test_a_model_trained_to_emit_nodes_is_read_at_its_thoughts(tiny, official_items):
    """supervision optimal: values, emitted nodes and the superposition decomposition read thought k itself, each
    checked against a plain forward of a prompt written by hand and scipy's nnls on the model's own thoughts."""
    from dataclasses import replace

    from scipy.optimize import nnls

    from conftest import prompt_by_hand
    from probe.readouts.values import emitted_nodes

    model, tok = tiny
    model = CoconutModel(model.base, replace(model.config, data_format="graph", supervision="optimal"))
    items = official_items[:4]
    a = analyze(model, tok, items, k_max=2, batch_size=3, progress=False)
    assert a.readout == "emitted"
    readout = model.base.get_output_embeddings().weight.detach()
    for b in (0, 3):
        it = items[b]
        prompt = prompt_by_hand(it, tok, "graph", 2, model.config.special)
        q = prompt.index(model.config.special.start_id)
        ids = name_tokens(it, tok, "graph")
        with torch.no_grad():
            logits = model(torch.tensor([prompt])).logits[0, q : q + 2]  # the positions emitting thoughts 1, 2
            thoughts = model.generate([prompt]).thoughts[0, :2]
        np.testing.assert_allclose(a.values[b, :, : it.n_nodes], logits.softmax(-1)[:, ids].numpy(), rtol=1e-4,
                                   atol=1e-8)
        node, token = emitted_nodes(logits[None], [ids])
        assert a.emitted_node[b].tolist() == node[0].tolist() and a.emitted_token[b].tolist() == token[0].tolist()
        for j in range(2):
            coef, res = nnls(readout[ids].double().numpy().T, thoughts[j].double().numpy())
            np.testing.assert_allclose(a.decomposition.coef[b, j, : it.n_nodes], coef, rtol=1e-3, atol=1e-5)
            t2 = float(thoughts[j].double() @ thoughts[j].double())
            assert a.decomposition.r2[b, j] == pytest.approx(1 - res ** 2 / t2, abs=1e-4)
    rep = a.report()
    assert rep["readout"] == "emitted" and set(rep["superposition"]["1"]["share"]) == set(GROUPS)
    assert sum(rep["emitted_node"]["2"].values()) == 4
    assert set(rep["attention_frontier_gap"]["1"]) == {"0", "1"}
    assert rep["items"][0]["emitted"].keys() == {"1", "2"}
    # The figures put each number where it belongs: the decomposition's shares and R^2, the gap per layer, and the
    # node each thought emits.
    from probe.viz.figures import attention_gap_figure, named_nodes, superposition_figure

    fig = superposition_figure(a)
    bars = {t.name: t.y for t in fig.data if t.type == "bar"}
    np.testing.assert_allclose(bars["share on optimal"], np.nanmean(a.decomposition.share[:, :, 0], axis=0))
    r2 = next(t for t in fig.data if t.name == "R² of the fit")
    np.testing.assert_allclose(np.array(r2.y, dtype=float), np.nanmean(a.decomposition.r2, axis=0))
    gap = attention_gap_figure(a)
    np.testing.assert_allclose(gap.data[1].y, a.attention.gap_mean[:, 1])
    assert named_nodes(a) == {k: {**c, "none": 0} for k, c in a.emitted_groups().items()}


def test_the_search_summary_is_the_mean_of_each_measure_by_thought(tiny, official_items):
    """Each figure of search_summary from an independent path: node values from values_by_k (a forward of its own),
    the decomposition from superposition on generate's thoughts, inner products by hand."""
    from dataclasses import replace

    from conftest import prompt_by_hand
    from probe.analyses.analyze import search_summary
    from probe.analyses.superposition import superposition
    from probe.readouts.values import values_by_k

    model, tok = tiny
    model = CoconutModel(model.base, replace(model.config, data_format="graph", supervision="optimal"))
    items = official_items[:4]
    graphs = [ProsQAGraph.from_item(it) for it in items]
    summary = search_summary(model, tok, items, k_max=2, batch_size=3)
    values = values_by_k(model, tok, items, 2, progress=False)
    prompts = [prompt_by_hand(it, tok, "graph", 2, model.config.special) for it in items]
    thoughts = torch.cat([model.generate([p]).thoughts[:, :2] for p in prompts])
    names = [name_tokens(it, tok, "graph") for it in items]
    share = superposition(thoughts, model.base.get_output_embeddings().weight, names, graphs).frontier_share
    emb = model.base.get_input_embeddings().weight.detach()
    for k in (1, 2):
        mass = [values[b, k - 1, g.frontier(k)].sum() for b, g in enumerate(graphs)]
        best = [values[b, k - 1, g.frontier(k)].max() for b, g in enumerate(graphs)]
        optimal = [values[b, k - 1, g.optimal(k)].sum() for b, g in enumerate(graphs)]
        assert summary.frontier_mass[k] == pytest.approx(np.mean(mass), rel=1e-4)
        assert summary.parallelism[k]["top1"] == pytest.approx(np.mean(best), rel=1e-4)
        assert summary.optimal_mass[k] == pytest.approx(np.mean(optimal), rel=1e-4)
        assert summary.frontier_share[k] == pytest.approx(np.mean(share[:, k - 1]), rel=1e-3)
        per_item = []
        for b, g in enumerate(graphs):
            ips = (thoughts[b, k - 1] @ emb[names[b]].T).detach().numpy()
            groups = node_groups(g, k)
            if (groups == 0).any():
                per_item.append(ips[groups == 0].mean())
        assert summary.inner_product[k]["optimal"] == pytest.approx(np.mean(per_item), rel=1e-3)
    assert set(summary.attention_gap[2]) == {0, 1} and np.isfinite(summary.attention_gap[2][0])
    assert summary.as_dict()["parallelism"]["1"]["top1"] == pytest.approx(summary.parallelism[1]["top1"])
    cot = CoconutModel(model.base, replace(model.config, mode="no_thoughts"))
    with pytest.raises(ValueError, match="a no_thoughts model has no thoughts to summarise"):
        search_summary(cot, tok, items)


def test_the_emergence_figure_draws_each_logged_summary_against_its_step():
    from probe.viz.figures import emergence_figure

    def rec(step: int, mass: float) -> dict:
        return {"step": step, "search": {"frontier_mass": {"1": mass, "2": mass / 2}, "optimal_mass": {"1": 0.1},
                                         "frontier_share": {"1": 0.5}, "attention_gap": {"1": {"0": 0.3, "1": 0.7}}}}

    fig = emergence_figure({"run": [rec(10, 0.2), {"step": 15}, rec(20, 0.6)]}, ks=(1, 2))
    line = next(t for t in fig.data if t.name == "run k=1" and t.xaxis == "x")
    assert list(line.x) == [10, 20] and list(line.y) == [0.2, 0.6]
    k2 = next(t for t in fig.data if t.name == "run k=2" and t.xaxis == "x")
    assert list(k2.y) == [0.1, 0.3]
    gap = next(t for t in fig.data if t.name == "run k=1" and t.xaxis == "x4")
    assert list(gap.y) == [0.7, 0.7]  # the last layer
    shares = next(t for t in fig.data if t.name == "run k=2" and t.xaxis == "x3")
    assert list(shares.y) == [None, None]  # not logged for k = 2


def test_a_model_that_answers_at_once_has_nothing_to_analyze(tiny, official_items):
    from dataclasses import replace

    model, tok = tiny
    at_once = CoconutModel(model.base, replace(model.config, mode="no_thoughts", c_thought=0))
    with pytest.raises(ValueError, match="a no_thoughts model answers right after the question"):
        analyze(at_once, tok, official_items[:2], progress=False)
