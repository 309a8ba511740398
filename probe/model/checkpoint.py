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
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from probe.artifacts import (
    COCONUT_CONFIG, DCP_METADATA, DCP_SUFFIX, HF_CONFIG, HF_WEIGHT_FILES, HF_WEIGHT_INDEXES, HF_WEIGHTS, MODEL_CARD,
    RBS_CHECKPOINT, RBS_CONFIG, RBS_DIR, TOKENIZER_CONFIG, TOKENIZER_FILE,
)
from probe.atomic import atomic_directory
from probe.model.finite import check_finite_tensors
from probe.formats import check_version, read_json_object
from probe.model.architecture import ArchitectureError
from probe.model.coconut import CoconutConfig, CoconutModel
from probe.model.identity import pin
from probe.model.placement import parse_device, parse_dtype
from probe.model.state_dicts import (
    OFFICIAL_ALIASES, OFFICIAL_PREFIX, CheckpointError, Target, embedding_key, fit_state_dict, model_name,
    read_state_dict, tied_keys,
)
from probe.model.tokenizer import (
    RBS_VOCABULARY, TokenizerError, add_latent_tokens, build_rbs_tokenizer, check_json_files, is_rbs_tokenizer,
    load_tokenizer, special_tokens,
)

FORMAT_VERSION = 1
RBS_TOKENIZER = "rbs"  # the tokenizer argument's word for RbS's built-in vocabulary (build_rbs_tokenizer)


# What our format's directory must hold beside coconut.json (save_pretrained's files), in the order reported.
OUR_FILES = (HF_CONFIG, HF_WEIGHTS, TOKENIZER_FILE, TOKENIZER_CONFIG)

# The default model ships in the repository, beside the package (an editable install finds it).
DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "prosqa-coconut"


class CheckpointNote(UserWarning):
    """What a loader did to read a file another tool wrote, for the user to know (a wrapper prefix it dropped)."""


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
    (directory / MODEL_CARD).write_text(card or default_card(model, metadata or {}))


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
    embedding = embedding_key(model.base)
    tied = tied_keys(model.base)
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
    notes: list[str] | None = None,
    **official: Any,
) -> tuple[CoconutModel, PreTrainedTokenizerBase]:
    """Load our directory format, or an official (or RbS) state-dict file given its base: a base model directory
    or a config JSON file, and optionally its tokenizer ("rbs" or a tokenizer directory; see load_official). notes:
    a list that receives what the loader did to read another tool's file (see load_official).

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
        model, tok = load_official(path, base, tokenizer=tokenizer, notes=notes, **official)
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
    if (path / DCP_METADATA).is_file() and any(path.glob(f"*{DCP_SUFFIX}")):
        raise CheckpointError(f"{path}: a torch.distributed.checkpoint directory (FSDP's sharded state dict, or "
                              f"accelerate's), whose {DCP_METADATA} is a pickle that could run any code, so it is not "
                              "read here; convert it where you trust it (python -m "
                              f"torch.distributed.checkpoint.format_utils dcp_to_torch {path} FILE) and pass FILE with "
                              "--base")
    if not meta_file.is_file():
        if (path / HF_CONFIG).is_file():
            raise CheckpointError(f"{path}: a Hugging Face model directory without {COCONUT_CONFIG}: a base model, "
                                  "not a Coconut checkpoint; give it as --base beside an official state-dict file "
                                  "(--ckpt FILE), or train a Coconut model from it (`probe train`, config `base: DIR`)")
        raise CheckpointError(f"{path}: not a coconut-probe checkpoint (no {COCONUT_CONFIG}); --ckpt takes a directory "
                              "that `probe train` or `probe release` wrote, or an official state-dict file with --base")
    meta = read_meta(path)
    try:
        config = CoconutConfig.from_dict(meta, str(meta_file))
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    # save_pretrained writes weights past its max_shard_size as shards, with their index in place of model.safetensors
    missing = [name for name in OUR_FILES if not (path / name).is_file()
               and not (name == HF_WEIGHTS and (path / HF_WEIGHT_INDEXES[0]).is_file())]
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
    for index in HF_WEIGHT_INDEXES:
        try:
            shard = json.loads((directory / index).read_text()).get("weight_map", {}).get(name)
        except (OSError, ValueError, AttributeError):
            continue
        if shard:
            return directory / shard
    return next((directory / f for f in HF_WEIGHT_FILES if (directory / f).is_file()), directory)


def check_weights(model: PreTrainedModel, directory: str | os.PathLike) -> None:
    """Refuse a Hugging Face model, loaded from `directory`, whose weights hold NaN or inf (probe.model.finite, the one
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
                f"{path}: tokenizer {name}={getattr(ids, name)} but {COCONUT_CONFIG} says {getattr(config, name)}"
            )


def load_official(
    path: str | os.PathLike,
    base: str | os.PathLike,
    *,
    tokenizer: str | os.PathLike | None = None,
    mode: str = "coconut",
    c_thought: int = 1,
    max_latent_stage: int | None = None,
    pad_latent_to_max: bool | None = None,
    notes: list[str] | None = None,
) -> tuple[CoconutModel, PreTrainedTokenizerBase]:
    """Load a state dict saved by the official implementation (or RbS's), with strict key and shape checking.

    The file is a torch.save or safetensors file of the wrapper's state dict, as saved in the wild: its keys may
    carry a wrapper's names (DDP's `module.`, torch.compile's `_orig_mod.`, ...) or a prefix all share, or be the
    bare base model's; its tied embedding may be saved under any of its names, and an output head other than the
    embedding in a config that ties them makes the model untied (as transformers reads such a file); its tensors may
    be in any float dtype (read into the float32 model). probe.model.state_dicts reads it; docs/formats.md lists each
    kind. What was done to read it is told once: appended to `notes` when given, else a CheckpointNote warning.

    base: a base model directory (its config.json, and its tokenizer unless `tokenizer` is given) or a config JSON
    file (RbS's configs/symbol-2layer-8head-768dim.json). tokenizer: None for the base directory's, "rbs" for RbS's
    built-in vocabulary, or a tokenizer directory. A tokenizer of RbS's vocabulary (the word, or a directory holding
    it) makes the model one of RbS's data format: data_format "rbs", supervision "optimal", max_latent_stage 4 and,
    as their evaluation runs each item with its own number of hops, pad_latent_to_max False; the embedding must have
    exactly its 40 rows. Any other tokenizer gets the latent tokens when it lacks them and the embedding is resized
    to it (data_format "sentences", max_latent_stage 6, pad_latent_to_max True). max_latent_stage and
    pad_latent_to_max, when given, replace those defaults.

    Raises CheckpointError in one line: a base that is neither a directory nor a config file, a config file without
    a tokenizer, an unreadable config or tokenizer, a file that is not a state dict of tensors (a sharded one among
    them), a vocabulary the embedding does not fit, the first tensor whose shape differs (both shapes), an
    `embedding.weight` that is not the input embedding; in at most three lines keys missing or unexpected (how
    many, the first few, the likely cause) and another model size.
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
        raise CheckpointError(f"{base}: the base directory must hold the base model's {HF_CONFIG} and tokenizer")
    state = read_state_dict(path)
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
    what = f"the {model_name(cfg.model_type)} of {base}"
    if rbs:
        special, rows = special_tokens(tok), None
    else:
        special, rows = add_latent_tokens(tok), len(tok)
        what += f" with the tokenizer's {len(tok)} tokens"
    model = _base_model(cfg, rows)
    fitted = fit_state_dict(path, state, Target.of(model, what, config_file))
    if fitted.untied:  # its head is not its embedding: built with a head of its own, as transformers builds it
        cfg.tie_word_embeddings = False
        model = _base_model(cfg, rows)
    model.load_state_dict(fitted.base, strict=False)
    fmt = {"data_format": "rbs", "supervision": "optimal", "max_latent_stage": 4, "pad_latent_to_max": False} if rbs \
        else {"data_format": "sentences", "max_latent_stage": 6, "pad_latent_to_max": True}
    given = {"max_latent_stage": max_latent_stage, "pad_latent_to_max": pad_latent_to_max}
    config = CoconutConfig.from_special(special, mode=mode, c_thought=c_thought,
                                        **{**fmt, **{k: v for k, v in given.items() if v is not None}})
    if fitted.note:
        _tell(f"{path}: {fitted.note}", notes)
    return CoconutModel(model, config), tok


def _base_model(cfg: PretrainedConfig, rows: int | None) -> PreTrainedModel:
    """A randomly initialised model of the config, its embedding resized to `rows` (None: the config's size)."""
    model = AutoModelForCausalLM.from_config(cfg)
    if rows is not None:
        model.resize_token_embeddings(rows)
    return model


def _tell(note: str, notes: list[str] | None) -> None:
    """A note for the user: into `notes` when the caller collects them (the CLI prints each as a `note:` line), else a
    CheckpointNote warning."""
    if notes is None:
        warnings.warn(note, CheckpointNote, stacklevel=4)
    else:
        notes.append(note)


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
