"""Coconut checkpoints: our directory format, and the official repository's torch.save state dict.

Ours: a directory with the Hugging Face model files (config.json, model.safetensors), the
tokenizer files, coconut.json (CoconutConfig plus metadata) and a README.md model card.

Official: `torch.save(Coconut(...).state_dict())`: keys `base_causallm.*` (plus
`embedding.weight`, the wrapper's alias of the input embeddings), embeddings resized to the
base vocabulary + 3. It needs the base model's config: a base directory holding its config.json and
its tokenizer, or a config JSON file with a tokenizer given apart; the latent tokens are added to the
tokenizer when absent.

RbS's: the same wrapper's state dict over their GPT-2 (docs/rbs-notes.md, section 4), read with their config
file and RbS's built-in 40-token vocabulary (tokenizer "rbs"), which must match the embedding exactly. A
checkpoint of ours in their data format also holds their two files under rbs/ (`rbs_state_dict`, `rbs_config`).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from probe.artifacts import COCONUT_CONFIG, HF_CONFIG, HF_WEIGHTS, RBS_CHECKPOINT, RBS_CONFIG, RBS_DIR
from probe.atomic import atomic_directory
from probe.finite import check_finite_tensors
from probe.formats import check_version, read_json_object
from probe.model.architecture import ArchitectureError
from probe.model.coconut import CoconutConfig, CoconutModel
from probe.model.identity import pin
from probe.model.placement import parse_device, parse_dtype
from probe.model.tokenizer import (
    RBS_VOCABULARY, TOKENIZER_CONFIG, TOKENIZER_FILE, TokenizerError, add_latent_tokens, build_rbs_tokenizer,
    check_json_files, is_rbs_tokenizer, load_tokenizer, special_tokens,
)

FORMAT_VERSION = 1
OFFICIAL_PREFIX = "base_causallm."
# The official wrapper keeps the input embedding as `self.embedding`, so it is saved twice.
OFFICIAL_ALIASES = ("embedding.weight",)
RBS_TOKENIZER = "rbs"  # the tokenizer argument's word for RbS's built-in vocabulary (build_rbs_tokenizer)


# What our format's directory must hold beside coconut.json (save_pretrained's files), in the order reported.
OUR_FILES = (HF_CONFIG, HF_WEIGHTS, TOKENIZER_FILE, TOKENIZER_CONFIG)
# transformers' weight files, and the indexes that map each tensor to its shard.
WEIGHT_FILES = (HF_WEIGHTS, "pytorch_model.bin")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")

# The default model ships in the repository, beside the package (an editable install finds it).
DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "prosqa-coconut"


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or does not match its tokenizer."""


def default_checkpoint() -> Path:
    """The shipped default model (checkpoints/prosqa-coconut of the repository)."""
    if not (DEFAULT_CHECKPOINT / COCONUT_CONFIG).is_file():
        raise CheckpointError(
            f"{DEFAULT_CHECKPOINT}: the default checkpoint is not there (it ships with the repository's "
            "checkpoints/ directory; install from a clone with `pip install -e .`, or pass --ckpt)"
        )
    return DEFAULT_CHECKPOINT


def save_checkpoint(
    model: CoconutModel,
    tokenizer: PreTrainedTokenizerBase,
    path: str | os.PathLike,
    *, card: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write our directory format atomically (a temporary directory renamed into place)."""
    path = Path(path)
    with atomic_directory(path, replace=True) as tmp:
        write_checkpoint(model, tokenizer, tmp, card=card, metadata=metadata)
    return path


def write_checkpoint(
    model: CoconutModel,
    tokenizer: PreTrainedTokenizerBase,
    directory: Path,
    *, card: str | None = None,
    metadata: dict[str, Any] | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write our format's files into an existing directory (the caller makes the whole write atomic).

    The weights are stored in the model's dtype (a bfloat16 model writes bfloat16); state_dict (the base's
    weights by name) replaces the model's own, as a sharded run's gathered weights. A model in RbS's data format
    also gets their files, rbs/checkpoint (`rbs_state_dict`, in the same dtype) and rbs/config.json (`rbs_config`).
    """
    model.base.save_pretrained(directory, safe_serialization=True, state_dict=state_dict)
    tokenizer.save_pretrained(directory)
    meta = {"format_version": FORMAT_VERSION, **model.config.__dict__, "metadata": metadata or {}}
    (directory / COCONUT_CONFIG).write_text(json.dumps(meta, indent=2))
    if model.config.data_format == "rbs":
        write_rbs_files(model, directory, state_dict)
    (directory / "README.md").write_text(card or default_card(model, metadata or {}))


def write_rbs_files(model: CoconutModel, directory: str | os.PathLike,
                    state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Write RbS's two files of a model into directory/rbs (made if absent, files replaced): `rbs/checkpoint`
    (`rbs_state_dict`) and `rbs/config.json` (`rbs_config`), as their run.py loads them. write_checkpoint calls it
    for a model in data format rbs; scripts/ship_default.sh calls it again after a trip that left rbs/ out (it
    doubles the weights). Returns the rbs directory."""
    out = Path(directory) / RBS_DIR
    out.mkdir(exist_ok=True)
    torch.save(rbs_state_dict(model, state_dict), out / RBS_CHECKPOINT)
    (out / RBS_CONFIG).write_text(json.dumps(rbs_config(model), indent=2, sort_keys=True) + "\n")
    return out


def rbs_state_dict(model: CoconutModel, state_dict: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The state dict of RbS's Coconut wrapper around this model's base, as their run.py saves it: `base_causallm.`
    + every key of the base's state dict (the tied lm_head.weight included), then `embedding.weight`, the input
    embedding again. Each tensor a contiguous copy of its own, in the dtype stored (a bfloat16 release writes
    bfloat16, which keeps the file as small as the safetensors one; their load_state_dict casts it into their float32
    model). state_dict (the base's weights by name, as
    write_checkpoint takes it) replaces the model's own; a tied key it lacks is read from the embedding. Raises
    KeyError when it lacks another key of the base's."""
    own = model.base.state_dict()
    given = own if state_dict is None else state_dict
    embedding = _embedding_key(model.base)
    tied = _tied_keys(model.base)
    out = {}
    for key in own:
        value = given.get(key)
        if value is None and key in tied:
            value = given.get(embedding)
        if value is None:
            raise KeyError(f"the state dict given holds no {key}")
        out[OFFICIAL_PREFIX + key] = value.detach().to("cpu").contiguous().clone()
    out[OFFICIAL_ALIASES[0]] = out[OFFICIAL_PREFIX + embedding].clone()
    return out


def rbs_config(model: CoconutModel) -> dict[str, Any]:
    """The base's config as RbS's config file holds it (configs/symbol-2layer-8head-768dim.json): every field,
    `architectures` naming the base's class (GPT2LMHeadModel), no dtype (their file has none; their loading casts
    rbs/checkpoint into the float32 model it builds)."""
    cfg = model.base.config.to_dict()
    cfg["architectures"] = [type(model.base).__name__]
    for key in ("dtype", "torch_dtype"):
        cfg.pop(key, None)
    return cfg


def card_format(model: CoconutModel) -> str:
    """What a model card says of the checkpoint's data format and vocabulary (default_card, release's card)."""
    fmt = model.config.data_format
    if fmt == "rbs":
        return (f"data format rbs, RbS's {len(RBS_VOCABULARY)}-token vocabulary; {RBS_DIR}/{RBS_CHECKPOINT} loads in "
                "their code unchanged")
    rows = model.base.get_input_embeddings().num_embeddings
    return f"data format {fmt}, a {rows}-token vocabulary of its own (the tokenizer files here)"


def default_card(model: CoconutModel, metadata: dict[str, Any]) -> str:
    """A minimal model card: what the model is and how it was made."""
    cfg = model.base.config
    lines = [
        f"# Coconut checkpoint ({model.config.mode})",
        "",
        f"- base: {cfg.model_type}, {sum(p.numel() for p in model.base.parameters()):,} parameters",
        f"- {card_format(model)}; c_thought={model.config.c_thought}, "
        f"max_latent_stage={model.config.max_latent_stage}, pad_latent_to_max={model.config.pad_latent_to_max}",
    ]
    lines += [f"- {k}: {v}" for k, v in metadata.items()]
    return "\n".join(lines) + "\n"


def load_checkpoint(
    path: str | os.PathLike,
    base: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
    tokenizer: str | os.PathLike | None = None,
    **official: Any,
) -> tuple[CoconutModel, PreTrainedTokenizerBase]:
    """Load our directory format, or an official (or RbS) state-dict file given its base: a base model directory
    or a config JSON file, and optionally its tokenizer ("rbs" or a tokenizer directory; see load_official).

    With a dtype other than float32 the model's identity (probe.model.identity) is pinned first, so
    readouts fit on the stored weights still accept it. device and dtype are read by probe.model.placement
    (a dtype may be given by name). Raises CheckpointError for a missing or unreadable checkpoint, or a base or
    tokenizer given with one of ours (a directory holds its own); PlacementError for a device absent here or an
    unknown dtype.
    """
    device, dtype = parse_device(device), parse_dtype(dtype)
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    if path.is_dir():
        if base is not None:
            raise CheckpointError(f"{path}: a base model directory (--base) is only for official checkpoint files; "
                                  "this is one of ours (a directory)")
        if tokenizer is not None:
            raise CheckpointError(f"{path}: a tokenizer (--tokenizer) is only for official checkpoint files; this is "
                                  "one of ours (a directory), which holds its own")
        model, tok = _load_ours(path)
    else:
        if base is None:
            raise CheckpointError(
                f"{path}: an official checkpoint file needs its base model directory (--base DIR), "
                "with the base model's config and tokenizer, or its config file (--base CONFIG.json --tokenizer ...)"
            )
        model, tok = load_official(path, base, tokenizer=tokenizer, **official)
    model.base.eval()
    try:
        model.check_computation()
    except ArchitectureError as e:
        raise CheckpointError(f"{path}: {e}") from None
    if dtype is not None and dtype != torch.float32:
        pin(model)  # the lens, probes and SAEs fit on the stored weights serve the cast copy too
    model.to(device=device, dtype=dtype)
    return model, tok


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The coconut.json of one of our checkpoint directories, decoded, its format_version checked (probe.formats:
    up to FORMAT_VERSION; newer is refused as a newer coconut-probe's). Raises CheckpointError naming the file."""
    meta_file = Path(path) / COCONUT_CONFIG
    meta = read_json_object(meta_file, CheckpointError, COCONUT_CONFIG)
    check_version(meta.get("format_version"), FORMAT_VERSION, str(meta_file), error=CheckpointError)
    return meta


def _load_ours(path: Path) -> tuple[CoconutModel, PreTrainedTokenizerBase]:
    meta_file = path / COCONUT_CONFIG
    if not meta_file.is_file():
        if (path / HF_CONFIG).is_file():
            raise CheckpointError(f"{path}: a Hugging Face model directory without coconut.json: a base model, not a "
                                  "Coconut checkpoint; give it as --base beside an official state-dict file (--ckpt "
                                  "FILE), or train a Coconut model from it (`probe train`, config `base: DIR`)")
        raise CheckpointError(f"{path}: not a coconut-probe checkpoint (no coconut.json); --ckpt takes a directory "
                              "that `probe train` or `probe release` wrote, or an official state-dict file with --base")
    meta = read_meta(path)
    try:
        config = CoconutConfig.from_dict(meta, str(meta_file))
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    missing = [name for name in OUR_FILES if not (path / name).is_file()]
    if missing:
        raise CheckpointError(f"{path}: the checkpoint is incomplete: missing {', '.join(missing)} (a checkpoint "
                              f"holds {', '.join((COCONUT_CONFIG, *OUR_FILES))}); copy the whole directory again")
    check_json_files(path, (HF_CONFIG, TOKENIZER_FILE, TOKENIZER_CONFIG), CheckpointError)
    try:
        tok = load_tokenizer(path)
    except TokenizerError as e:
        raise CheckpointError(str(e)) from None
    try:
        # float32 whatever the stored dtype (a release may store bfloat16); --dtype casts afterwards.
        base = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)
    except SafetensorError as e:
        raise CheckpointError(f"{path / HF_WEIGHTS}: not a readable safetensors file ({e}); the file is damaged or "
                              "truncated: copy the checkpoint again") from None
    except (OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: cannot load the model ({type(e).__name__}: {e})") from None
    check_weights(base, path)
    _check_match(path, base, tok, config)
    return CoconutModel(base, config), tok


def weights_file(directory: str | os.PathLike, name: str) -> Path:
    """The file of a Hugging Face model directory that stores the tensor `name`: its shard (by the index), the one
    weights file, or the directory itself when neither says."""
    directory = Path(directory)
    for index in WEIGHT_INDEXES:
        try:
            shard = json.loads((directory / index).read_text()).get("weight_map", {}).get(name)
        except (OSError, ValueError, AttributeError):
            continue
        if shard:
            return directory / shard
    return next((directory / f for f in WEIGHT_FILES if (directory / f).is_file()), directory)


def check_weights(model: PreTrainedModel, directory: str | os.PathLike) -> None:
    """Refuse a Hugging Face model, loaded from `directory`, whose weights hold NaN or inf (probe.finite, the one
    check of every loader): CheckpointError naming the file and the first bad tensor."""
    check_finite_tensors(model.state_dict().items(), lambda name: str(weights_file(directory, name)), CheckpointError)


def _check_match(path: Path, base: PreTrainedModel, tok: PreTrainedTokenizerBase, config: CoconutConfig) -> None:
    """Refuse a tokenizer whose size or latent ids disagree with the model."""
    rows = base.get_input_embeddings().num_embeddings
    if len(tok) > rows:
        raise CheckpointError(f"{path}: the tokenizer has {len(tok)} tokens but the model's embedding has {rows} rows")
    try:
        ids = special_tokens(tok)
    except TokenizerError as e:
        raise CheckpointError(f"{path}: {e}") from None
    for name in ("start_id", "end_id", "latent_id", "eos_id"):
        if getattr(ids, name) != getattr(config, name):
            raise CheckpointError(
                f"{path}: tokenizer {name}={getattr(ids, name)} but coconut.json says {getattr(config, name)}"
            )


def _tied_keys(model: PreTrainedModel) -> set[str]:
    """Parameters that alias another (a tied output head), which a state dict may omit."""
    if not getattr(model.config, "tie_word_embeddings", False):
        return set()
    keys = getattr(model, "_tied_weights_keys", None) or []
    return set(keys.keys() if isinstance(keys, dict) else keys)


def _embedding_key(model: PreTrainedModel) -> str:
    weight = model.get_input_embeddings().weight
    return next(k for k, v in model.state_dict(keep_vars=True).items() if v is weight)


def load_official(
    path: str | os.PathLike,
    base: str | os.PathLike,
    *,
    tokenizer: str | os.PathLike | None = None,
    mode: str = "coconut",
    c_thought: int = 1,
    max_latent_stage: int | None = None,
    pad_latent_to_max: bool | None = None,
) -> tuple[CoconutModel, PreTrainedTokenizerBase]:
    """Load a state dict saved by the official implementation (or RbS's), with strict key and shape checking.

    base: a base model directory (its config.json, and its tokenizer unless `tokenizer` is given) or a config JSON
    file (RbS's configs/symbol-2layer-8head-768dim.json). tokenizer: None for the base directory's, "rbs" for RbS's
    built-in vocabulary, or a tokenizer directory. A tokenizer of RbS's vocabulary (the word, or a directory holding
    it) makes the model one of RbS's data format: data_format "rbs", supervision "optimal", max_latent_stage 4 and,
    as their evaluation runs each item with its own number of hops, pad_latent_to_max False; the embedding must have
    exactly its 40 rows. Any other tokenizer gets the latent tokens when it lacks them and the embedding is resized
    to it (data_format "sentences", max_latent_stage 6, pad_latent_to_max True). max_latent_stage and
    pad_latent_to_max, when given, replace those defaults.

    Raises CheckpointError in one line: a base that is neither a directory nor a config file, a config file without
    a tokenizer, an unreadable config or tokenizer, a vocabulary the embedding does not fit, the first missing and
    first unexpected key (with how many), the first tensor whose shape differs (both shapes), an `embedding.weight`
    that is not the input embedding.
    """
    path, base = Path(path), Path(base)
    if base.is_file():
        config_file = base
        if tokenizer is None:
            raise CheckpointError(f"--base {base} holds no tokenizer; pass --tokenizer rbs or a tokenizer directory")
    elif base.is_dir() and (base / HF_CONFIG).is_file():
        config_file = base / HF_CONFIG
    elif not base.exists() and base.suffix == ".json":
        raise CheckpointError(f"{base}: no such config file; --base takes a config JSON file or a base model "
                              "directory")
    else:
        raise CheckpointError(f"{base}: the base directory must hold the base model's config.json and tokenizer")
    state = _read_state_dict(path)
    check_finite_tensors(state.items(), str(path), CheckpointError)
    check_json_files(config_file.parent, (config_file.name,), CheckpointError)
    tok = _official_tokenizer(base, tokenizer)
    try:
        cfg = AutoConfig.from_pretrained(str(base), local_files_only=True)
    except (OSError, ValueError, TypeError, AttributeError, KeyError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{config_file}: not a model config transformers reads ({reason})") from None
    rbs = is_rbs_tokenizer(tok)
    if rbs and getattr(cfg, "vocab_size", len(tok)) != len(tok):  # checked before a model of that size is built
        raise CheckpointError(f"{config_file}: vocab_size {cfg.vocab_size}, but RbS's vocabulary has {len(tok)} "
                              f"tokens; their models' config has vocab_size {len(tok)}, and its embedding rows are "
                              "these tokens (no resizing)")
    model = AutoModelForCausalLM.from_config(cfg)
    what = f"the {_MODEL_NAMES.get(cfg.model_type, cfg.model_type)} of {base}"
    if rbs:
        special = special_tokens(tok)
    else:
        special = add_latent_tokens(tok)
        model.resize_token_embeddings(len(tok))
        what += f" with the tokenizer's {len(tok)} tokens"
    base_state = {k[len(OFFICIAL_PREFIX):]: v for k, v in state.items() if k.startswith(OFFICIAL_PREFIX)}
    expected = model.state_dict()
    tied = _tied_keys(model)
    missing = sorted(OFFICIAL_PREFIX + k for k in expected if k not in base_state and k not in tied)
    unexpected = sorted(
        k for k in state if not k.startswith(OFFICIAL_PREFIX) and k not in OFFICIAL_ALIASES
    ) + sorted(OFFICIAL_PREFIX + k for k in base_state if k not in expected)
    if missing or unexpected:
        raise CheckpointError(f"{path}: state dict does not match {what}: " + "; ".join(
            f"{name} {keys[0]} ({len(keys)} {name} key{'s' if len(keys) > 1 else ''} in all)"
            for name, keys in (("missing", missing), ("unexpected", unexpected)) if keys))
    shapes = [k for k, v in expected.items() if k in base_state and base_state[k].shape != v.shape]
    if shapes:
        k = shapes[0]
        more = f" ({len(shapes)} tensors differ in shape in all)" if len(shapes) > 1 else ""
        raise CheckpointError(f"{path}: {OFFICIAL_PREFIX}{k} is {list(base_state[k].shape)} in the checkpoint but "
                              f"{list(expected[k].shape)} in {what}{more}")
    model.load_state_dict(base_state, strict=False)
    for alias in OFFICIAL_ALIASES:  # the wrapper's second name for the input embedding: it must be that tensor
        if alias in state and not torch.equal(state[alias], model.get_input_embeddings().weight.detach()):
            raise CheckpointError(f"{path}: {alias} differs from the base model's input embedding "
                                  f"({OFFICIAL_PREFIX}{_embedding_key(model)}); the file is not one official wrapper's")
    fmt = {"data_format": "rbs", "supervision": "optimal", "max_latent_stage": 4, "pad_latent_to_max": False} if rbs \
        else {"data_format": "sentences", "max_latent_stage": 6, "pad_latent_to_max": True}
    given = {"max_latent_stage": max_latent_stage, "pad_latent_to_max": pad_latent_to_max}
    config = CoconutConfig.from_special(special, mode=mode, c_thought=c_thought,
                                        **{**fmt, **{k: v for k, v in given.items() if v is not None}})
    return CoconutModel(model, config), tok


# how the loader's one-line errors name a base model's architecture (else its model_type)
_MODEL_NAMES = {"gpt2": "GPT-2", "llama": "Llama"}


def _official_tokenizer(base: Path, tokenizer: str | os.PathLike | None) -> PreTrainedTokenizerBase:
    """The tokenizer of an official checkpoint: the base directory's (tokenizer None), RbS's built-in one (the str
    "rbs"; a Path is always a directory, and on the command line a directory of that name is ./rbs) or the one in a
    tokenizer directory. CheckpointError naming the option when it cannot be read."""
    if tokenizer is None:
        try:
            return load_tokenizer(base)
        except TokenizerError as e:
            raise CheckpointError(f"--base {e}") from None
    if isinstance(tokenizer, str) and tokenizer == RBS_TOKENIZER:
        return build_rbs_tokenizer()
    try:
        return load_tokenizer(tokenizer)
    except TokenizerError as e:
        raise CheckpointError(f"--tokenizer {e}") from None


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in a torch.save file, read without unpickling code (weights_only); CheckpointError in one
    line saying what the file holds instead and how to make the file this loader reads."""
    save = "torch.save(model.state_dict(), FILE)"
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file; pass the file that {save} wrote")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # weights_only refuses anything but tensors and plain containers
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found or zipfile.is_zipfile(path):  # torch.save's archive, holding something besides tensors
            what = f" ({found.group(1)})" if found else ""
            raise CheckpointError(f"{path}: holds a pickled Python object{what}, not only tensors, and unpickling it "
                                  f"could run any code; save the model's state dict alone ({save}) and pass that "
                                  "file") from None
        raise CheckpointError(f"{path}: not a readable torch.save state dict (not a file torch.save wrote); pass the "
                              f"file that {save} wrote") from None
    except Exception as e:  # torch raises zip, runtime and OS errors for a damaged file
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if zipfile.is_zipfile(path) and ("archive" in reason or "PytorchStreamReader" in reason):
            raise CheckpointError(f"{path}: a zip archive, but not one torch.save wrote ({reason}); pass the file that "
                                  f"{save} wrote") from None
        raise CheckpointError(f"{path}: not a readable torch.save state dict ({type(e).__name__}: {reason}); the file "
                              "is damaged or truncated: copy it again") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict of tensors (a dict from names to tensors), found a "
                              f"{type(state).__name__}; pass the file that {save} wrote")
    if not state:
        raise CheckpointError(f"{path}: expected a state dict of tensors, found an empty dict; pass the file that "
                              f"{save} wrote")
    others = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if others:
        nested = [k for k in others if isinstance(state[k], dict) and state[k]
                  and all(isinstance(v, torch.Tensor) for v in state[k].values())]
        if nested:
            raise CheckpointError(f"{path}: expected a state dict of tensors, found a dict whose {nested[0]!r} entry "
                                  f"holds the tensors (a training checkpoint?); save that entry alone "
                                  f"(torch.save(checkpoint[{nested[0]!r}], FILE)) and pass that file")
        raise CheckpointError(f"{path}: expected a state dict of tensors, but entry {others[0]!r} is a "
                              f"{type(state[others[0]]).__name__}; pass the file that {save} wrote")
    return state
