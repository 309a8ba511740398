"""SAE directories in every layout SAELens writes, written by hand, read the way SAELens reads them (docs/formats.md).

Each case (tests/saelens/format_cases.py) is a cfg.json and sae_weights.safetensors; a read case checks what we read
(architecture, k, hook, apply_b_dec_to_input, normalisation, dtype) and encode/reconstruct against the SAELens
formulas written out here by hand, and that the field matters (the reading with it changed computes otherwise);
a refused case checks the one-line message names the file and the field. tests/saelens/check_formats.sh runs the
same cases through SAELens itself.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

from probe.readouts.sae import SAEError, SparseAutoencoder
from saelens.format_cases import CASES, D_IN, HOOK, TOPK, Case, E, inputs, v2, v5, v6

DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


def reference(t: dict[str, torch.Tensor], ex: dict, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SAELens's encode and decode(encode), by hand: in float64 for a float32/float64 SAE (checked to 1e-5), in
    the SAE's own dtype for float16/bfloat16 (SAELens casts the weights and the input to it)."""
    cfg_dtype = DTYPES[ex["dtype"]]
    dt = torch.float64 if cfg_dtype in (torch.float32, torch.float64) else cfg_dtype
    w = {k: v.to(cfg_dtype).to(dt) for k, v in t.items()}
    h = x.to(cfg_dtype).to(dt)
    if ex["normalize"] == "constant_norm_rescale":
        c = D_IN ** 0.5 / h.norm(dim=-1, keepdim=True)
        h = h * c
    elif ex["normalize"] == "layer_norm":
        mu = h.mean(-1, keepdim=True)
        sd = (h - mu).std(-1, keepdim=True)
        h = (h - mu) / (sd + 1e-5)
    if ex["apply_b_dec"]:
        h = h - w["b_dec"]
    if ex["arch"] == "gated":
        gate = (h @ w["W_enc"] + w["b_gate"]) > 0
        f = gate * torch.relu(h @ (w["W_enc"] * torch.exp(w["r_mag"])) + w["b_mag"])
    else:
        pre = h @ w["W_enc"] + w["b_enc"]
        norms = w["W_dec"].norm(dim=-1)
        if ex["rescale"]:
            pre = pre * norms
        if ex["arch"] == "topk":
            keep = torch.zeros_like(pre, dtype=torch.bool)
            keep.scatter_(-1, pre.argsort(-1, descending=True)[:, : ex["k"]], True)
            f = torch.where(keep & (pre > 0), pre, torch.zeros_like(pre))
        elif ex["arch"] == "jumprelu":
            f = torch.where(pre > w["threshold"], torch.relu(pre), torch.zeros_like(pre))
        else:
            f = torch.relu(pre)
    g = f / norms if ex["rescale"] else f
    if ex["scale"]:
        g = g * w["scaling_factor"]
    out = g @ w["W_dec"] + w["b_dec"]
    if ex["normalize"] == "constant_norm_rescale":
        out = out / c
    elif ex["normalize"] == "layer_norm":
        out = out * sd + mu
    return f, out


def check(case: Case, tmp_path) -> SparseAutoencoder | None:
    """Load the case's directory: the reading and the numbers it expects, or its one-line refusal."""
    d = case.write(tmp_path / "sae")
    if case.expect is None:
        with pytest.raises(SAEError) as e:
            SparseAutoencoder.load(d)
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith(str(d)), msg
        assert re.search(case.refused, msg), msg
        return None
    sae = SparseAutoencoder.load(d)
    ex = case.expect
    got = {"arch": sae.architecture, "k": sae.k if sae.architecture == "topk" else None, "hook": sae.hook_name_,
           "apply_b_dec": sae.apply_b_dec_to_input, "normalize": sae.normalize_activations, "dtype": sae.dtype,
           "rescale": sae.rescale_acts_by_decoder_norm,
           "scale": getattr(sae, "finetuning_scaling_factor_", None) is not None}
    assert got == ex
    x = inputs()
    f, x_hat = reference(case.tensors(), ex, x)
    exact = ex["dtype"] in ("float16", "bfloat16")  # the same arithmetic in the same dtype
    tol = {"atol": 0, "rtol": 0} if exact else {"atol": 1e-5, "rtol": 1e-5}
    out = torch.float64 if ex["dtype"] == "float64" else torch.float32
    assert sae.encode(x).dtype == out
    torch.testing.assert_close(sae.encode(x), f.to(out), **tol)
    torch.testing.assert_close(sae.reconstruct(x), x_hat.to(out), **tol)
    if case.matters:
        f2, x2 = reference(case.tensors(), {**ex, **case.matters}, x)
        assert not (torch.allclose(sae.encode(x), f2.to(out), atol=1e-3)
                    and torch.allclose(sae.reconstruct(x), x2.to(out), atol=1e-3)), "the field changes nothing here"
    return sae


def cases(group: str):
    return pytest.mark.parametrize("case", CASES[group], ids=[c.name for c in CASES[group]])


@cases("layout")
def test_layout_by_sae_lens_version(case, tmp_path):
    check(case, tmp_path)


@cases("hook")
def test_hook_name(case, tmp_path):
    sae = check(case, tmp_path)
    if sae is not None and sae.hook_name_ is None:  # never an empty hook used silently
        with pytest.raises(SAEError, match=r"cfg.json: names no hook point") as e:
            sae.hook_point()
        assert "\n" not in str(e.value)
    elif sae is not None:
        assert sae.hook_point() == HOOK


def test_what_a_file_without_hook_says(tmp_path):
    """The refusal says where SAELens looks for the hook in that layout, and what it ignored."""
    hookless = {k: v for k, v in v6().items() if k != "metadata"} | {"hook_name": HOOK,
                                                                     "metadata": {"sae_lens_version": "6.5.0"}}
    sae = check(Case("x", hookless, expect=E(hook=None)), tmp_path)
    with pytest.raises(SAEError, match=r"no metadata.hook_name, where SAELens 6.5.0 reads it \(it ignores the "
                                       rf"top-level hook_name='{HOOK}'\); move it into metadata"):
        sae.hook_point()
    with pytest.raises(SAEError, match="names no hook point .* pass the hook"):
        SparseAutoencoder(d_sae=4, k=1).hook_point()


def test_old_layout_reads_hook_point_and_says_so(tmp_path):
    sae = check(Case("x", v2(), expect=E()), tmp_path)
    assert any(f"hook point '{HOOK}' read from hook_point" in n for n in sae.notes_), sae.notes_
    assert sae.layout_ == "SAELens 2.1.3" and sae.metadata_["model_name"] == "gelu-2l"


@cases("ignored")
def test_fields_that_do_not_change_encode_or_decode(case, tmp_path):
    check(case, tmp_path)


@cases("head")
def test_hook_head_index(case, tmp_path):
    check(case, tmp_path)


@cases("architecture")
def test_architecture(case, tmp_path):
    check(case, tmp_path)


@cases("refused_architecture")
def test_refused_architectures(case, tmp_path):
    check(case, tmp_path)


@cases("old_topk")
def test_topk_from_activation_fn(case, tmp_path):
    check(case, tmp_path)


@cases("k")
def test_topk_k(case, tmp_path):
    sae = check(case, tmp_path)
    if sae is not None and "k" not in case.cfg:
        assert any("no k: SAELens's default k=100" in n for n in sae.notes_), sae.notes_


@cases("rescale")
def test_rescale_acts_by_decoder_norm(case, tmp_path):
    check(case, tmp_path)


@cases("apply_b_dec")
def test_apply_b_dec_to_input(case, tmp_path):
    check(case, tmp_path)


@cases("normalize")
def test_normalize_activations(case, tmp_path):
    sae = check(case, tmp_path)
    if sae is not None and sae.normalize_activations != "none":  # decode alone cannot undo the input's norm
        with pytest.raises(SAEError, match="use reconstruct"):
            sae.decode(sae.encode(inputs()))


@cases("scaling")
def test_scaling_factor(case, tmp_path):
    check(case, tmp_path)


@cases("dtype")
def test_dtype(case, tmp_path):
    sae = check(case, tmp_path)
    if sae is not None and (sae.dtype != "float32" or case.cast):
        assert any("as SAELens does; results are returned as" in n for n in sae.notes_), sae.notes_


@cases("tensors")
def test_sizes_and_tensors(case, tmp_path):
    check(case, tmp_path)


@cases("reshape")
def test_reshape_activations(case, tmp_path):
    check(case, tmp_path)


def test_files(tmp_path):
    """cfg.json and sae_weights.safetensors are needed; sparsity.safetensors is not read; cfg.json is an object."""
    d = Case("x", v5()).write(tmp_path / "sae")
    (d / "sparsity.safetensors").write_bytes(b"not read")
    SparseAutoencoder.load(d)
    (d / "sae_weights.safetensors").unlink()
    with pytest.raises(SAEError, match="not an SAE directory .*SAELens before 0.2 saved a .pt file"):
        SparseAutoencoder.load(d)
    d = Case("x", v5()).write(tmp_path / "list")
    (d / "cfg.json").write_text("[1, 2]")
    with pytest.raises(SAEError, match="cfg.json: not a JSON object"):
        SparseAutoencoder.load(d)


def test_a_read_sae_round_trips_through_our_files(tmp_path):
    """A jumprelu, layer_norm, bfloat16 SAELens SAE saved by us and read back computes the same."""
    case = Case("x", v6(architecture="jumprelu", normalize_activations="layer_norm", dtype="bfloat16"),
                arch="jumprelu")
    sae = SparseAutoencoder.load(case.write(tmp_path / "in"))
    sae.save(tmp_path / "out", hook_name=sae.hook_point())
    back = SparseAutoencoder.load(tmp_path / "out")
    x = inputs()
    assert (back.architecture, back.normalize_activations, back.dtype) == ("jumprelu", "layer_norm", "bfloat16")
    torch.testing.assert_close(back.reconstruct(x), sae.reconstruct(x), atol=0, rtol=0)
    with pytest.raises(SAEError, match="to train, got .jumprelu."):
        back.fit(x)
    with pytest.raises(SAEError, match="fit trains float32 SAEs"):
        SparseAutoencoder(d_sae=6, k=2, dtype="bfloat16").fit(x)
    rescaled = SparseAutoencoder.load(Case("x", v6(**TOPK, rescale_acts_by_decoder_norm=True), arch="topk")
                                      .write(tmp_path / "rescaled"))
    rescaled.save(tmp_path / "o3", hook_name=HOOK)
    cfg = json.loads((tmp_path / "o3" / "cfg.json").read_text())
    assert cfg["rescale_acts_by_decoder_norm"] is True and cfg["metadata"]["sae_lens_version"] == "6.14.0"
    torch.testing.assert_close(SparseAutoencoder.load(tmp_path / "o3").encode(x), rescaled.encode(x), atol=0, rtol=0)
    v5_scaled = Case("x", v5(finetuning_scaling_factor=True), edit={"scaling_factor": torch.full((6,), 2.0)})
    with pytest.raises(SAEError, match="SAELens 6 files cannot hold"):
        SparseAutoencoder.load(v5_scaled.write(tmp_path / "scaled")).save(tmp_path / "o2", hook_name=HOOK)
