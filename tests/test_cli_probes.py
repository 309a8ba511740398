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
from probe.readouts.probes import SavedProbe
from probe.readouts.sae import SparseAutoencoder

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
    assert rep["duplicates_merged"] == 0 and "note:" not in r.output
    assert set(rep["steps"]) == {"1", "2"}
    for s in rep["steps"].values():
        assert s["selectivity"] == pytest.approx(s["auroc"] - s["control_auroc"])
    assert rep["control"]["steps"]["1"]["auroc"] == pytest.approx(rep["steps"]["1"]["auroc"])  # same model
    model, _ = load_checkpoint(ckpt)
    saved = SavedProbe.load(out, model)
    assert saved.steps == [1, 2] and saved.coef.shape[-1] == model.d_model
    assert (out / "scores.html").stat().st_size > 1000
    r = runner.invoke(app, ["probes", "fit", "--ckpt", str(ckpt), "--data", str(official_path), "--target", "height",
                            "--out", str(tmp_path / "bad")])
    assert r.exit_code == 2 and "unknown probe target 'height'" in r.output and not (tmp_path / "bad").exists()
    # Six items twice (the case, small): the fit says how many copies it kept with their original.
    from probe.data.prosqa import load_items, save_items

    save_items(load_items(official_path, limit=6) * 2, tmp_path / "twice.json")
    r = runner.invoke(app, ["probes", "fit", "--ckpt", str(ckpt), "--data", str(tmp_path / "twice.json"),
                            "--k-max", "1", "--folds", "2", "--out", str(tmp_path / "twice")])
    assert r.exit_code == 0, r.output
    assert "note: 6 item(s) are copies of an earlier item" in r.stderr and "(duplicates_merged 6)" in r.stderr
    rep = json.loads((tmp_path / "twice" / "report.json").read_text())
    assert rep["duplicates_merged"] == rep["steps"]["1"]["duplicates_merged"] == 6 and rep["n_items"] == 12


def test_halting_probe_then_eval_halt(answering_checkpoint, answering, official_path, tmp_path):
    """On a model that answers some items right after some k and not others, so that the reported rates and
    accuracies are compared with evaluate's, item by item, not 0 with 0."""
    from probe.data.prosqa import load_items
    from probe.model.evaluate import evaluate
    from probe.readouts.probes import halting_eval

    ckpt, (model, tok) = answering_checkpoint, answering
    data = tmp_path / "twelve.json"
    data.write_text(json.dumps(json.loads(official_path.read_text())[:12]))
    items = load_items(data)
    correct = {k: [r.correct for r in evaluate(model, tok, items, k=k, progress=False).items] for k in range(7)}
    out = tmp_path / "halt"
    r = runner.invoke(app, ["probes", "halt", "--ckpt", str(ckpt), "--data", str(data), "--folds", "3", "--out", str(out)])
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "report.json").read_text())
    # the share of (item, k) pairs, k = 1..5, whose forced answer is right
    pairs = [c for k in range(1, 6) for c in correct[k]]
    assert 0 < sum(pairs) < len(pairs) and rep["positive_rate"] == pytest.approx(sum(pairs) / len(pairs))
    js = tmp_path / "h.json"
    r = runner.invoke(app, ["eval", "--ckpt", str(ckpt), "--data", str(data), "--halt", str(out), "--json", str(js)])
    assert r.exit_code == 0, r.output
    res = json.loads(js.read_text())
    assert res["fixed"] == {str(k): pytest.approx(sum(c) / 12) for k, c in correct.items()}
    assert sum(res["thoughts_histogram"].values()) == 12 and 1 <= res["mean_thoughts"] <= 6
    lib = halting_eval(model, tok, items, SavedProbe.load(out, model), progress=False)
    assert res["accuracy"] == pytest.approx(lib.accuracy) and res["thoughts_histogram"] == lib.as_dict()["thoughts_histogram"]
    assert "plotly" in js.with_suffix(".html").read_text()[:20000].lower()
    # A probe fit on another model is refused by name.
    other = tmp_path / "other"
    saved = SavedProbe.load(out)
    saved.model_hash = "0" * 64
    saved.save(other)
    r = runner.invoke(app, ["eval", "--ckpt", str(ckpt), "--data", str(data), "--halt", str(other)])
    assert r.exit_code == 2 and "fit on another model" in r.output


def test_sae_train_writes_saelens_files_and_a_report(ckpt, tmp_path):
    out = tmp_path / "sae"
    r = runner.invoke(app, ["sae", "train", "--ckpt", str(ckpt), "--n", "30", "--epochs", "3", "--d-sae", "32",
                            "--k", "4", "--out", str(out)])
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["hook"] == "ln_final.hook_normalized" and rep["rows"] == 30 * 2
    model, tok = load_checkpoint(ckpt)
    sae = SparseAutoencoder.load(out, model)
    # the report's numbers are the library's on the same rows: 3 of the 30 (distinct) items held out, as
    # content_holdout draws them with the default seed, the other 27 trained
    from probe.data.generate import generate_items
    from probe.data.splits import content_holdout
    from probe.analyses.frontier import GROUPS
    from probe.readouts.sae import feature_reports, thought_rows

    held_items = content_holdout(np.arange(30), 0.1, seed=0)
    assert rep["held_out_items"] == np.flatnonzero(held_items).tolist() and rep["duplicates_merged"] == 0
    rows = thought_rows(model, tok, generate_items(30, seed=12345), progress=False)
    held = np.repeat(held_items, 2)
    train_m, held_m = sae.metrics(rows.X[~held]), sae.metrics(rows.X[held])
    assert rep["fvu"] == pytest.approx(train_m.fvu) and rep["l0"] == pytest.approx(train_m.l0)
    assert rep["dead_fraction"] == pytest.approx(train_m.dead_fraction)
    assert rep["held_out"]["fvu"] == pytest.approx(held_m.fvu)
    feats = {f.feature: f for f in feature_reports(sae.encode(rows.X).numpy(), rows.frontier, rows.present,
                                                    rows.names, rows.groups, GROUPS)}
    assert rep["features"]
    for f in rep["features"]:
        assert f["best_auroc"] == pytest.approx(feats[f["feature"]].best_auroc)
        assert f["best_name"] == feats[f["feature"]].best_name
    assert sae.hook_name_ == "ln_final.hook_normalized" and sae.W_dec_.shape == (32, model.d_model)
    assert np.isfinite(sae.metrics(np.random.default_rng(0).normal(size=(5, model.d_model))).fvu)
    r = runner.invoke(app, ["sae", "train", "--ckpt", str(ckpt), "--n", "30", "--layer", "7", "--out",
                            str(tmp_path / "s2")])
    assert r.exit_code == 2 and "layer 7 is out of range" in r.output


def test_undefined_scores_print_as_a_dash():
    from probe.cli import _num

    # A thought whose frontier is empty in every item has no AUROC (None in the report, nan in memory).
    assert [_num(None), _num(float("nan")), _num(0.5), _num(-0.0123)] == ["-", "-", "0.500", "-0.012"]
