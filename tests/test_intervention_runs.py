"""The data-set runs of probe/analyses/interventions.py: sites, ablations, counterfactual patching, steering, the CLI.

Known answers come from two places: edits that must be the identity (mean or another item's
thought among identical items, a pause model's pause inputs, alpha = 0) and the shipped default
model, which reads the question's person off its first thought (issue 4's logit lens), so a
patch of every thought makes a counterfactual item answer about the other item's person.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from probe.capture.trace import capture_batch
from probe.cli import app
from probe.data.graph import ProsQAGraph
from probe.data.layout import name_pieces
from probe.model.evaluate import evaluate
from probe.analyses.findings import check_report
from probe.analyses.interventions import (InterventionError, ablation_edit, ablation_runs, accuracy_without_thoughts, own_chains,
                                 patch_runs, site, steer_direction, steer_runs, steer_target, steering_directions)
from probe.model.checkpoint import load_checkpoint
from probe.model.coconut import CoconutConfig, CoconutModel, ThoughtEdit
from probe.model.tokenizer import special_tokens
from tests.conftest import tiny_base

CKPTS = Path(__file__).resolve().parents[1] / "checkpoints"


@pytest.fixture(scope="module")
def shipped():
    return {name: load_checkpoint(CKPTS / name) for name in ("prosqa-coconut", "prosqa-pause", "prosqa-cot")}


def test_steer_target_is_the_first_parent_of_the_wrong_option(official_items):
    it = official_items[0]  # 'Every rorpus is a scrompus.' is the only fact naming scrompus as a child
    assert it.name(it.neg_target) == "scrompus" and it.name(steer_target(it)) == "rorpus"


def test_ablating_identical_items_with_their_mean_is_the_identity(tiny_model, word_tokenizer, official_items):
    # (The 'other' ablation refuses copies of one item: another item's thought would be the item's own;
    # test_interventions.test_another_items_thought_is_never_a_copy_of_its_own.)
    items = [official_items[3]] * 4
    s = site(tiny_model, word_tokenizer, items, k=3)
    runs = ablation_runs(tiny_model, word_tokenizer, items, k=3, s=s, kinds=("mean", "zero"), progress=False)
    assert [r.name for r in runs] == ["mean all", "zero all"] + [
        f"{kind} {j}" for j in (1, 2, 3) for kind in ("mean", "zero")]
    for r in runs:
        if not r.name.startswith("zero"):
            assert r.changed == 0.0, r.name
            np.testing.assert_allclose(r.frontier_mass, r.baseline_frontier_mass, rtol=1e-4, atol=1e-9)
    zero = next(r for r in runs if r.name == "zero all")
    assert np.abs(zero.frontier_mass - zero.baseline_frontier_mass).max() > 1e-7
    assert zero.values_at == 1 and next(r for r in runs if r.name == "zero 2").values_at == 2


def test_an_emitted_readout_reads_an_ablated_thought_where_the_next_thought_consumes_it(tiny_model, word_tokenizer,
                                                                                        official_items):
    """A model whose thoughts emit nodes (supervision optimal) would read a replaced thought as the replacement
    itself; the ablation of thought j is read at thought j + 1, the mass there equals a run by hand, and no
    read is made where none consumes the edit (thought k, or all thoughts replaced)."""
    from dataclasses import replace

    from probe.analyses.frontier import frontier_mass
    from probe.readouts.values import node_values, read_after

    language = tiny_model.config
    assert [read_after(language, j, 3) for j in (1, 3, None)] == [1, 3, 1]
    assert read_after(language, None, 3, all_at=3) == 3
    tiny_model.config = replace(tiny_model.config, data_format="graph", supervision="optimal")
    assert [read_after(tiny_model.config, j, 3) for j in (1, 2, 3, None)] == [2, 3, None, None]
    # the last layer's residual sets the thought too; an earlier layer's changes how thought j is computed
    assert [read_after(tiny_model.config, j, 3, layer=-1, n_layers=2) for j in (2, 3)] == [3, None]
    assert [read_after(tiny_model.config, j, 3, layer=0, n_layers=2) for j in (2, 3, None)] == [2, 3, 1]
    items = official_items[:4]
    s = site(tiny_model, word_tokenizer, items, k=3)
    runs = {r.name: r for r in ablation_runs(tiny_model, word_tokenizer, items, k=3, s=s, kinds=("zero",),
                                               progress=False)}
    assert runs["zero all"].values_at is None and runs["zero 3"].values_at is None
    assert runs["zero 1"].values_at == 2 and runs["zero 2"].values_at == 3
    edit = ablation_edit(s.source, "zero", [1])
    by_hand = node_values(tiny_model, word_tokenizer, items, 2, progress=False, edit=edit).numpy()
    graphs = [ProsQAGraph.from_item(it) for it in items]
    np.testing.assert_allclose(runs["zero 1"].frontier_mass, frontier_mass(by_hand, graphs, 2), rtol=1e-5)
    assert np.abs(runs["zero 1"].frontier_mass - runs["zero 1"].baseline_frontier_mass).max() > 1e-7


def test_the_thought_site_holds_the_fed_back_thoughts_and_a_layer_site_the_residual(tiny_model, word_tokenizer,
                                                                                   official_items):
    items = official_items[:3]
    tr = capture_batch(tiny_model, word_tokenizer, items, k=2, names=["blocks.1.hook_resid_post"])
    torch.testing.assert_close(site(tiny_model, word_tokenizer, items, k=2).source, tr.thoughts)
    torch.testing.assert_close(site(tiny_model, word_tokenizer, items, k=2, layer=-1).source,
                               tr["blocks.1.hook_resid_post"][:, :2])
    with pytest.raises(InterventionError, match="layer 5 is out of range for a model with 2 layers"):
        site(tiny_model, word_tokenizer, items, k=2, layer=5)


def test_a_pause_models_thought_site_is_its_pause_input_so_mean_and_other_change_nothing(shipped, official_items):
    model, tok = shipped["prosqa-pause"]
    items = official_items[:12]
    s = site(model, tok, items, k=3)
    pause = model.embed(torch.tensor([model.config.latent_id]))[0].detach()
    assert torch.equal(s.source, pause.expand(12, 3, -1))
    runs = {r.name: r for r in ablation_runs(model, tok, items, k=3, s=s, kinds=("mean", "other"), progress=False)}
    assert len(runs) == 8 and all(r.changed == 0.0 for r in runs.values())
    patched = patch_runs(model, tok, items, k=3, progress=False)
    assert all(p.changed == 0.0 for p in patched)  # every item's pause input is the same vector


def test_patching_measures_what_a_patch_by_hand_gives(shipped, official_items):
    """A's thoughts captured, written into B's by a hand-built ThoughtEdit (all at once, and thought 1 alone),
    B answered: how often B's answer names A's person, follows A's concept, is right, or changed, equal what
    patch_runs reports. A property of the measurement, whatever the model's thoughts hold."""
    from probe.capture.trace import capture
    from probe.data.counterfactual import counterfactual_pairs
    from probe.analyses.interventions import answer_concept
    from probe.model.coconut import ThoughtEdit

    model, tok = shipped["prosqa-coconut"]
    items = official_items[:24]
    runs = {r.steps: r for r in patch_runs(model, tok, items, k=6, progress=False)}
    index, b_items = counterfactual_pairs(items)
    a_items = [items[i] for i in index]
    thoughts = capture(model, tok, a_items, k=6, names=[], progress=False).thoughts[:, :6]
    a_concepts = [answer_concept(r.prediction) for r in evaluate(model, tok, a_items, k=6, progress=False).items]
    base = [r.prediction for r in evaluate(model, tok, b_items, k=6, progress=False).items]
    for steps, slots in (("all", range(6)), ("1", [0])):
        mask = torch.zeros(len(b_items), 6, dtype=torch.bool)
        mask[:, list(slots)] = True
        res = evaluate(model, tok, b_items, k=6, edit=ThoughtEdit(mask, thoughts), progress=False)
        preds = [r.prediction for r in res.items]
        run = runs[steps]
        assert run.n == len(b_items) == 24
        assert run.names_a_root == pytest.approx(np.mean([p.split()[:1] == [it.name(it.root)]
                                                          for p, it in zip(preds, a_items)]))
        assert run.follows_a == pytest.approx(np.mean([answer_concept(p) == c for p, c in zip(preds, a_concepts)]))
        assert run.accuracy == pytest.approx(res.accuracy)
        assert run.changed == pytest.approx(np.mean([p != q for p, q in zip(preds, base)]))
    assert runs["all"].changed > 0  # the patch reaches the answers: the comparison is not 0 against 0


def test_own_chains_reproduce_the_cot_models_answers_and_end_steps_at_newlines(shipped, official_items):
    model, tok = shipped["prosqa-cot"]
    items = official_items[:16]
    prompts, pos, valid = own_chains(model, tok, items, k=6)
    newline = tok.encode("\n", add_special_tokens=False)[0]
    for p, row, ok in zip(prompts, pos, valid):
        assert ok.any() and all(p[int(c)] == newline for c in row[ok])
    free = evaluate(model, tok, items, k=0, progress=False)
    forced = evaluate(model, tok, items, prompts=prompts, progress=False)
    assert [r.prediction for r in forced.items] == [r.prediction for r in free.items]
    with pytest.raises(InterventionError, match="a cot model feeds no thought back"):
        site(model, tok, items, k=6)
    acc = accuracy_without_thoughts(model, tok, items, k=6)
    assert 0 < free.accuracy < 1  # the CoT control answers some of these items right: the comparison can fail
    assert set(acc) == {0, 6} and acc[6] == free.accuracy


def test_a_layer_edit_at_given_positions_moves_logits_from_that_position_on(word_tokenizer, official_items):
    sp = special_tokens(word_tokenizer)
    model = CoconutModel(tiny_base("gpt2", len(word_tokenizer), sp.eos_id), CoconutConfig.from_special(sp, mode="cot"))
    ids = word_tokenizer.encode(official_items[0].question)
    x = torch.tensor([[sp.pad_id] * 3 + ids])  # left padding: positions count within the prompt
    mask = (torch.arange(x.shape[1]) >= 3).long()[None]
    edit = ThoughtEdit(torch.tensor([[True]]), torch.zeros(1, 1, model.d_model), layer=0, positions=torch.tensor([[10]]))
    with torch.no_grad():
        a, b = model(x, mask).logits, model(x, mask, edit=edit).logits
    torch.testing.assert_close(a[0, : 3 + 10], b[0, : 3 + 10])
    assert (a[0, 3 + 10] - b[0, 3 + 10]).abs().max() > 1e-3 and (a[0, -1] - b[0, -1]).abs().max() > 1e-4


def test_steering_directions_and_the_dose_response(shipped, official_items):
    model, tok = shipped["prosqa-coconut"]
    items = official_items[:20]
    s = site(model, tok, items, k=6, layer=-1)
    dirs, has = steering_directions(model, tok, items, s=s, step=1)
    assert set(dirs) == {"probe", "unembed", "random"} and has.any()
    for d in dirs.values():
        torch.testing.assert_close(d[has].norm(dim=-1), torch.ones(int(has.sum())))
    v = steer_target(items[0])
    row = model.base.get_output_embeddings().weight[name_pieces(items[0], tok, "edges")[v][0]].detach()
    torch.testing.assert_close(dirs["unembed"][0], row / row.norm())
    one = steer_direction(model, tok, items[0], v, kind="unembed")  # one item's direction (the explorer's)
    torch.testing.assert_close(one, dirs["unembed"][0])
    assert abs(float(steer_direction(model, tok, items[0], v, kind="random", seed=4).norm()) - 1) < 1e-6
    with pytest.raises(InterventionError, match="a probe direction needs a saved frontier probe"):
        steer_direction(model, tok, items[0], v, kind="probe")
    with pytest.raises(InterventionError, match="node 99 is out of range: the item has 18 nodes"):
        steer_direction(model, tok, items[0], 99, kind="unembed")
    points = steer_runs(model, tok, items, k=6, step=1, alphas=(0.0, 8.0), progress=False)
    assert [(p.direction, p.alpha) for p in points] == [(d, a) for d in ("probe", "unembed", "random") for a in (0, 8)]
    zero = [p for p in points if p.alpha == 0]
    assert all(p.changed == 0.0 and p.value == zero[0].value for p in zero)
    assert max(p.changed for p in points if p.alpha == 8) > 0.1
    with pytest.raises(InterventionError, match="thought 7 out of range"):
        steer_runs(model, tok, items, k=6, step=7, alphas=(0.0,), progress=False)


def test_probe_intervene_end_to_end_and_its_errors(tmp_path, official_path):
    runner = CliRunner()
    out = tmp_path / "iv"
    args = ["intervene", "--data", str(official_path), "--limit", "6", "--k", "2", "--sites", "thought,-1",
            "--ablations", "zero",
            "--alphas", "0,1", "--control", str(CKPTS / "prosqa-pause"), "--control", str(CKPTS / "prosqa-cot")]
    res = runner.invoke(app, [*args, "--out", str(out)])
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "report.json").read_text())
    assert check_report(rep, "intervene", "report.json") is rep  # what probe findings reads of it is there
    main, pause, cot = rep["reports"]
    assert main["mode"] == "coconut" and pause["mode"] == "pause_as_thought" and cot["mode"] == "cot"
    assert set(main["ablations"]) == {"thought", "layer -1"} and set(cot["ablations"]) == {"layer -1"}
    assert cot["skipped"] == ["thought site: a cot model feeds no thought back"]
    assert [r["name"] for r in main["ablations"]["thought"]] == ["zero all", "zero 1", "zero 2"]
    assert main["accuracy_by_k"]["2"] == main["ablations"]["thought"][0]["baseline_accuracy"]
    assert set(cot["accuracy_by_k"]) == {"0", "2"} and cot["k"] == pause["k"] == 2
    assert sorted(p.name for p in out.iterdir()) == ["ablations.html", "accuracy_by_k.html", "patching.html", "plotly.min.js",
                                                     "report.json", "steering.html"]
    for bad, message in ((["--ablations", "noise"], "--ablations: unknown ['noise']"),
                         (["--sites", "first"], "--sites: expected an integer, got 'first'"),
                         (["--sites", "9"], "layer 9 is out of range")):
        res = runner.invoke(app, [*args, *bad, "--out", str(tmp_path / "bad")])
        assert res.exit_code != 0 and message in res.output, res.output
        assert not (tmp_path / "bad").exists()
    res = runner.invoke(app, [*args, "--out", str(out)])
    assert res.exit_code != 0 and "already exists" in res.output


def test_the_figures_put_each_number_where_it_belongs():
    from probe.viz.figures import INTERVENTION_FIGURES

    def rep(name, mode, shift):
        runs = [{"name": f"{kind} {col}", "accuracy_change": shift + i / 10} for i, (kind, col) in
                enumerate([("zero", "all"), ("mean", "all"), ("zero", "1"), ("mean", "1")])]
        patch = [{"steps": s, **{key: v, f"baseline_{key}": v / 2}} for s, v in (("all", 0.9), ("1", 0.8))
                 for key in ("names_a_root",)]
        for p in patch:
            p.update(follows_a=0.5, baseline_follows_a=0.5, accuracy=0.1, baseline_accuracy=0.5)
        points = [{"direction": d, "alpha": a, "value": a * m, "to_option": 0.5} for d, m in (("probe", 2), ("random", 1))
                  for a in (0.0, 1.0)]
        return {"checkpoint": f"checkpoints/{name}", "mode": mode, "accuracy_by_k": {"0": 0.3, "6": 0.5},
                "ablations": {"thought": runs}, "patching": {"thought": patch},
                "steering": {"step": 1, "layer": -1, "points": points}}

    reports = [rep("a", "coconut", 0.0), rep("b", "pause_as_thought", -0.3)]
    figs = {name: f(reports) for name, f in INTERVENTION_FIGURES.items()}
    heat = figs["ablations"].data[1]  # the second model's panel
    assert list(heat.y) == ["zero", "mean"] and list(heat.x) == ["all", "1"]
    np.testing.assert_allclose(heat.z, [[-0.3, -0.1], [-0.2, 0.0]])
    acc = figs["accuracy_by_k"].data[0]
    assert list(acc.x) == [0, 6] and list(acc.y) == [0.3, 0.5] and acc.name == "a (coconut)"
    bars = [t for t in figs["patching"].data if t.name == "answer names A's root"]
    assert [list(t.y) for t in bars] == [[0.9, 0.8]] * 2
    probe = [t for t in figs["steering"].data if t.legendgroup == "probe"]
    assert [list(t.y) for t in probe] == [[0.0, 2.0], [0.5, 0.5]] * 2


def test_run_interventions_runs_the_parts_it_is_asked_for(tiny_model, word_tokenizer, official_items, answering):
    from probe.analyses.interventions import run_interventions

    items = official_items[:4]
    rep = run_interventions(tiny_model, word_tokenizer, items, k=2, parts=["k"], progress=False)
    assert set(rep.accuracy_by_k) == {0, 1, 2} and not rep.ablations and not rep.patching and not rep.steering
    # the accuracies, on a model that answers some of the items right and some wrong
    model, tok = answering
    items = official_items[:12]
    rep = run_interventions(model, tok, items, k=3, parts=["k"], progress=False)
    for k in range(4):
        acc = evaluate(model, tok, items, k=k, progress=False).accuracy
        assert 0 < acc < 1 and rep.accuracy_by_k[k] == acc, (k, acc, rep.accuracy_by_k)
    with pytest.raises(InterventionError, match=r"unknown part\(s\) \['steering'\]"):
        run_interventions(tiny_model, word_tokenizer, items, k=2, parts=["steering"], progress=False)
    with pytest.raises(InterventionError, match="layer -3 is out of range for a model with 2 layers"):
        run_interventions(tiny_model, word_tokenizer, items, k=2, sites=(None, -3), progress=False)
    # copies of one item have no other item to give: refused before any run, as one item is
    with pytest.raises(InterventionError, match="3 items, all copies of one: the 'other' ablation"):
        run_interventions(tiny_model, word_tokenizer, [items[0]] * 3, k=2, kinds=("other",), parts=["ablate"],
                          progress=False)
    # a model that answers right after the question (no_thoughts) has its accuracy and nothing else to edit
    from dataclasses import replace

    at_once = CoconutModel(model.base, replace(model.config, mode="no_thoughts", c_thought=0))
    rep = run_interventions(at_once, tok, items, k=3, progress=False)
    assert rep.accuracy_by_k == {0: evaluate(at_once, tok, items, k=0, progress=False).accuracy}
    assert not rep.ablations and not rep.patching and not rep.steering and rep.k == 0
    assert rep.skipped == ["a no_thoughts model answers right after the question: nothing to ablate, patch or steer"]
