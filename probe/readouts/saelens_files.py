"""SAE directories read the way SAELens reads them, field by field and version by version (docs/formats.md).

SAELens (github.com/jbloomAus/SAELens, now decoderesearch/SAELens) has written three layouts of cfg.json:

- 0.x-2.x: its whole training-runner config: hook_point, hook_point_layer, hook_point_head_index,
  activation_fn, dtype ("torch.float32"), sae_lens_version; the weights also hold a scaling_factor tensor.
- 3.x-5.x: SAEConfig.to_dict: hook_name, hook_layer, hook_head_index, activation_fn_str (with, from 3.9,
  activation_fn_kwargs {"k": ...} for TopK), architecture (from 3.6), finetuning_scaling_factor; no
  sae_lens_version.
- 6.x: the architecture's own fields at the top (d_in, d_sae, dtype, apply_b_dec_to_input,
  normalize_activations, reshape_activations; k and rescale_acts_by_decoder_norm for topk) and a `metadata`
  block (hook_name, model_name, sae_lens_version, ...).

SAELens 6's `SAE.load_from_disk` tells them apart by sae_lens_version (top level, else metadata.sae_lens_version):
missing or below 6.0.0-rc.0 goes through `handle_pre_6_0_config`, which renames the old fields. `read_cfg` does
the same. Where the SAELens that wrote an older file and SAELens 6 compute different things from it, or a field
changes the computation in a way this toolkit does not apply, the file is refused in one line naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from packaging.version import InvalidVersion, Version
from torch import Tensor

V6 = Version("6.0.0-rc.0")  # handle_config_defaulting's boundary
TOPK_K_DEFAULT = 100  # TopKSAEConfig.k, SAELens 6.0 to 6.54
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}
NORMALIZATIONS = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm", "covariance_whitening")
# the tensors each architecture's SAE holds (SAELens loads with load_state_dict(strict=True): no more, no fewer)
TENSORS = {
    "standard": ("W_enc", "W_dec", "b_enc", "b_dec"),
    "topk": ("W_enc", "W_dec", "b_enc", "b_dec"),
    "jumprelu": ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"),
    "gated": ("W_enc", "W_dec", "b_dec", "b_gate", "b_mag", "r_mag"),
}
# what SAELens's handle_pre_6_0_config renames (SAELens 3-5's SAEConfig.from_dict renamed the same)
PRE6_RENAMES = {"hook_point": "hook_name", "hook_point_head_index": "hook_head_index",
                "activation_fn_str": "activation_fn"}
# architectures SAELens registers that this toolkit refuses, and why
REFUSED_ARCHITECTURES = {
    "batchtopk": "is a SAELens training architecture that its load_from_disk refuses (SAELens saves the trained "
                 "SAE as 'jumprelu'); load the inference SAE it saved",
    "matryoshka_batchtopk": "is a SAELens training architecture that its load_from_disk refuses (SAELens saves the "
                            "trained SAE as 'jumprelu'); load the inference SAE it saved",
    "abstopk": "keeps the k largest |pre-activations| with their sign, so features can be negative; this toolkit "
               "counts a feature as firing when it is > 0: use a topk, jumprelu, gated or standard SAE",
    "transcoder": "is a transcoder: it reads one hook and predicts another (metadata.hook_name_out); this toolkit "
                  "reads SAEs that reconstruct their own input",
    "skip_transcoder": "is a transcoder: it reads one hook and predicts another (metadata.hook_name_out); this "
                       "toolkit reads SAEs that reconstruct their own input",
    "jumprelu_transcoder": "is a transcoder: it reads one hook and predicts another (metadata.hook_name_out); this "
                           "toolkit reads SAEs that reconstruct their own input",
    "jumprelu_skip_transcoder": "is a transcoder: it reads one hook and predicts another (metadata.hook_name_out); "
                                "this toolkit reads SAEs that reconstruct their own input",
    "temporal": "encodes each position with attention over the earlier ones, so a feature depends on context; this "
                "toolkit encodes one activation row at a time",
    "matching_pursuit": "encodes by iterative matching pursuit, not one encoder pass; this toolkit reads standard, "
                        "topk, jumprelu and gated SAEs",
}


class SAEError(ValueError):
    """An SAE that cannot be trained, used or loaded (bad settings, shapes, file or model)."""


@dataclass(frozen=True)
class SAELensConfig:
    """What SAELens reads from a cfg.json, as this toolkit applies it."""

    architecture: str  # standard, topk, jumprelu or gated
    d_in: int
    d_sae: int
    dtype: str  # float32, float64, float16 or bfloat16: SAELens casts the weights and the input to it
    k: int | None  # topk only
    rescale_acts_by_decoder_norm: bool  # topk only
    apply_b_dec_to_input: bool
    normalize_activations: str  # none, constant_norm_rescale or layer_norm
    finetuning_scaling_factor: bool  # SAELens < 6: decode multiplies the features by the scaling_factor tensor
    hook_name: str | None
    no_hook: str  # why hook_name is None: one line for the refusal
    metadata: dict[str, Any]  # model_name, prepend_bos, context_size, ...: kept, not applied
    layout: str  # "SAELens 6.5.0", "SAELens < 6 (no sae_lens_version)", ...
    pre6: bool  # read through SAELens 6's handle_pre_6_0_config
    notes: tuple[str, ...]  # one line per default taken or old field renamed


def _refuse(where: str, field: str, value: Any, why: str) -> SAEError:
    return SAEError(f"{where}: {field}={value!r} {why}")


def _version(cfg: dict, where: str) -> tuple[str | None, bool]:
    """(sae_lens_version, whether SAELens 6 reads the file as its own layout), as handle_config_defaulting."""
    meta = cfg.get("metadata")
    if meta is not None and not isinstance(meta, dict):
        raise _refuse(where, "metadata", meta, "is not an object; SAELens reads metadata as a JSON object of fields")
    version = cfg.get("sae_lens_version") or (meta or {}).get("sae_lens_version")
    if not version:
        return None, False
    try:
        return version, Version(str(version)) >= V6
    except InvalidVersion:
        raise _refuse(where, "sae_lens_version", version, "is not a version SAELens can parse (it compares it "
                      "with 6.0.0 to pick the layout); write the SAELens version that saved the file") from None


def _int(cfg: dict, field: str, where: str, required: str) -> int:
    if field not in cfg:
        raise SAEError(f"{where}: no {field} field; {required}")
    v = cfg[field]
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise _refuse(where, field, v, "must be a positive integer")
    return v


def _bool(c: dict, field: str, default: bool, where: str, notes: list[str], why: str = "") -> bool:
    if field not in c:
        notes.append(f"{where}: no {field}: SAELens's default {default} is used{why}")
        return default
    v = c[field]
    if not isinstance(v, bool):  # SAELens multiplies by it (b_dec * apply_b_dec_to_input): 0.5 would halve b_dec
        raise _refuse(where, field, v, "must be true or false")
    return v


def _dtype(cfg: dict, where: str) -> str:
    if "dtype" not in cfg:
        raise SAEError(f"{where}: no dtype field (SAELens 3.14 and later cast the weights to it and refuse a "
                       "cfg.json without it); add the dtype the SAE was saved in, e.g. \"float32\"")
    d = cfg["dtype"]
    name = d[len("torch."):] if isinstance(d, str) and d.startswith("torch.") else d
    if name not in DTYPES:
        raise _refuse(where, "dtype", d, f"is not one SAELens reads ({', '.join(DTYPES)}, optionally prefixed "
                                         "'torch.'); write the dtype the SAE was saved in")
    return name


def _normalization(value: Any, where: str) -> str:
    if value == "expected_average_only_in":
        raise _refuse(where, "normalize_activations", value,
                      "means the SAE expects its inputs multiplied by a scale this file does not hold (SAELens folds "
                      "the scale into the weights when training ends and then writes 'none'; its load_from_disk "
                      "applies no scale, so features of this unfolded file would be off by that scale); fold it with "
                      "SAELens (sae.fold_activation_norm_scaling_factor(scale); a SAELens 6 checkpoint keeps the "
                      "scale in activation_scaler.json) and save the SAE again")
    if value == "covariance_whitening":
        raise _refuse(where, "normalize_activations", value,
                      "means the SAE expects whitened inputs, a map this file does not hold (SAELens folds it into "
                      "the weights when training ends and then writes 'none'; its load_from_disk applies none); "
                      "save the SAE that SAELens folded at the end of training")
    if value not in NORMALIZATIONS:
        raise _refuse(where, "normalize_activations", value,
                      f"is not one SAELens reads ({', '.join(NORMALIZATIONS)}); SAELens refuses the file")
    return value


def _head_index(value: Any, field: str, where: str) -> None:
    if value is not None:
        raise _refuse(where, field, value,
                      "means the SAE reads one attention head's slice of its hook (SAELens's evals feed it "
                      "cache[hook][:, :, head]); this toolkit feeds whole hook activations: use an SAE trained on "
                      "the whole hook")


def _reshape(value: Any, where: str, hook: str | None) -> None:
    if value == "hook_z":
        raise SAEError(f"{where}: reshape_activations='hook_z' means the SAE reads {hook or 'an attention hook_z'} "
                       "[..., n_heads, d_head] flattened over heads; this toolkit feeds [n, d_in] rows of a hook as "
                       "they are: use an SAE whose reshape_activations is 'none'")
    if value != "none":
        raise _refuse(where, "reshape_activations", value, "is not one SAELens writes (none, hook_z)")


def _architecture(arch: Any, where: str) -> str:
    if arch in TENSORS:
        return arch
    if arch in REFUSED_ARCHITECTURES:
        raise _refuse(where, "architecture", arch, REFUSED_ARCHITECTURES[arch])
    raise _refuse(where, "architecture", arch, "is not one SAELens's load_from_disk reads; this toolkit reads "
                                               f"{', '.join(TENSORS)}")


def _topk_k(k: Any, d_sae: int, where: str, field: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= d_sae:
        raise _refuse(where, field, k, f"must be an integer in [1, d_sae={d_sae}] (SAELens's torch.topk fails "
                                       "otherwise); write the k the SAE was trained with")
    return k


def _pre6(cfg: dict, where: str, d_sae: int, notes: list[str]) -> dict[str, Any]:
    """A cfg.json without sae_lens_version >= 6: SAELens 6's handle_pre_6_0_config, checked against SAELens 3-5."""
    for old, new in PRE6_RENAMES.items():
        if old in cfg and new in cfg and cfg[old] != cfg[new]:
            raise SAEError(f"{where}: {old}={cfg[old]!r} and {new}={cfg[new]!r} disagree (SAELens renames {old} to "
                           f"{new} and keeps whichever comes last in the file); keep one")
    c = {PRE6_RENAMES.get(k, k): v for k, v in cfg.items()}
    out: dict[str, Any] = {}

    hook = out["hook_name"] = c.get("hook_name")
    if "hook_point" in cfg and "hook_name" not in cfg:
        notes.append(f"{where}: hook point {hook!r} read from hook_point (SAELens 2.x and earlier's name; "
                     "SAELens renames it hook_name)")
    if hook is None:
        lost = (cfg.get("metadata") or {}).get("hook_name")
        out["no_hook"] = (f"{where}: names no hook point: no hook_name or hook_point at the top level, where SAELens "
                          "reads it in a file without sae_lens_version >= 6"
                          + (f" (it discards metadata.hook_name={lost!r} there); add sae_lens_version to metadata"
                             if lost else "; add hook_name"))
    _head_index(c.get("hook_head_index"), "hook_head_index", where)
    # SAELens 6 reshapes hook_z when "hook_z" is in the hook name, SAELens 3-5 when the name ends in "_z"
    z = isinstance(hook, str) and ("hook_z" in hook or hook.endswith("_z"))
    _reshape("hook_z" if z else c.get("reshape_activations", "none"), where, hook)

    arch = c.get("architecture")
    if arch is None:
        notes.append(f"{where}: no architecture: SAELens's default 'standard' is used (SAELens before 3.6 wrote none)")
        arch = "standard"
    arch = _architecture(arch, where)
    act_field = next((f for f in ("activation_fn_str", "activation_fn") if f in cfg), None)
    act = c.get("activation_fn", "relu")
    kwargs = c.get("activation_fn_kwargs")
    kw_k = kwargs.get("k") if isinstance(kwargs, dict) else None
    if act == "topk":
        if kw_k is None:
            v6 = ("a ReLU (standard) SAE" if arch == "standard" else "an error" if "activation_fn_kwargs" in c
                  else f"a TopK SAE with k={c.get('k', TOPK_K_DEFAULT)}")
            raise _refuse(where, act_field, act, "has no activation_fn_kwargs.k: SAELens 3.9-5.x refuse it (TopK "
                          f"needs k) and SAELens 6 reads it as {v6}; add activation_fn_kwargs {{\"k\": K}} with the "
                          "k the SAE was trained with")
        if arch not in ("standard", "topk"):
            raise _refuse(where, act_field, act, f"with architecture={arch!r}: SAELens 3.9-5.x apply TopK before the "
                          f"{arch} gate and SAELens 6 ignores {act_field}; this toolkit reads neither")
        if "k" in c and c["k"] != kw_k:
            raise SAEError(f"{where}: k={c['k']!r} and activation_fn_kwargs.k={kw_k!r} disagree (SAELens 6 takes "
                           "activation_fn_kwargs.k, SAELens 3-5 never read k); keep one")
        notes.append(f"{where}: TopK with k={kw_k} read from {act_field}='topk' and activation_fn_kwargs.k "
                     "(SAELens 3.9-5.x's layout" + ("; SAELens 6.0-6.12.2 read it as a ReLU SAE, 6.12.3 on as "
                                                    "TopK)" if arch == "standard" else ")"))
        out.update(architecture="topk", k=_topk_k(kw_k, d_sae, where, "activation_fn_kwargs.k"))
    elif act == "relu" and arch == "topk":
        given = f"{act_field}='relu'" if act_field else "no activation_fn_str (SAELens 3-5 read 'relu')"
        k6 = f" with k={kw_k if 'activation_fn_kwargs' in c else c.get('k', TOPK_K_DEFAULT)}" \
            if kw_k is not None or "activation_fn_kwargs" not in c else ""
        raise _refuse(where, "architecture", arch, f"with {given}: SAELens 4.x-5.x compute a ReLU (their "
                      f"architecture picks the weights, activation_fn_str the activation) and SAELens 6 a TopK{k6}; "
                      "write activation_fn_str 'topk' with activation_fn_kwargs {\"k\": K}, or architecture "
                      "'standard'")
    elif act == "relu":
        out.update(architecture=arch, k=None)
    elif act == "tanh-relu":
        raise _refuse(where, act_field, act, "is read by SAELens 2.x-5.x as tanh(relu(x)) and by SAELens 6 as "
                      "relu(x) (it ignores the field); this toolkit reads neither: use a relu or topk SAE")
    else:
        raise _refuse(where, act_field, act, "is not an activation SAELens reads (relu, topk, tanh-relu); SAELens "
                                             "refuses the file")
    if out["architecture"] == "topk":
        out["rescale"] = _bool(c, "rescale_acts_by_decoder_norm", False, where, [])

    out["apply_b_dec_to_input"] = _bool(c, "apply_b_dec_to_input", True, where, notes)
    norm = c.get("normalize_activations")
    if isinstance(norm, bool):  # SAELens 1.5-3.3 wrote a bool; SAELens reads true as expected_average_only_in
        norm = "expected_average_only_in" if norm else "none"
    out["normalize_activations"] = _normalization("none" if norm is None else norm, where)
    fsf = c.get("finetuning_scaling_factor", False)
    if not isinstance(fsf, bool):
        raise _refuse(where, "finetuning_scaling_factor", fsf, "must be true or false")
    out["finetuning_scaling_factor"] = fsf
    out["metadata"] = {k: c[k] for k in METADATA_KEYS if k in c}
    return out


def _v6(cfg: dict, where: str, version: str, d_sae: int, notes: list[str]) -> dict[str, Any]:
    """A SAELens 6 cfg.json: SAEConfig.from_dict with the architecture's config class."""
    out: dict[str, Any] = {}
    if "architecture" not in cfg:
        raise SAEError(f"{where}: no architecture field in a SAELens {version} file (SAELens 6 requires it and "
                       "refuses the file); add architecture (standard, topk, jumprelu or gated)")
    arch = out["architecture"] = _architecture(cfg["architecture"], where)
    meta = dict(cfg.get("metadata") or {})
    hook, top = meta.get("hook_name"), cfg.get("hook_name", cfg.get("hook_point"))
    if hook is not None and top is not None and top != hook:
        raise SAEError(f"{where}: hook_name={top!r} at the top level and metadata.hook_name={hook!r} disagree "
                       "(SAELens 6 reads metadata.hook_name and ignores the top level); keep one")
    out["hook_name"] = hook
    if hook is None:
        out["no_hook"] = (f"{where}: names no hook point: no metadata.hook_name, where SAELens {version} reads it"
                          + (f" (it ignores the top-level hook_name={top!r}); move it into metadata" if top else
                             "; add metadata.hook_name"))
    for field in ("hook_head_index", "hook_point_head_index"):  # a head index anywhere: one head's slice
        _head_index(meta.get(field, cfg.get(field)), field, where)
    _reshape(cfg.get("reshape_activations", "none"), where, hook)

    # SAELens 6 drops the old activation fields; refuse them where SAELens 3-5 would have computed otherwise
    act_field = next((f for f in ("activation_fn_str", "activation_fn") if f in cfg), None)
    want = "topk" if arch == "topk" else "relu"
    if act_field and cfg[act_field] != want:
        raise _refuse(where, act_field, cfg[act_field], f"in a SAELens {version} file, which SAELens 6 ignores (the "
                      f"architecture {arch!r} alone decides the activation) and older SAELens applied; remove it, or "
                      "set architecture to match")
    kw_k = (cfg.get("activation_fn_kwargs") or {}).get("k") if isinstance(cfg.get("activation_fn_kwargs"), dict) \
        else None
    if arch == "topk":
        if "k" in cfg:
            k = cfg["k"]
        else:
            k = kw_k if kw_k is not None else TOPK_K_DEFAULT
            if kw_k is None and k > d_sae:
                raise SAEError(f"{where}: no k, and SAELens's default k={TOPK_K_DEFAULT} (TopKSAEConfig) exceeds "
                               f"d_sae={d_sae} (SAELens's torch.topk fails); add the k the SAE was trained with")
            if kw_k is None:
                notes.append(f"{where}: no k: SAELens's default k={TOPK_K_DEFAULT} (TopKSAEConfig, SAELens 6) is used")
        if kw_k is not None and kw_k != k:
            raise SAEError(f"{where}: k={k!r} and activation_fn_kwargs.k={kw_k!r} disagree (SAELens {version} reads "
                           "k and ignores activation_fn_kwargs); keep one")
        out["k"] = _topk_k(k, d_sae, where)
        out["rescale"] = _bool(cfg, "rescale_acts_by_decoder_norm", False, where, notes,
                               " (SAELens before 6.14 had no such field)")
    else:
        out["k"] = None
    out["apply_b_dec_to_input"] = _bool(cfg, "apply_b_dec_to_input", True, where, notes)
    norm = cfg.get("normalize_activations", "none")
    if norm is None:
        raise _refuse(where, "normalize_activations", None, f"in a SAELens {version} file: SAELens 6 refuses it "
                                                          "(its SAEConfig checks the value); write \"none\"")
    out["normalize_activations"] = _normalization(norm, where)
    out["finetuning_scaling_factor"] = False  # not a SAELens 6 field: a scaling_factor tensor cannot be loaded
    out["metadata"] = meta
    return out


# The metadata SAELens keeps (LLM_METADATA_KEYS); none of it changes what encode and decode compute.
METADATA_KEYS = ("model_name", "hook_name", "model_class_name", "hook_head_index", "model_from_pretrained_kwargs",
                 "prepend_bos", "exclude_special_tokens", "neuronpedia_id", "context_size", "seqpos_slice",
                 "dataset_path", "sae_lens_version", "sae_lens_training_version", "hook_name_out",
                 "hook_head_index_out", "hf_hook_name", "hf_hook_name_out")


def read_cfg(cfg: Any, where: str) -> SAELensConfig:
    """What SAELens's load_from_disk reads from cfg.json (a parsed JSON object) in each of its layouts.

    where: the file, for messages. Raises SAEError in one line naming the field for what this toolkit does not
    read faithfully.
    """
    if not isinstance(cfg, dict):
        raise SAEError(f"{where}: not a JSON object of fields; SAELens writes cfg.json as one")
    notes: list[str] = []
    version, is6 = _version(cfg, where)
    layout = f"SAELens {version}" if version else "SAELens < 6 (no sae_lens_version)"
    d_in = _int(cfg, "d_in", where, "SAELens requires it")
    d_sae = _int(cfg, "d_sae", where, "SAELens requires it")
    r = _v6(cfg, where, version, d_sae, notes) if is6 else _pre6(cfg, where, d_sae, notes)
    hook = r["hook_name"]
    if hook is not None and (not isinstance(hook, str) or not hook):
        raise _refuse(where, "hook_name", hook, "is not a hook name; write the TransformerLens hook the SAE reads")
    if hook is None:
        notes.append(r["no_hook"])
    return SAELensConfig(
        architecture=r["architecture"], d_in=d_in, d_sae=d_sae, dtype=_dtype(cfg, where), k=r["k"],
        rescale_acts_by_decoder_norm=r.get("rescale", False), apply_b_dec_to_input=r["apply_b_dec_to_input"],
        normalize_activations=r["normalize_activations"], finetuning_scaling_factor=r["finetuning_scaling_factor"],
        hook_name=hook, no_hook=r.get("no_hook", ""), metadata=r["metadata"], layout=layout, pre6=not is6,
        notes=tuple(notes))


def _order(name: str) -> tuple[int, str]:  # W_enc, W_dec, b_dec first: the shapes cfg.json's d_in, d_sae give
    return (["W_enc", "W_dec", "b_dec"].index(name) if name in ("W_enc", "W_dec", "b_dec") else 3, name)


def read_weights(tensors: dict[str, Tensor], c: SAELensConfig, where: str,
                 cfg_where: str) -> tuple[dict[str, Tensor], list[str]]:
    """The tensors of sae_weights.safetensors as SAELens loads them for `c`, and one note per thing done.

    Casts every tensor to c.dtype (read_sae_components_from_disk), drops an all-ones scaling_factor, keeps a
    finetuning one as "finetuning_scaling_factor" where the SAELens that wrote the file applies it, and checks the
    architecture's tensors and shapes (W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_dec [d_in], the others [d_sae]).
    Raises SAEError in one line: where the file cannot be loaded as SAELens does.
    """
    dtype = DTYPES[c.dtype]
    out = {name: tensors[name].to(dtype) for name in sorted(tensors, key=_order)}
    notes = []
    stored = sorted({str(t.dtype).replace("torch.", "") for t in tensors.values()})
    if c.dtype != "float32" or stored != ["float32"]:
        notes.append(f"{cfg_where}: dtype {c.dtype!r} (tensors stored as {', '.join(stored)}): the weights are cast "
                     f"to {c.dtype} and encode computes in it, as SAELens does; results are returned as "
                     f"{'float64' if c.dtype == 'float64' else 'float32'}")
    for name, t in out.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise SAEError(f"{where}: tensor {name} overflows {c.dtype}, the dtype cfg.json gives (SAELens casts the "
                           f"weights to it); fix the dtype in cfg.json")
    scale = out.pop("scaling_factor", None)
    want = TENSORS[c.architecture]
    extra = sorted(set(out) - set(want))
    if extra:
        why = {"log_threshold": "log_threshold is JumpReLU training state: SAELens's inference SAE reads threshold "
                                "(= exp(log_threshold)); save it as threshold",
               "finetuning_scaling_factor": "SAELens 3.2 and later read a finetuning scaling factor only under the "
                                            "name scaling_factor; rename it"}
        hint = "; ".join(why[n] for n in extra if n in why) or "remove them"
        raise SAEError(f"{where}: tensor(s) {extra} that a SAELens {c.architecture} SAE does not hold (SAELens's "
                       f"load_state_dict refuses them); {hint}")
    missing = [n for n in want if n not in out]
    if missing:
        raise SAEError(f"{where}: missing tensor(s) {missing} of a SAELens {c.architecture} SAE")
    if scale is None:
        if c.finetuning_scaling_factor:
            notes.append(f"{cfg_where}: finetuning_scaling_factor is true but the weights hold no scaling_factor: "
                         "nothing to apply, as SAELens sets it to false")
    elif torch.allclose(scale, torch.ones_like(scale)):
        notes.append(f"{where}: tensor scaling_factor is all ones: dropped, as SAELens does")
    elif c.finetuning_scaling_factor:
        out["finetuning_scaling_factor"] = scale
        notes.append(f"{where}: decode multiplies the features by tensor scaling_factor (finetuning_scaling_factor "
                     "is true), as SAELens 3-5 do")
    elif c.pre6:
        raise SAEError(f"{where}: tensor scaling_factor is not all ones but cfg.json's finetuning_scaling_factor is "
                       "not true (SAELens 3 and later refuse this: 'Scaling factor is present but "
                       "finetuning_scaling_factor is False'; SAELens 2 multiplied the features by it in decode); set "
                       "finetuning_scaling_factor to true if decode should scale the features by it")
    else:
        raise SAEError(f"{where}: tensor scaling_factor is not all ones, and SAELens 6 cannot load a finetuning "
                       "scaling factor (its SAEs have no such parameter); fold it into W_dec "
                       "(W_dec * scaling_factor[:, None]), drop it and save again")
    shapes = {"W_enc": (c.d_in, c.d_sae), "W_dec": (c.d_sae, c.d_in), "b_dec": (c.d_in,)}
    for name in out:
        shape = shapes.get(name, (c.d_sae,))
        if tuple(out[name].shape) != shape:
            raise SAEError(f"{where}: {name} has shape {list(out[name].shape)}, cfg.json says {list(shape)}")
    return out, notes


