"""Interventions on thoughts: edits built by hand, known answers on a tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probe.readouts.values import node_values
from probe.data.render import render_prompt, tokenize_item
from probe.analyses.interventions import InterventionError, ablation_edit, intervene, patch_edit, steer_edit
from probe.model.architecture import find_architecture
from probe.model.coconut import ThoughtEdit


def test_ablation_edits_by_hand():
    t = torch.arange(2 * 3 * 4, dtype=torch.float).reshape(2, 3, 4)
    z = ablation_edit(t, "zero", steps=[2])
    assert z.mask.tolist() == [[False, True, False]] * 2 and not z.replace.any()
    m = ablation_edit(t, "mean")
    torch.testing.assert_close(m.replace[0], (t[0] + t[1]) / 2)
    r = ablation_edit(t, "random", seed=3)
    torch.testing.assert_close(r.replace.norm(dim=-1), t.norm(dim=-1))
    assert (r.replace - t).abs().max() > 1  # a new direction, not the thought itself
    o = ablation_edit(t, "other")
    torch.testing.assert_close(o.replace, t[[1, 0]])  # with two items, each gets the other's
    with pytest.raises(InterventionError, match="unknown ablation 'noise'"):
        ablation_edit(t, "noise")
    with pytest.raises(InterventionError, match=r"thought\(s\) \[4\] out of range: there are 3 thoughts"):
        ablation_edit(t, "zero", steps=[4])
    ref = torch.randn(5, 3, 4)
    ref_valid = torch.ones(5, 3, dtype=torch.bool)
    ref_valid[4, 2] = False  # item 4 has no third thought: the mean there is over items 0..3
    m = ablation_edit(t, "mean", reference=ref, reference_valid=ref_valid)
    torch.testing.assert_close(m.replace[1, :2], ref[:, :2].mean(0))
    torch.testing.assert_close(m.replace[0, 2], ref[:4, 2].mean(0))
    o = ablation_edit(t, "other", reference=ref, seed=1)
    assert all(any(torch.equal(o.replace[b], ref[j]) for j in range(5)) for b in range(2))
    with pytest.raises(InterventionError, match=r"the reference has shape \[5, 2, 4\], expected \[m, 3, 4\]"):
        ablation_edit(t, "mean", reference=ref[:, :2])
    s = steer_edit(torch.ones(4), 2.5, step=3, n=2, k=3)
    assert s.add[:, 2].eq(2.5).all() and not s.add[:, :2].any()
    with pytest.raises(InterventionError, match="thought 0 out of range"):
        steer_edit(torch.ones(4), 1.0, step=0, n=2, k=3)


@pytest.fixture
def setup(tiny_model, word_tokenizer, official_items):
    items = official_items[:6]
    cfg = tiny_model.config
    prompts = [render_prompt(tokenize_item(it, word_tokenizer), 3, cfg.stage_spec, cfg.special) for it in items]
    thoughts = tiny_model.generate(prompts, max_new_tokens=1).thoughts[:, :3]
    return tiny_model, word_tokenizer, items, thoughts


def test_patching_a_thought_between_two_copies_of_an_item_changes_nothing(setup):
    model, tok, items, thoughts = setup
    twins = [items[2], items[2]]
    res = intervene(model, tok, twins, patch_edit(thoughts[[2, 2]], steps=[1, 2]), k=3, values_at=3)
    assert res.predictions == res.baseline_predictions and res.changed == 0.0
    np.testing.assert_allclose(res.frontier_mass, res.baseline_frontier_mass, rtol=1e-5)


def test_an_edit_moves_values_exactly_as_a_manual_run_with_that_thought(setup):
    model, tok, items, thoughts = setup
    # Item 0 gets item 1's first thought; its values after 2 thoughts equal a run where thought 1 is set by hand.
    edit = patch_edit(thoughts[[1, 0]], steps=[1])
    got = node_values(model, tok, items[:2], 2, progress=False, edit=edit)
    every = tok.convert_tokens_to_ids("Every")
    cfg = model.config
    prompt = render_prompt(tokenize_item(items[0], tok), 2, cfg.stage_spec, cfg.special) + [every]
    manual = ThoughtEdit(torch.tensor([[True, False]]), thoughts[1:2, :2])
    with torch.no_grad():
        probs = model(torch.tensor([prompt]), edit=manual).logits[0, -1].softmax(-1)
    want = probs[torch.tensor(tok.convert_tokens_to_ids(list(items[0].idx_to_symbol)))]
    np.testing.assert_allclose(got[0, : items[0].n_nodes].numpy(), want.numpy(), rtol=1e-4, atol=1e-8)
    unedited = node_values(model, tok, items[:2], 2, progress=False)
    assert (got[0] - unedited[0]).abs().nansum() > 1e-6  # the patch moved item 0 (a random model: a little)


def test_steering_with_alpha_zero_is_the_baseline_and_ablation_reports(setup):
    model, tok, items, thoughts = setup
    res = intervene(model, tok, items, steer_edit(torch.randn(model.d_model), 0.0, 1, n=len(items), k=3), k=3)
    assert res.predictions == res.baseline_predictions and res.accuracy == res.baseline_accuracy
    big = intervene(model, tok, items, ablation_edit(thoughts, "zero"), k=3, name="zero all", values_at=1)
    d = big.as_dict()
    assert d["name"] == "zero all" and d["accuracy_change"] == big.accuracy - big.baseline_accuracy
    assert np.abs(big.frontier_mass - big.baseline_frontier_mass).max() > 1e-6  # thought 1 is fed back before them
    # Values after two thoughts are read before thought 3 exists: ablating it cannot move them.
    late = intervene(model, tok, items, ablation_edit(thoughts, "zero", steps=[3]), k=3, values_at=2)
    np.testing.assert_allclose(late.frontier_mass, late.baseline_frontier_mass, rtol=1e-6)


def _layer_trace(model, tok, items, k, layer):
    from probe.capture.trace import capture_batch

    name = f"blocks.{layer}.hook_resid_post"
    return capture_batch(model, tok, items, k=k, names=[name, "ln_final.hook_normalized"])


def test_a_layer_edit_that_writes_back_the_captured_residual_is_the_identity(setup):
    model, tok, items, _ = setup
    tr = _layer_trace(model, tok, items, 3, 0)
    resid = tr["blocks.0.hook_resid_post"][:, :3]
    same = ThoughtEdit(torch.ones(len(items), 3, dtype=torch.bool), resid, layer=0)
    res = intervene(model, tok, items, same, k=3, values_at=2)
    assert res.predictions == res.baseline_predictions
    np.testing.assert_allclose(res.frontier_mass, res.baseline_frontier_mass, rtol=1e-4)
    zero = ThoughtEdit(torch.ones(len(items), 3, dtype=torch.bool), torch.zeros_like(resid), layer=0)
    moved = node_values(model, tok, items, 2, progress=False, edit=zero)
    assert (moved - node_values(model, tok, items, 2, progress=False)).abs().nansum() > 1e-4


def test_patching_the_last_layer_residual_moves_the_thought_exactly(setup):
    model, tok, items, _ = setup
    L = find_architecture(model.base).n_layers - 1
    tr = _layer_trace(model, tok, items[:2], 3, L)
    resid = tr[f"blocks.{L}.hook_resid_post"][:, :3]
    # Item 0 gets item 1's last-layer residual at the position emitting thought 2: its thought 2 is
    # then the final norm of that residual, which is item 1's own thought 2.
    edit = ThoughtEdit(torch.tensor([[False, True, False], [False, False, False]]), resid[[1, 0]], layer=-1)
    cfg = model.config
    prompts = [render_prompt(tokenize_item(it, tok), 3, cfg.stage_spec, cfg.special) for it in items[:2]]
    got = model.generate(prompts, max_new_tokens=1, edit=edit).thoughts
    torch.testing.assert_close(got[0, 1], tr.thoughts[1, 1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got[0, 0], tr.thoughts[0, 0], rtol=1e-4, atol=1e-5)  # before the edit: untouched
    torch.testing.assert_close(got[1], tr.thoughts[1], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="layer 9 is out of range"):
        model.generate(prompts, max_new_tokens=1, edit=ThoughtEdit(add=torch.zeros(2, 3, model.d_model), layer=9))


def test_another_items_thought_is_never_a_copy_of_its_own():
    """Items a, a, b, b, c, c (three items twice): a cyclic shift by one would give each first copy its twin's
    thought, an ablation that changes nothing. With the content groups, every item gets another item's thought."""
    t = torch.arange(6, dtype=torch.float).repeat_interleave(2).reshape(6, 1, 2) // 2  # row b holds item b // 2
    groups = [0, 0, 1, 1, 2, 2]
    for seed in range(6):  # every shift 1..5 comes up
        o = ablation_edit(t, "other", seed=seed, groups=groups)
        assert all(o.replace[b, 0, 0] != b // 2 for b in range(6)), seed
        plain = ablation_edit(t, "other", seed=seed)
        torch.testing.assert_close(ablation_edit(t, "other", seed=seed, groups=range(6)).replace, plain.replace)
    with pytest.raises(InterventionError, match="at least two distinct items"):
        ablation_edit(t[:2], "other", groups=[0, 0])
