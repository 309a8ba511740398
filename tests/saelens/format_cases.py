"""SAE directories written by hand in each layout SAELens has written (docs/formats.md), for two readers:
tests/test_sae_formats.py (our loader) and tests/saelens/check_formats.py (SAELens itself, in its own venv).

Only json, torch and safetensors here, so SAELens's environment can import it too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

D_IN, D_SAE = 4, 6
HOOK = "blocks.1.hook_resid_post"
TENSORS = {
    "standard": ("W_enc", "W_dec", "b_enc", "b_dec"),
    "topk": ("W_enc", "W_dec", "b_enc", "b_dec"),
    "jumprelu": ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"),
    "gated": ("W_enc", "W_dec", "b_dec", "b_gate", "b_mag", "r_mag"),
}


def weights(arch: str = "standard", d_sae: int = D_SAE, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights of a SAELens SAE: W_enc [D_IN, d_sae], W_dec [d_sae, D_IN], b_dec [D_IN], others [d_sae].

    W_dec rows are not unit norm (so rescale_acts_by_decoder_norm matters) and b_dec is far from 0 (so
    apply_b_dec_to_input matters); encoder biases make most pre-activations positive (so a top k other than d_sae
    matters); thresholds sit inside the pre-activations' range.
    """
    g = torch.Generator().manual_seed(seed)
    shapes = {"W_enc": (D_IN, d_sae), "W_dec": (d_sae, D_IN), "b_dec": (D_IN,)}
    out = {n: torch.randn(*shapes.get(n, (d_sae,)), generator=g) for n in TENSORS[arch]}
    out["W_dec"] = out["W_dec"] * (0.5 + 2 * torch.rand(d_sae, 1, generator=g))
    out["b_dec"] = out["b_dec"] * 3
    for name in ("b_enc", "b_mag", "b_gate"):  # most features positive before the activation: top-k bites
        if name in out:
            out[name] = out[name] + 2.5
    if "threshold" in out:
        out["threshold"] = 1 + torch.rand(d_sae, generator=g) * 3
    if "r_mag" in out:
        out["r_mag"] = out["r_mag"] * 0.3
    return out


def inputs(seed: int = 1, n: int = 16) -> torch.Tensor:
    return torch.randn(n, D_IN, generator=torch.Generator().manual_seed(seed)) * 2 + 1


# The layouts' fixed fields, as each SAELens version wrote them (only what matters to the reading).
def v2(**over: Any) -> dict:
    """SAELens 0.x-2.x: the training runner's config."""
    return {"model_name": "gelu-2l", "hook_point": HOOK, "hook_point_layer": 1, "hook_point_head_index": None,
            "dataset_path": "NeelNanda/c4-tokenized-2b", "context_size": 128, "prepend_bos": True,
            "d_in": D_IN, "d_sae": D_SAE, "expansion_factor": 1.5, "activation_fn": "relu",
            "apply_b_dec_to_input": True, "normalize_activations": False, "dtype": "torch.float32",
            "device": "cuda", "l1_coefficient": 0.001, "sae_lens_version": "2.1.3", **over}


def v5(**over: Any) -> dict:
    """SAELens 3.x-5.x: SAEConfig.to_dict (no sae_lens_version)."""
    return {"architecture": "standard", "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu",
            "model_name": "gpt2", "hook_name": HOOK, "hook_layer": 1, "hook_head_index": None,
            "activation_fn_str": "relu", "activation_fn_kwargs": {}, "apply_b_dec_to_input": True,
            "finetuning_scaling_factor": False, "sae_lens_training_version": "5.11.0", "prepend_bos": True,
            "dataset_path": "x/y", "dataset_trust_remote_code": True, "context_size": 128,
            "normalize_activations": "none", "neuronpedia_id": None, "model_from_pretrained_kwargs": {},
            "seqpos_slice": [None], **over}


def v6(meta: dict | None = None, **over: Any) -> dict:
    """SAELens 6.x: the architecture's fields at the top, a metadata block."""
    return {"architecture": "standard", "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu",
            "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
            "metadata": {"model_name": "gpt2", "hook_name": HOOK, "hook_head_index": None, "prepend_bos": True,
                         "context_size": 128, "sae_lens_version": "6.5.0", "sae_lens_training_version": "6.5.0",
                         **(meta or {})}, **over}


def without(cfg: dict, *fields: str) -> dict:
    return {k: v for k, v in cfg.items() if k not in fields}


@dataclass
class Case:
    """One SAE directory: cfg.json, the weights of `arch` (changed by `edit`), and what should be read.

    expect: the reading ({"arch", "k", "hook", "apply_b_dec", "normalize", "dtype", "rescale", "scale"}) when the
    file is read, or None when it is refused with a message matching `refused`. saelens: what SAELens 6.54 does
    with it, loading it and encoding [n, d_in] rows ("same": computes what we compute; "error": raises; "differs":
    computes something that the SAELens which wrote the file did not, or that this toolkit cannot feed, which is
    why we refuse; "skip": not compared).
    """

    name: str
    cfg: dict
    arch: str = "standard"
    d_sae: int = D_SAE
    edit: dict[str, Any] = field(default_factory=dict)  # tensor name -> tensor, or None to drop it
    cast: str | None = None  # store every tensor in this dtype
    expect: dict | None = None
    refused: str = ""
    saelens: str = "same"
    matters: dict | None = None  # this change to `expect` computes something else: the field is applied

    def tensors(self) -> dict[str, torch.Tensor]:
        t = weights(self.arch, self.d_sae)
        for name, value in self.edit.items():
            if value is None:
                t.pop(name, None)
            else:
                t[name] = value(t) if callable(value) else value
        if self.cast:
            t = {k: v.to(getattr(torch, self.cast)) for k, v in t.items()}
        return t

    def write(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "cfg.json").write_text(json.dumps(self.cfg))
        save_file({k: v.contiguous() for k, v in self.tensors().items()}, str(directory / "sae_weights.safetensors"))
        return directory


def meta_without(cfg: dict, *fields: str) -> dict:
    return {**cfg, "metadata": {k: v for k, v in cfg["metadata"].items() if k not in fields}}


def E(**over: Any) -> dict:
    """The reading of a plain standard SAE, with `over` changed."""
    return {"arch": "standard", "k": None, "hook": HOOK, "apply_b_dec": True, "normalize": "none",
            "dtype": "float32", "rescale": False, "scale": False, **over}


def times(scale: float, name: str = "W_enc"):
    return lambda t: t[name] * scale


TOPK = dict(architecture="topk", k=2)
OLD_TOPK = dict(activation_fn_str="topk", activation_fn_kwargs={"k": 2})
SCALE = torch.linspace(0.5, 2.0, D_SAE)
# Grouped by the test (and the docs/formats.md rows) that reads them. `matters`: the reading with this change
# computes something else, so the case checks the field is applied (the test can fail).
CASES: dict[str, list[Case]] = {
    "layout": [
        Case("v6: metadata.sae_lens_version 6.5.0", v6(), expect=E()),
        Case("v6: top-level sae_lens_version 6.1.0", {**meta_without(v6(), "sae_lens_version"),
                                                       "sae_lens_version": "6.1.0"}, expect=E()),
        Case("v6: 6.0.0-rc.1 is 6", v6(meta={"sae_lens_version": "6.0.0-rc.1"}), expect=E()),
        Case("v5: 5.11.0 is read as pre-6", v5(sae_lens_version="5.11.0"), expect=E()),
        Case("no sae_lens_version: pre-6, metadata.hook_name discarded", meta_without(v6(), "sae_lens_version"),
             expect=E(hook=None)),
        Case("unparseable sae_lens_version", v6(meta={"sae_lens_version": "six"}),
             refused=r"sae_lens_version='six' is not a version SAELens can parse", saelens="error"),
        Case("metadata not an object", {**v6(), "metadata": ["x"]}, refused=r"metadata=\['x'\] is not an object",
             saelens="error"),
    ],
    "hook": [
        Case("v2: hook_point", v2(), expect=E()),
        Case("v5: hook_name", v5(), expect=E()),
        Case("v6: metadata.hook_name", v6(), expect=E()),
        Case("v6: top-level hook_name only", meta_without({**v6(), "hook_name": HOOK}, "hook_name"),
             expect=E(hook=None)),
        Case("v5: no hook at all", without(v5(), "hook_name"), expect=E(hook=None)),
        Case("v5: hook_point and hook_name disagree", v5(hook_point="blocks.0.hook_resid_pre"),
             refused=r"hook_point='blocks.0.hook_resid_pre' and hook_name='blocks.1.hook_resid_post' disagree",
             saelens="differs"),
        Case("v6: top-level and metadata hook_name disagree", v6(hook_name="blocks.0.hook_resid_pre"),
             refused=r"hook_name='blocks.0.hook_resid_pre' at the top level and metadata.hook_name=.* disagree",
             saelens="differs"),
        Case("v6: empty metadata.hook_name", v6(meta={"hook_name": ""}), refused=r"hook_name='' is not a hook name",
             saelens="differs"),
    ],
    "ignored": [
        Case("v5: hook_layer that does not match the hook name", v5(hook_layer=7), expect=E()),
        Case("v2: hook_point_layer, expansion_factor, l1_coefficient", v2(hook_point_layer=9), expect=E()),
        Case("v6: device, training fields, metadata", v6(meta={"model_from_pretrained_kwargs":
                                                              {"center_writing_weights": False},
                                                              "seqpos_slice": [1, None], "prepend_bos": False},
                                                        device="cuda:3", l1_coefficient=5.0, decoder_init_norm=0.1,
                                                        lp_norm=2.0), expect=E()),
        Case("v6 jumprelu: training fields", v6(architecture="jumprelu", jumprelu_bandwidth=0.05,
                                                 jumprelu_init_threshold=9.0, l0_coefficient=3.0), arch="jumprelu",
             expect=E(arch="jumprelu")),
    ],
    "head": [
        Case("v5: hook_head_index", v5(hook_head_index=2), refused=r"hook_head_index=2 means the SAE reads one "
             r"attention head's slice", saelens="differs"),
        Case("v2: hook_point_head_index", v2(hook_point_head_index=2),
             refused=r"hook_head_index=2 means the SAE reads one attention head's slice", saelens="differs"),
        Case("v6: metadata.hook_head_index", v6(meta={"hook_head_index": 0}),
             refused=r"hook_head_index=0 means", saelens="differs"),
    ],
    "architecture": [
        Case("v5: no architecture is standard", without(v5(), "architecture"), expect=E()),
        Case("v6: no architecture", without(v6(), "architecture"), refused=r"no architecture field in a SAELens "
             r"6.5.0 file", saelens="error"),
        Case("v6: standard", v6(), expect=E(), matters={"arch": "topk", "k": 2}),
        Case("v6: topk", v6(**TOPK), arch="topk", expect=E(arch="topk", k=2)),
        Case("v6: jumprelu", v6(architecture="jumprelu"), arch="jumprelu", expect=E(arch="jumprelu"),
             matters={"arch": "standard"}),
        Case("v5: jumprelu", v5(architecture="jumprelu"), arch="jumprelu", expect=E(arch="jumprelu")),
        Case("v6: gated", v6(architecture="gated"), arch="gated", expect=E(arch="gated")),
        Case("v5: gated", v5(architecture="gated"), arch="gated", expect=E(arch="gated")),
    ],
    "refused_architecture": [
        Case(f"v6: {a}", v6(architecture=a), refused=rf"architecture='{a}' {why}", saelens="skip")
        for a, why in (("batchtopk", "is a SAELens training architecture"),
                       ("matryoshka_batchtopk", "is a SAELens training architecture"),
                       ("abstopk", "keeps the k largest"), ("transcoder", "is a transcoder"),
                       ("skip_transcoder", "is a transcoder"), ("jumprelu_transcoder", "is a transcoder"),
                       ("jumprelu_skip_transcoder", "is a transcoder"), ("temporal", "encodes each position"),
                       ("matching_pursuit", "encodes by iterative matching pursuit"),
                       ("sparse_magic", "is not one SAELens's load_from_disk reads"))
    ],
    "old_topk": [
        Case("v3.9-4.x: standard + activation_fn_str topk", v5(**OLD_TOPK), expect=E(arch="topk", k=2),
             matters={"arch": "standard", "k": None}),
        Case("v4-5: topk + activation_fn_str topk", v5(architecture="topk", **OLD_TOPK), expect=E(arch="topk", k=2),
             matters={"k": 3}),
        Case("v5: topk without k", v5(activation_fn_str="topk"), refused=r"activation_fn_str='topk' has no "
             r"activation_fn_kwargs.k: SAELens 3.9-5.x refuse it .* SAELens 6 reads it as a ReLU", saelens="differs"),
        Case("v5: architecture topk, topk without k", v5(architecture="topk", activation_fn_str="topk"),
             refused=r"activation_fn_str='topk' has no activation_fn_kwargs.k", saelens="error"),
        Case("v5: architecture topk with relu", v5(architecture="topk", activation_fn_kwargs={"k": 2}),
             refused=r"architecture='topk' with activation_fn_str='relu': SAELens 4.x-5.x compute a ReLU .* and "
             r"SAELens 6 a TopK with k=2;",
             saelens="differs"),
        Case("v5: tanh-relu", v5(activation_fn_str="tanh-relu"), refused=r"activation_fn_str='tanh-relu' is read "
             r"by SAELens 2.x-5.x as tanh\(relu\(x\)\)", saelens="differs"),
        Case("v2: unknown activation_fn", v2(activation_fn="gelu"), refused=r"activation_fn='gelu' is not an "
             r"activation SAELens reads", saelens="differs"),
        Case("pre-6: architecture topk and k, no activation field",
             without(v5(architecture="topk", k=3), "activation_fn_str", "activation_fn_kwargs"),
             arch="topk", refused=r"architecture='topk' with no activation_fn_str \(SAELens 3-5 read 'relu'\): "
             r"SAELens 4.x-5.x compute a ReLU .* and SAELens 6 a TopK with k=3", saelens="differs"),
        Case("v5: k and activation_fn_kwargs.k disagree", v5(architecture="topk", k=3, **OLD_TOPK),
             refused=r"k=3 and activation_fn_kwargs.k=2 disagree", saelens="differs"),
        Case("v5: jumprelu with topk", v5(architecture="jumprelu", **OLD_TOPK), arch="jumprelu",
             refused=r"activation_fn_str='topk' with architecture='jumprelu'", saelens="error"),
    ],
    "k": [
        Case("v6: topk without k reads SAELens's 100", without(v6(architecture="topk", d_sae=128), "k"),
             arch="topk", d_sae=128, expect=E(arch="topk", k=100), matters={"k": 8}),
        Case("v6: topk without k, d_sae 6", v6(architecture="topk"), arch="topk",
             refused=r"no k, and SAELens's default k=100 \(TopKSAEConfig\) exceeds d_sae=6", saelens="error"),
        Case("v6: k 2", v6(**TOPK), arch="topk", expect=E(arch="topk", k=2), matters={"k": 3}),
        Case("v6: k 0", v6(architecture="topk", k=0), arch="topk", refused=r"k=0 must be an integer in \[1, d_sae=6\]",
             saelens="differs"),
        Case("v6: k 7 > d_sae", v6(architecture="topk", k=7), arch="topk", refused=r"k=7 must be an integer",
             saelens="error"),
        Case("v6: k 2.5", v6(architecture="topk", k=2.5), arch="topk", refused=r"k=2.5 must be an integer",
             saelens="error"),
        Case("v6: k and activation_fn_kwargs.k disagree", v6(**TOPK, activation_fn_kwargs={"k": 3}), arch="topk",
             refused=r"k=2 and activation_fn_kwargs.k=3 disagree", saelens="differs"),
        Case("v6: activation_fn_str topk on a standard SAE", v6(activation_fn_str="topk"),
             refused=r"activation_fn_str='topk' in a SAELens 6.5.0 file, which SAELens 6 ignores", saelens="differs"),
    ],
    "rescale": [
        Case("v6: rescale_acts_by_decoder_norm true", v6(**TOPK, rescale_acts_by_decoder_norm=True), arch="topk",
             expect=E(arch="topk", k=2, rescale=True), matters={"rescale": False}),
        Case("v6: rescale_acts_by_decoder_norm missing", v6(**TOPK), arch="topk", expect=E(arch="topk", k=2)),
        Case("v6: rescale on a standard SAE is not its field", v6(rescale_acts_by_decoder_norm=True), expect=E()),
    ],
    "apply_b_dec": [
        Case("v6: apply_b_dec_to_input false", v6(apply_b_dec_to_input=False), expect=E(apply_b_dec=False),
             matters={"apply_b_dec": True}),
        Case("v6: apply_b_dec_to_input missing", without(v6(), "apply_b_dec_to_input"), expect=E(),
             matters={"apply_b_dec": False}),
        Case("v6 topk: apply_b_dec_to_input missing", without(v6(**TOPK), "apply_b_dec_to_input"), arch="topk",
             expect=E(arch="topk", k=2)),
        Case("v5: apply_b_dec_to_input false", v5(apply_b_dec_to_input=False), expect=E(apply_b_dec=False)),
        Case("v5: apply_b_dec_to_input missing", without(v5(), "apply_b_dec_to_input"), expect=E()),
        Case("v2: apply_b_dec_to_input false", v2(apply_b_dec_to_input=False), expect=E(apply_b_dec=False)),
        Case("v6: apply_b_dec_to_input 'yes'", v6(apply_b_dec_to_input="yes"),
             refused=r"apply_b_dec_to_input='yes' must be true or false", saelens="error"),
    ],
    "normalize": [
        Case("v6: none", v6(), expect=E()),
        Case("v6: missing", without(v6(), "normalize_activations"), expect=E()),
        Case("v6: constant_norm_rescale", v6(normalize_activations="constant_norm_rescale"),
             expect=E(normalize="constant_norm_rescale"), matters={"normalize": "none"}),
        Case("v6: layer_norm", v6(normalize_activations="layer_norm"), expect=E(normalize="layer_norm"),
             matters={"normalize": "none"}),
        Case("v5 topk: layer_norm", v5(architecture="topk", normalize_activations="layer_norm", **OLD_TOPK),
             expect=E(arch="topk", k=2, normalize="layer_norm")),
        Case("v2: false", v2(normalize_activations=False), expect=E()),
        Case("v5: null", v5(normalize_activations=None), expect=E()),
        Case("v2: true", v2(normalize_activations=True), refused=r"normalize_activations='expected_average_only_in' "
             r"means the SAE expects its inputs multiplied by a scale", saelens="differs"),
        Case("v6: expected_average_only_in", v6(normalize_activations="expected_average_only_in"),
             refused=r"normalize_activations='expected_average_only_in' means", saelens="differs"),
        Case("v6: covariance_whitening", v6(normalize_activations="covariance_whitening"),
             refused=r"normalize_activations='covariance_whitening' means the SAE expects whitened inputs",
             saelens="differs"),
        Case("v6: null", v6(normalize_activations=None), refused=r"normalize_activations=None in a SAELens 6.5.0 "
             r"file: SAELens 6 refuses it", saelens="error"),
        Case("v6: rms", v6(normalize_activations="rms"), refused=r"normalize_activations='rms' is not one SAELens "
             r"reads", saelens="error"),
    ],
    "scaling": [
        Case("v2: scaling_factor of ones", v2(), edit={"scaling_factor": torch.ones(D_SAE)}, expect=E()),
        Case("v5: finetuning_scaling_factor true with scaling_factor", v5(finetuning_scaling_factor=True),
             edit={"scaling_factor": SCALE}, expect=E(scale=True), matters={"scale": False}, saelens="error"),
        Case("v5: finetuning_scaling_factor true, no tensor", v5(finetuning_scaling_factor=True), expect=E()),
        Case("v5: scaling_factor with finetuning_scaling_factor false", v5(), edit={"scaling_factor": SCALE},
             refused=r"tensor scaling_factor is not all ones but cfg.json's finetuning_scaling_factor is not true",
             saelens="error"),
        Case("v2: scaling_factor not ones", v2(), edit={"scaling_factor": SCALE},
             refused=r"SAELens 2 multiplied the features by it", saelens="error"),
        Case("v6: scaling_factor not ones", v6(finetuning_scaling_factor=True), edit={"scaling_factor": SCALE},
             refused=r"SAELens 6 cannot load a finetuning scaling factor", saelens="error"),
        Case("v5: tensor named finetuning_scaling_factor", v5(finetuning_scaling_factor=True),
             edit={"finetuning_scaling_factor": SCALE}, refused=r"tensor\(s\) \['finetuning_scaling_factor'\] that "
             r"a SAELens standard SAE does not hold", saelens="error"),
    ],
    "dtype": [
        Case("v6: float32 cfg, bfloat16 tensors", v6(), cast="bfloat16", expect=E()),
        Case("v6: bfloat16", v6(dtype="bfloat16"), cast="bfloat16", expect=E(dtype="bfloat16"),
             matters={"dtype": "float32"}),
        Case("v6 topk: float16 cfg, float32 tensors", v6(**TOPK, dtype="float16"), arch="topk",
             expect=E(arch="topk", k=2, dtype="float16")),
        Case("v6: float64", v6(dtype="float64"), expect=E(dtype="float64")),
        Case("v2: torch.float32", v2(), expect=E()),
        Case("v6: no dtype", without(v6(), "dtype"), refused=r"no dtype field \(SAELens 3.14 and later",
             saelens="error"),
        Case("v6: int8", v6(dtype="int8"), refused=r"dtype='int8' is not one SAELens reads", saelens="error"),
        Case("v6: float16 overflows", v6(dtype="float16"), edit={"W_enc": times(1e6)},
             refused=r"tensor W_enc overflows float16", saelens="differs"),
    ],
    "tensors": [
        Case("v6: no d_in", without(v6(), "d_in"), refused=r"no d_in field", saelens="error"),
        Case("v6: d_sae 7", v6(d_sae=7), refused=r"W_enc has shape \[4, 6\], cfg.json says \[4, 7\]", saelens="error"),
        Case("v6: no b_enc", v6(), edit={"b_enc": None}, refused=r"missing tensor\(s\) \['b_enc'\] of a SAELens "
             r"standard SAE", saelens="error"),
        Case("v6: an extra tensor", v6(), edit={"W_skip": torch.zeros(D_IN, D_IN)},
             refused=r"tensor\(s\) \['W_skip'\] that a SAELens standard SAE does not hold", saelens="error"),
        Case("v6 jumprelu: log_threshold", v6(architecture="jumprelu"), arch="jumprelu",
             edit={"log_threshold": lambda t: t["threshold"].log(), "threshold": None},
             refused=r"log_threshold is JumpReLU training state", saelens="error"),
        Case("v6 gated: with b_enc", v6(architecture="gated"), arch="gated", edit={"b_enc": torch.zeros(D_SAE)},
             refused=r"tensor\(s\) \['b_enc'\] that a SAELens gated SAE does not hold", saelens="error"),
    ],
    "reshape": [
        Case("v6: reshape_activations hook_z", v6(reshape_activations="hook_z", meta={"hook_name":
                                                                                     "blocks.1.attn.hook_z"}),
             refused=r"reshape_activations='hook_z' means the SAE reads blocks.1.attn.hook_z", saelens="error"),
        Case("v5: a hook_z hook name", v5(hook_name="blocks.1.attn.hook_z"),
             refused=r"reshape_activations='hook_z' means", saelens="error"),
        Case("v6: reshape_activations other", v6(reshape_activations="flatten"),
             refused=r"reshape_activations='flatten' is not one SAELens writes", saelens="differs"),
    ],
}
