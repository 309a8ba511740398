"""Sparse autoencoders: planted atoms recovered, SAELens file layout, feature read-outs against scikit-learn."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sklearn.metrics import roc_auc_score

from conftest import hashed_as
from probe.analyses.frontier import GROUPS
from probe.readouts.sae import SAEError, SparseAutoencoder, auroc_table, feature_reports, thought_rows


def planted_dictionary(n=4000, d=24, n_atoms=32, active=3, seed=0):
    """Rows that are sparse positive mixtures of unit atoms: [n, d] and the atoms [n_atoms, d]."""
    g = torch.Generator().manual_seed(seed)
    atoms = torch.randn(n_atoms, d, generator=g)
    atoms /= atoms.norm(dim=1, keepdim=True)
    codes = torch.zeros(n, n_atoms)
    idx = torch.stack([torch.randperm(n_atoms, generator=g)[:active] for _ in range(n)])
    codes.scatter_(1, idx, 0.5 + torch.rand(n, active, generator=g))
    return codes @ atoms, atoms


def best_cosines(atoms: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    dec = W_dec / W_dec.norm(dim=1, keepdim=True)
    return (atoms @ dec.T).max(dim=1).values


def test_a_topk_sae_recovers_planted_atoms():
    X, atoms = planted_dictionary()
    sae = SparseAutoencoder(d_sae=64, k=3, epochs=60, lr=3e-3, progress=False).fit(X)
    cos = best_cosines(atoms, sae.W_dec_)
    assert float(cos.mean()) > 0.9, cos
    m = sae.metrics(X)
    assert m.fvu < 0.1 and m.l0 <= 3 and 0 <= m.dead_fraction < 1
    assert sae.score(X) == pytest.approx(1 - m.fvu)
    # An untrained dictionary of the same size does not: the test can fail.
    assert float(best_cosines(atoms, torch.randn(64, 24)).mean()) < 0.7


def test_relu_l1_variant_is_sparse_and_reconstructs():
    X, atoms = planted_dictionary(n=2000)
    sae = SparseAutoencoder(d_sae=64, activation="relu", l1_coeff=0.1, epochs=40, lr=3e-3, progress=False).fit(X)
    m = sae.metrics(X)
    assert m.fvu < 0.15 and m.l0 < 12 and float(best_cosines(atoms, sae.W_dec_).mean()) > 0.9


def test_files_follow_saelens_and_round_trip(tmp_path):
    X, _ = planted_dictionary(n=500)
    sae = SparseAutoencoder(d_sae=16, k=2, epochs=2, progress=False).fit(X, model=hashed_as("abc"))
    sae.save(tmp_path / "sae", hook_name="ln_final.hook_normalized", model_name="prosqa-coconut")
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and cfg["d_in"] == 24 and cfg["d_sae"] == 16 and cfg["k"] == 2
    assert cfg["metadata"]["hook_name"] == "ln_final.hook_normalized"
    major, *_ = cfg["metadata"]["sae_lens_version"].split(".")
    assert int(major) >= 6
    w = load_file(str(tmp_path / "sae" / "sae_weights.safetensors"))
    assert {k: list(v.shape) for k, v in w.items()} == {"W_enc": [24, 16], "W_dec": [16, 24], "b_enc": [16],
                                                        "b_dec": [24]}
    # SAELens's own encode, written out: topk of relu((x - b_dec) @ W_enc + b_enc); decode f @ W_dec + b_dec.
    pre = (X - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    top = pre.topk(2, dim=-1)
    want = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
    back = SparseAutoencoder.load(tmp_path / "sae", hashed_as("abc"))
    torch.testing.assert_close(back.encode(X), want)
    torch.testing.assert_close(back.decode(want), want @ w["W_dec"] + w["b_dec"])
    with pytest.raises(SAEError, match="another model"):
        SparseAutoencoder.load(tmp_path / "sae", hashed_as("xyz"))
    unhashed = json.loads((tmp_path / "sae" / "coconut_probe.json").read_text())
    del unhashed["model_hash"]
    (tmp_path / "sae" / "coconut_probe.json").write_text(json.dumps(unhashed))
    with pytest.raises(SAEError, match="records no model hash"):  # tied to nothing: not accepted silently
        SparseAutoencoder.load(tmp_path / "sae", hashed_as("abc"))
    SparseAutoencoder.load(tmp_path / "sae")  # without a model to check against (an SAE from SAELens itself)
    with pytest.raises(SAEError, match="d_in=5"):
        back.encode(torch.zeros(3, 5))
    with pytest.raises(SAEError, match="not an SAE directory"):
        SparseAutoencoder.load(tmp_path)
    (tmp_path / "sae" / "cfg.json").write_text(json.dumps({**cfg, "d_sae": 17}))
    with pytest.raises(SAEError, match=r"W_enc has shape \[24, 16\], cfg.json says \[24, 17\]"):
        SparseAutoencoder.load(tmp_path / "sae")
    with pytest.raises(SAEError, match="not fitted"):
        SparseAutoencoder().encode(X)
    with pytest.raises(SAEError, match="k must be in"):
        SparseAutoencoder(d_sae=4, k=9).fit(X)


def test_feature_read_outs_by_hand():
    rng = np.random.default_rng(0)
    acts = rng.random((60, 4)) * (rng.random((60, 4)) < 0.5)
    labels = (rng.random((60, 3)) < 0.4).astype(float)
    present = rng.random((60, 3)) < 0.8
    acts[:, 2] = labels[:, 1] * 2.0  # feature 2 fires exactly when name 1 is in the frontier
    t = auroc_table(acts, labels, present)
    for f in range(4):
        for j in range(3):
            ref = roc_auc_score(labels[present[:, j], j] > 0.5, acts[present[:, j], f])
            assert t[f, j] == pytest.approx(ref)
    groups = np.where(present, 1, -1)  # every present name is "frontier"
    reps = feature_reports(acts, labels, present, ["a", "b", "c"], groups, GROUPS)
    assert reps[2].best_name == "b" and reps[2].best_auroc == pytest.approx(1.0)
    assert reps[2].groups["frontier"] + reps[2].groups["absent"] == pytest.approx(1.0)


def test_thought_rows_are_the_models_thoughts(official_items, word_tokenizer):
    from conftest import tiny_base
    from probe.model.coconut import CoconutConfig, CoconutModel
    from probe.model.tokenizer import special_tokens

    sp = special_tokens(word_tokenizer)
    model = CoconutModel(tiny_base("gpt2", len(word_tokenizer), sp.eos_id), CoconutConfig.from_special(sp))
    items = official_items[:4]
    rows = thought_rows(model, word_tokenizer, items, k_max=3, progress=False)
    assert rows.X.shape == (12, model.d_model) and rows.hook == "ln_final.hook_normalized"
    from probe.data.render import render_prompt, tokenize_item

    gen = model.generate([render_prompt(tokenize_item(items[2], word_tokenizer), 3, model.config.stage_spec, sp)],
                         max_new_tokens=1)
    np.testing.assert_allclose(rows.X[2 * 3 + 1], gen.thoughts[0, 1].numpy(), rtol=1e-4, atol=1e-5)
    # Row (item 2, k = 2): the frontier_2 names are labelled 1 and are "frontier" or "optimal" in groups.
    from probe.data.graph import ProsQAGraph

    f2 = {items[2].name(v) for v in ProsQAGraph.from_item(items[2]).frontier(2)}
    assert {n for n, y in zip(rows.names, rows.frontier[7]) if y} == f2
    assert all(GROUPS[rows.groups[7, rows.names.index(n)]] in ("optimal", "frontier") for n in f2)


def test_saelens_fields_that_change_the_computation_are_applied_or_refused(tmp_path):
    """A SAELens SAE with apply_b_dec_to_input false encodes x, not x - b_dec, as SAELens does (this used to be
    ignored: features off by up to 24.9); fields we do not apply are refused by name."""
    g = torch.Generator().manual_seed(3)
    X = torch.randn(40, 24, generator=g) * 3
    sae = SparseAutoencoder(d_sae=16, k=2, epochs=3, progress=False).fit(X)
    sae.write_into(tmp_path, "blocks.0.hook_resid_post")
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    (tmp_path / "cfg.json").write_text(json.dumps({**cfg, "apply_b_dec_to_input": False}))
    w = load_file(str(tmp_path / "sae_weights.safetensors"))
    back = SparseAutoencoder.load(tmp_path)
    pre = X @ w["W_enc"] + w["b_enc"]  # SAELens's encode without b_dec on the input
    top = pre.topk(2, dim=-1)
    want = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
    torch.testing.assert_close(back.encode(X), want)
    assert not torch.allclose(back.encode(X), sae.encode(X))  # b_dec is not zero: the field matters
    for field, value in (("normalize_activations", "expected_average_only_in"), ("hook_head_index", 3),
                         ("reshape_activations", "hook_z")):
        (tmp_path / "cfg.json").write_text(json.dumps({**cfg, field: value}))
        with pytest.raises(SAEError, match=rf"cfg.json: {field}="):
            SparseAutoencoder.load(tmp_path)


def test_features_rank_by_auroc_and_the_split_is_checked():
    from probe.readouts.sae import FeatureReport, rank_features, train_sae

    reps = [FeatureReport(0, 0.1, "a", 0.6, [], {}), FeatureReport(1, 0.0, None, float("nan"), [], {}),
            FeatureReport(2, 0.2, "b", 0.9, [], {}), FeatureReport(3, 0.3, "c", float("nan"), [], {})]
    assert [f.feature for f in rank_features(reps)] == [2, 0]
    for bad in (0.0, 1.0):
        with pytest.raises(SAEError, match=f"held_out must be in \\(0, 1\\), got {bad}"):
            train_sae(None, None, [], held_out=bad)


def test_the_held_out_items_have_no_copy_in_training(official_items, word_tokenizer):
    """Items 0..4 and then 0..4 again: the held-out fifth is one distinct item and both its copies."""
    from conftest import tiny_base
    from probe.data.prosqa import item_key
    from probe.model.coconut import CoconutConfig, CoconutModel
    from probe.model.tokenizer import special_tokens
    from probe.readouts.sae import train_sae

    sp = special_tokens(word_tokenizer)
    model = CoconutModel(tiny_base("gpt2", len(word_tokenizer), sp.eos_id), CoconutConfig.from_special(sp))
    items = official_items[:5] * 2
    run = train_sae(model, word_tokenizer, items, k_max=2, held_out=0.2, d_sae=8, k=2, epochs=2, progress=False)
    rep = run.report()
    held = rep["held_out_items"]
    assert len(held) == 2 and item_key(items[held[0]]) == item_key(items[held[1]])
    assert run.held_out.tolist() == [b in held for b in range(10) for _ in range(2)]  # every thought of each
    assert rep["duplicates_merged"] == run.duplicates_merged == 5
    with pytest.raises(SAEError, match=r"3 items \(1 distinct\) cannot be split into training and 10% held out"):
        train_sae(None, None, official_items[:1] * 3)
