"""`probe probes fit|halt`, `probe eval --halt` and `probe sae train` on a tiny saved checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import tiny_base
from probe.cli import app
from probe.model.checkpoint import load_checkpoint, save_checkpoint
from probe.model.coconut import CoconutConfig, CoconutModel
from probe.model.tokenizer import special_tokens
from probe.model.identity import weights_hash
from probe.probes import SavedProbe
from probe.sae import SparseAutoencoder

runner = CliRunner()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, word_tokenizer):
    tok = word_tokenizer
    sp = special_tokens(tok)
    model = CoconutModel(tiny_base("gpt2", len(tok), sp.eos_id), CoconutConfig.from_special(sp, max_latent_stage=2))
    return save_checkpoint(model, tok, tmp_path_factory.mktemp("ckpt") / "tiny")


def test_probes_fit_writes_probe_report_and_figure(ckpt, official_path, tmp_path):
    out = tmp_path / "pf"
    r = runner.invoke(app, ["probes", "fit", "--ckpt", str(ckpt), "--data", str(official_path), "--limit", "15",
                            "--target", "reachable", "--layer", "0", "--folds", "3", "--out", str(out),
                            "--control", str(ckpt)])
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["target"] == "reachable" and rep["hook"] == "blocks.0.hook_resid_post" and rep["n_items"] == 15
    assert set(rep["steps"]) == {"1", "2"}
    for s in rep["steps"].values():
        assert s["selectivity"] == pytest.approx(s["auroc"] - s["control_auroc"])
    assert rep["control"]["steps"]["1"]["auroc"] == pytest.approx(rep["steps"]["1"]["auroc"])  # same model
    model, _ = load_checkpoint(ckpt)
    saved = SavedProbe.load(out, weights_hash(model))
    assert saved.steps == [1, 2] and saved.coef.shape[-1] == model.d_model
    assert (out / "scores.html").stat().st_size > 1000
    r = runner.invoke(app, ["probes", "fit", "--ckpt", str(ckpt), "--data", str(official_path), "--target", "height",
                            "--out", str(tmp_path / "bad")])
    assert r.exit_code == 2 and "unknown probe target 'height'" in r.output and not (tmp_path / "bad").exists()


def test_halting_probe_then_eval_halt(ckpt, official_path, tmp_path):
    out = tmp_path / "halt"
    r = runner.invoke(app, ["probes", "halt", "--ckpt", str(ckpt), "--n", "24", "--folds", "3", "--out", str(out)])
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["k_max"] == 2 and 0 <= rep["positive_rate"] <= 1
    js = tmp_path / "h.json"
    r = runner.invoke(app, ["eval", "--ckpt", str(ckpt), "--data", str(official_path), "--limit", "10",
                            "--halt", str(out), "--json", str(js)])
    assert r.exit_code == 0, r.output
    res = json.loads(js.read_text())
    assert 1 <= res["mean_thoughts"] <= 2 and set(res["fixed"]) == {"0", "1", "2"}
    assert sum(res["thoughts_histogram"].values()) == 10
    assert "plotly" in js.with_suffix(".html").read_text()[:20000].lower()
    # A probe fit on another model is refused by name.
    other = tmp_path / "other"
    saved = SavedProbe.load(out)
    saved.model_hash = "0" * 64
    saved.save(other)
    r = runner.invoke(app, ["eval", "--ckpt", str(ckpt), "--data", str(official_path), "--halt", str(other)])
    assert r.exit_code == 2 and "fit on another model" in r.output


def test_sae_train_writes_saelens_files_and_a_report(ckpt, tmp_path):
    out = tmp_path / "sae"
    r = runner.invoke(app, ["sae", "train", "--ckpt", str(ckpt), "--n", "30", "--epochs", "3", "--d-sae", "32",
                            "--k", "4", "--out", str(out)])
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["hook"] == "ln_final.hook_normalized" and rep["rows"] == 30 * 2
    assert 0 <= rep["fvu"] and 0 < rep["l0"] <= 4 and 0 <= rep["dead_fraction"] <= 1
    assert rep["features"] and all(0 <= f["best_auroc"] <= 1 for f in rep["features"])
    model, _ = load_checkpoint(ckpt)
    sae = SparseAutoencoder.load(out, model_hash=weights_hash(model))
    assert sae.hook_name_ == "ln_final.hook_normalized" and sae.W_dec_.shape == (32, model.d_model)
    assert np.isfinite(sae.metrics(np.random.default_rng(0).normal(size=(5, model.d_model))).fvu)
    r = runner.invoke(app, ["sae", "train", "--ckpt", str(ckpt), "--n", "30", "--layer", "7", "--out",
                            str(tmp_path / "s2")])
    assert r.exit_code == 2 and "layer 7 is out of range" in r.output


def test_undefined_scores_print_as_a_dash():
    from probe.cli import _num

    # A thought whose frontier is empty in every item has no AUROC (None in the report, nan in memory).
    assert [_num(None), _num(float("nan")), _num(0.5), _num(-0.0123)] == ["-", "-", "0.500", "-0.012"]
