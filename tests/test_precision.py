"""Lower precision: every command takes --dtype, and a bfloat16 or float16 model gives float32's results within
the README's tolerance ('Precision'): answers agree on >= 95% of items, thoughts and residuals within 2%
relative error. Measured here on the CPU with the shipped default model."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from probe.capture.trace import capture
from probe.model.hook_names import FINAL
from probe.cli import app
from probe.model.evaluate import evaluate
from probe.model.checkpoint import default_checkpoint, load_checkpoint

RESID = "blocks.3.hook_resid_post"


@pytest.fixture(scope="module")
def float32(official_items):
    model, tok = load_checkpoint(default_checkpoint())
    items = official_items[:40]
    return items, tok, evaluate(model, tok, items, progress=False), capture(model, tok, items, names=[RESID, FINAL],
                                                                           progress=False)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_lower_precision_matches_float32_within_the_stated_tolerance(float32, dtype):
    items, tok, res32, tr32 = float32
    model, _ = load_checkpoint(default_checkpoint(), dtype=dtype)
    assert next(model.parameters()).dtype == dtype
    res = evaluate(model, tok, items, progress=False)
    agree = sum(a.prediction == b.prediction for a, b in zip(res.items, res32.items)) / len(items)
    assert agree >= 0.95
    tr = capture(model, tok, items, names=[RESID, FINAL], progress=False)
    for got, want in ((tr.thoughts, tr32.thoughts), (tr[RESID][:, :6], tr32[RESID][:, :6])):
        rel = (got.float() - want).norm(dim=-1) / want.norm(dim=-1)
        assert float(rel.max()) < 0.02
        assert float(rel.max()) > 0  # it really ran in lower precision


def test_every_model_command_takes_dtype(tmp_path, official_path):
    runner = CliRunner()
    data = ["--data", str(official_path)]
    runs = {
        "eval": ["eval", *data, "--limit", "4", "--dtype", "bfloat16", "--json", str(tmp_path / "e.json")],
        "decode": ["decode", *data, "--index", "0", "--dtype", "bfloat16"],
        "capture": ["capture", *data, "--limit", "4", "--dtype", "bfloat16", "--store-dtype", "float16",
                    "--hooks", "*hook_resid_post", "--out", str(tmp_path / "trace")],
        "analyze": ["analyze", *data, "--limit", "3", "--k-max", "2", "--dtype", "bfloat16", "--out", str(tmp_path / "an")],
        "intervene": ["intervene", *data, "--limit", "2", "--k", "2", "--sites", "thought", "--dtype", "bfloat16", "--only", "ablate", "--ablations",
                      "mean", "--out", str(tmp_path / "iv")],
        "probes fit": ["probes", "fit", *data, "--limit", "6", "--k-max", "1", "--folds", "2", "--dtype", "bfloat16",
                       "--out", str(tmp_path / "probe")],
        # the translators train in float32 through the bfloat16 model's readout
        "tuned-lens": ["tuned-lens", "--n", "8", "--epochs", "1", "--dtype", "bfloat16", "--out", str(tmp_path / "tl")],
    }
    for name, args in runs.items():
        r = runner.invoke(app, args)
        assert r.exit_code == 0, (name, r.output[-1500:])
    assert "Tom is a lempus." in runner.invoke(app, runs["decode"]).output
    manifest = json.loads((tmp_path / "trace" / "manifest.json").read_text())
    assert manifest["dtype"] == "float16"
    r = runner.invoke(app, ["eval", *data, "--limit", "2", "--dtype", "float8"])
    assert r.exit_code != 0 and "--dtype: expected one of float32, bfloat16, float16, got 'float8'" in r.output


def test_a_lower_precision_copy_keeps_the_models_identity(tmp_path):
    """The shipped lens, probe and SAE were fit on the float32 weights; the same model loaded in bfloat16 or
    float16 must be accepted by all three, a model one element away refused, and an unhashed lens refused."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from probe.readouts.lens import LensError, TunedLens
    from probe.model.identity import readout_hash, weights_hash
    from probe.readouts.probes import ProbeError, SavedProbe
    from probe.readouts.sae import SAEError, SparseAutoencoder

    ckpt = default_checkpoint()
    lens_file, probe_dir, sae_dir = ckpt / "tuned_lens.safetensors", ckpt / "probes" / "frontier", ckpt / "sae"
    full, _ = load_checkpoint(ckpt)
    for dtype in (torch.bfloat16, torch.float16):
        low, _ = load_checkpoint(ckpt, dtype=dtype)
        assert next(low.parameters()).dtype == dtype
        assert weights_hash(low) == weights_hash(full) and readout_hash(low) == readout_hash(full)
        TunedLens.load(lens_file, low)
        SavedProbe.load(probe_dir, low)
        SparseAutoencoder.load(sae_dir, low)
    # one element of the unembedding changed: another model to every readout
    with torch.no_grad():
        full.base.get_output_embeddings().weight[3, 5] += 1e-3
    assert weights_hash(full) != weights_hash(load_checkpoint(ckpt)[0])
    with pytest.raises(LensError, match="trained for another model"):
        TunedLens.load(lens_file, full)
    with pytest.raises(ProbeError, match="fit on another model"):
        SavedProbe.load(probe_dir, full)
    with pytest.raises(SAEError, match="another model"):
        SparseAutoencoder.load(sae_dir, full)
    # a lens file whose hash is empty is tied to nothing: refused, not accepted silently
    with safe_open(str(lens_file), framework="pt") as f:
        meta = f.metadata()
    save_file(load_file(str(lens_file)), str(tmp_path / "unhashed.safetensors"), metadata={**meta, "model_hash": ""})
    with pytest.raises(LensError, match="records no model hash"):
        TunedLens.load(tmp_path / "unhashed.safetensors", load_checkpoint(ckpt)[0])

