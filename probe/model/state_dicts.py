"""State-dict files other tools write, read the way the tool that wrote them reads them.

The official Coconut code (and RbS's) saves `torch.save(Coconut(...).state_dict())`: keys `base_causallm.*` (the
base causal LM's) and `embedding.weight` (the wrapper's second name for the input embedding). Training scripts save
that state dict in other ways too; docs/formats.md ("Official and RbS checkpoint files") lists each, who writes it
and what we do, with its test. Here:

- read_state_dict: a torch.save file (read without unpickling code) or a safetensors file, or a one-line refusal
  saying what the file holds instead (FSDP's sharded tensors, a training checkpoint, ...) and what to pass.
- fit_state_dict: the file's tensors by the base model's own keys, ready for load_state_dict. The one place keys
  are renamed (name_keys): the names module wrappers put into keys (WRAPPERS) are dropped, and then a prefix every key
  shares; a state dict of the bare base model is read as the wrapper's base. A tied embedding may be saved under any
  of its names (tie_embedding). What does not fit is refused in at most three lines: how many keys are missing and
  unexpected, the first few of each, and the likely cause.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
from safetensors import SafetensorError
from transformers import PretrainedConfig, PreTrainedModel

OFFICIAL_PREFIX = "base_causallm."
# The official wrapper keeps the input embedding as `self.embedding`, so it is saved twice.
OFFICIAL_ALIASES = ("embedding.weight",)

# The attribute under which a module wrapper holds the module it wraps, which the wrapper's state dict puts into every
# key (or, for a wrapper of a submodule, into that submodule's keys), and whose wrapper it is. docs/formats.md says how
# we know each. A name that is also one of the model's own submodules is kept.
WRAPPERS = {
    "module": "DistributedDataParallel's or DataParallel's",
    "_orig_mod": "torch.compile's",
    "_fsdp_wrapped_module": "FSDP's",
    "_checkpoint_wrapped_module": "activation checkpointing's",
    "_forward_module": "Lightning's",
    "_original_module": "Lightning's",
}

# The base architectures messages name, with the key of each one's input embedding (which tells a file's).
ARCHITECTURES = {"gpt2": ("GPT-2", "transformer.wte.weight"), "llama": ("Llama", "model.embed_tokens.weight")}

SAVE = "torch.save(model.state_dict(), FILE)"
# Tensor classes that hold one rank's shard of each weight, and how to save the whole weights instead.
SHARDED = {
    "ShardedTensor": "FSDP's sharded tensors (ShardedTensor, from its SHARDED_STATE_DICT or LOCAL_STATE_DICT: each "
                     "rank's own shard of the weights); save the full state dict on rank 0: under "
                     f"FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT), {SAVE}",
    "DTensor": "DTensors (FSDP2's fully_shard or tensor parallelism: each rank's own shard of the weights); save the "
               "full state dict on rank 0: torch.save(get_model_state_dict(model, options=StateDictOptions("
               "full_state_dict=True, cpu_offload=True)), FILE), from torch.distributed.checkpoint.state_dict",
}
SHOWN = 3  # keys a refusal lists of each kind


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or does not match its tokenizer or its base."""


def model_name(model_type: str) -> str:
    """How messages name an architecture: GPT-2, Llama, else its model_type."""
    return ARCHITECTURES.get(model_type, (model_type,))[0]


def embedding_key(model: PreTrainedModel) -> str:
    """The state-dict key of the model's input embedding."""
    weight = model.get_input_embeddings().weight
    return next(k for k, v in model.state_dict(keep_vars=True).items() if v is weight)


def tieable_keys(model: PreTrainedModel) -> set[str]:
    """The parameters (an output head) that the model's class ties to its input embedding when its config says so."""
    keys = getattr(model, "_tied_weights_keys", None) or []
    return set(keys.keys() if isinstance(keys, dict) else keys)


def tied_keys(model: PreTrainedModel) -> set[str]:
    """Parameters that alias another (a tied output head), which a state dict may omit."""
    return tieable_keys(model) if getattr(model.config, "tie_word_embeddings", False) else set()


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a state-dict file: a torch.save file, read without unpickling code (weights_only), or a
    safetensors file (told by its header, or by its name when the header is damaged), read with the safetensors
    library. Raises CheckpointError in one line saying what the file holds instead and what to pass."""
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file; pass the file that {SAVE} wrote")
    state = _read_safetensors(path) if _is_safetensors(path) else _read_torch_save(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict of tensors (a dict from names to tensors), found a "
                              f"{type(state).__name__}; pass the file that {SAVE} wrote")
    if not state:
        raise CheckpointError(f"{path}: expected a state dict of tensors, found an empty dict; pass the file that "
                              f"{SAVE} wrote")
    others = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if others:
        nested = [k for k in others if isinstance(state[k], dict) and state[k]
                  and all(isinstance(v, torch.Tensor) for v in state[k].values())]
        if nested:
            raise CheckpointError(f"{path}: expected a state dict of tensors, found a dict whose {nested[0]!r} entry "
                                  f"holds the tensors (a training checkpoint?); save that entry alone "
                                  f"(torch.save(checkpoint[{nested[0]!r}], FILE)) and pass that file")
        raise CheckpointError(f"{path}: expected a state dict of tensors, but entry {others[0]!r} is a "
                              f"{type(state[others[0]]).__name__}; pass the file that {SAVE} wrote")
    sharded = next((SHARDED[type(v).__name__] for v in state.values() if type(v).__name__ in SHARDED), None)
    if sharded:
        raise CheckpointError(f"{path}: holds {sharded}")
    return state


def _is_safetensors(path: Path) -> bool:
    """A safetensors file starts with its header's length (8 bytes) and the header, a JSON object."""
    if zipfile.is_zipfile(path):  # torch.save's archive
        return False
    with path.open("rb") as f:
        head = f.read(9)
    fits = len(head) == 9 and head[8:] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size
    return fits or path.suffix == ".safetensors"


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({_first_line(e)}); the file is damaged or "
                              "truncated: copy it again") from None


def _read_torch_save(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # weights_only refuses anything but tensors and plain containers
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        sharded = next((what for name, what in SHARDED.items() if name in (found.group(1) if found else str(e))), None)
        if sharded:
            raise CheckpointError(f"{path}: holds {sharded}") from None
        if found or zipfile.is_zipfile(path):  # torch.save's archive, holding something besides tensors
            what = f" ({found.group(1)})" if found else ""
            raise CheckpointError(f"{path}: holds a pickled Python object{what}, not only tensors, and unpickling it "
                                  f"could run any code; save the model's state dict alone ({SAVE}) and pass that "
                                  "file") from None
        raise CheckpointError(f"{path}: not a readable torch.save state dict (not a file torch.save wrote); pass the "
                              f"file that {SAVE} wrote") from None
    except Exception as e:  # torch raises zip, runtime and OS errors for a damaged file
        reason = _first_line(e)
        if zipfile.is_zipfile(path) and ("archive" in reason or "PytorchStreamReader" in reason):
            raise CheckpointError(f"{path}: a zip archive, but not one torch.save wrote ({reason}); pass the file that "
                                  f"{SAVE} wrote") from None
        raise CheckpointError(f"{path}: not a readable torch.save state dict ({type(e).__name__}: {reason}); the file "
                              "is damaged or truncated: copy it again") from None


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


@dataclass(frozen=True)
class Target:
    """What a state dict must fit: the base model's own keys and shapes, and how messages name it.

    what: the model in words ("the GPT-2 of BASE with the tokenizer's N tokens"); config_file: the file a message
    tells the user to edit."""

    what: str
    config: PretrainedConfig
    config_file: Path
    expected: dict[str, torch.Tensor]
    embedding: str
    tieable: frozenset[str]
    tied: frozenset[str]

    @classmethod
    def of(cls, model: PreTrainedModel, what: str, config_file: Path) -> Target:
        return cls(what, model.config, config_file, model.state_dict(), embedding_key(model),
                   frozenset(tieable_keys(model)), frozenset(tied_keys(model)))


@dataclass
class Named:
    """A state dict's tensors by the Coconut wrapper's names: the base model's (by its own keys) and the aliases.

    other: the keys that are neither, as the file writes them; original: a key of base or aliases -> the file's key;
    bare: the file holds the base model's keys without `base_causallm.`; note: what was done to read the file, for
    the user (None when its keys are the wrapper's own); untied: its output head is not its input embedding, though
    the config ties them (tie_embedding)."""

    base: dict[str, torch.Tensor]
    aliases: dict[str, torch.Tensor]
    other: list[str]
    original: dict[str, str]
    bare: bool
    note: str | None
    untied: bool = False


def fit_state_dict(path: Path, state: Mapping[str, torch.Tensor], target: Target) -> Named:
    """A Coconut state dict's tensors by the base model's own keys (`.base`, for load_state_dict), the note to show
    the user (`.note`) and whether the model must be built with an output head of its own (`.untied`). Raises
    CheckpointError when it does not fit the target: in at most three lines for keys missing or unexpected and for
    another model size, in one for another vocabulary or an `embedding.weight` other than the embedding."""
    named = name_keys(path, state, target.expected)
    held = set(named.base) | ({target.embedding} if embedding_copies(named, target) else set())
    missing = [k for k in target.expected if k not in held and k not in target.tied]
    unplaced = set(named.other) | {named.original[k] for k in named.base if k not in target.expected}
    unexpected = [k for k in state if k in unplaced]
    if missing or unexpected:
        shown = [k if named.bare else OFFICIAL_PREFIX + k for k in missing]
        lines = [f"{path}: the state dict does not fit {target.what}; likely cause: "
                 f"{likely_cause(named, state, missing, unexpected, target)}"]
        lines += [f"  {kind} {len(keys)} key{'s' if len(keys) > 1 else ''}: {', '.join(keys[:SHOWN])}"
                  + (f" and {len(keys) - SHOWN} more" if len(keys) > SHOWN else "")
                  for kind, keys in (("missing", shown), ("unexpected", unexpected)) if keys]
        raise CheckpointError("\n".join(lines))
    tie_embedding(path, named, target)
    shapes = [k for k, v in target.expected.items() if k in named.base and named.base[k].shape != v.shape]
    if shapes:
        k = shapes[0]
        more = f" ({len(shapes)} tensors differ in shape in all)" if len(shapes) > 1 else ""
        first = f"{named.original.get(k, OFFICIAL_PREFIX + k)} is {list(named.base[k].shape)} in the checkpoint but"
        sizes = size_differences(named.base, target)
        if sizes:
            raise CheckpointError(f"{path}: the checkpoint is of another model size than {target.what}: "
                                  f"{'; '.join(sizes)}\n  {first} {list(target.expected[k].shape)} in the model{more}")
        rows = named.base[k].shape[0], target.expected[k].shape[0]
        latent = ("; its embedding lacks the 3 latent tokens' rows: a model before Coconut training (a CoT stage), not "
                  "a Coconut model") if k == target.embedding and rows[0] + 3 == rows[1] else ""
        raise CheckpointError(f"{path}: {first} {list(target.expected[k].shape)} in {target.what}{more}{latent}")
    return named


def name_keys(path: Path, state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> Named:
    """The one renaming of a state dict's keys (own: the base model's state dict, whose keys the file's must become).

    1. Each name in WRAPPERS is dropped wherever it stands in a key (as FSDP's clean_tensor_name drops its own and
       activation checkpointing's), unless the model has a submodule of that name.
    2. A prefix every key shares is dropped: the one after which the most keys are the wrapper's (`base_causallm.*`,
       `embedding.weight`) or the base model's own (a bare base, which the official run.py also loads into Coconut);
       none when no key fits either way.
    Raises CheckpointError when two keys become one and hold different tensors."""
    segments = {s for k in own for s in k.split(".")}
    dropped: dict[str, None] = {}  # wrapper names, in the order met
    renamed: dict[str, str] = {}  # key without wrapper names -> the file's key
    for key, tensor in state.items():
        parts = key.split(".")
        wrappers = [p for p in parts[:-1] if p in WRAPPERS and p not in segments]
        dropped.update(dict.fromkeys(wrappers))
        new = ".".join([p for p in parts[:-1] if p not in wrappers] + parts[-1:])
        if new in renamed:  # Lightning Lite's wrapper held the model twice, under two names
            if not torch.equal(tensor, state[renamed[new]]):
                raise CheckpointError(f"{path}: {renamed[new]} and {key} are both {new} without their wrappers' names, "
                                      "and hold different tensors; pass the state dict of the model inside the wrapper")
            continue
        renamed[new] = key
    prefix, bare = _shared_prefix(list(renamed), own)
    base, aliases, other, original = {}, {}, [], {}
    for new, key in renamed.items():
        rest = new[len(prefix):]
        if bare:
            name, into = rest, base
        elif rest.startswith(OFFICIAL_PREFIX):
            name, into = rest[len(OFFICIAL_PREFIX):], base
        elif rest in OFFICIAL_ALIASES:
            name, into = rest, aliases
        else:
            other.append(key)
            continue
        into[name], original[name] = state[key], key
    said = [f"{w + '.'!r} ({WRAPPERS[w]} wrapper)" for w in dropped]
    said += [f"{prefix!r} (a prefix every key shares: the model's name inside another module)"] if prefix else []
    note = "keys read without " + " and ".join(said) if said else None
    if bare:
        note = (f"{note}, " if note else "keys read ") + ("as the base model's own (a state dict of the base model "
                                                          f"alone, without the Coconut wrapper's {OFFICIAL_PREFIX!r}, "
                                                          "as the official run.py also reads one)")
    return Named(base, aliases, other, original, bare, note)


def _shared_prefix(keys: list[str], own: Mapping[str, torch.Tensor]) -> tuple[str, bool]:
    """The prefix every key shares after which the most keys are the wrapper's or (bare) the base model's, and
    whether it is the base's; ("", False) when no key is either."""
    best, found = 0, ("", False)
    parts = keys[0].split(".")[:-1]
    for i in range(len(parts) + 1):
        prefix = "".join(p + "." for p in parts[:i])
        if not all(k.startswith(prefix) for k in keys):
            break
        rest = [k[len(prefix):] for k in keys]
        wrapper = sum(r.startswith(OFFICIAL_PREFIX) or r in OFFICIAL_ALIASES for r in rest)
        bare = 0 if any(r.startswith(OFFICIAL_PREFIX) for r in rest) else sum(r in own for r in rest)
        for count, is_bare in ((wrapper, False), (bare, True)):
            if count > best:
                best, found = count, (prefix, is_bare)
    return found


def tie_embedding(path: Path, named: Named, target: Target) -> None:
    """The input embedding from any of the names a state dict may save it under: its own key, a tied output head
    (safetensors' save_model keeps only `lm_head.weight` of the three names), `embedding.weight`. A head that differs
    from the embedding, in a config that ties them, is the checkpoint's own: `named.untied`, with a note (transformers
    reads such a file untied too, and warns; the official run.py's load_state_dict would keep the embedding as the
    head, losing it). Raises CheckpointError when `embedding.weight` differs (the file is not the wrapper's)."""
    present = embedding_copies(named, target)
    if not present:
        return
    first, tensor = present[0]
    for key, other in present[1:]:
        if other.shape == tensor.shape and torch.equal(other.float(), tensor.float()):
            continue
        if key in OFFICIAL_ALIASES:
            raise CheckpointError(f"{path}: {named.original[key]} differs from the base model's input embedding "
                                  f"({named.original[first]}); the file is not one official wrapper's")
        named.untied = True
        untied = (f"{named.original[key]} differs from the input embedding {named.original[first]}, though the config "
                  "of --base ties the two (tie_word_embeddings): read with an output head of its own, as transformers "
                  f"reads such a file (set \"tie_word_embeddings\": false in {target.config_file} to say so)")
        named.note = f"{named.note}; {untied}" if named.note else untied
    named.base.setdefault(target.embedding, tensor)


def embedding_copies(named: Named, target: Target) -> list[tuple[str, torch.Tensor]]:
    """The names a state dict holds the input embedding under, with their tensors: its own key, a tied head's,
    the wrapper's alias."""
    names = [(k, named.base) for k in (target.embedding, *sorted(target.tied))]
    return [(k, d[k]) for k, d in names + [(a, named.aliases) for a in OFFICIAL_ALIASES] if k in d]


def likely_cause(named: Named, state: Mapping[str, torch.Tensor], missing: list[str], unexpected: list[str],
                 target: Target) -> str:
    """Why a state dict's keys do not fit the target, in words (missing: the base model's keys it lacks)."""
    base_type = target.config.model_type
    theirs = next((t for t, (_, key) in ARCHITECTURES.items() if any(k == key or k.endswith("." + key)
                                                                       for k in state)), None)
    if theirs and theirs != base_type:
        return f"the wrong --base (the checkpoint holds a {model_name(theirs)}, --base is a {model_name(base_type)})"
    if not set(named.base) & set(target.expected):
        return (f"not a checkpoint of this model: none of its keys is one of the {model_name(base_type)}'s, with the "
                f"Coconut wrapper's {OFFICIAL_PREFIX!r} or without it")
    sizes = size_differences(named.base, target)
    if sizes:
        return "another model size: " + "; ".join(sizes)
    if missing and set(missing) <= target.tieable and not unexpected:
        return (f"the checkpoint's model ties its output head to the input embedding and --base's config does not: set "
                f"\"tie_word_embeddings\": true in {target.config_file}")
    tails = [k if named.bare else OFFICIAL_PREFIX + k for k in missing]
    prefixes = Counter(u[:-len(t)] for u in unexpected for t in tails if u.endswith("." + t))
    if prefixes:
        prefix, n = prefixes.most_common(1)[0]
        return (f"the prefix {prefix!r} on {n} of its {len(state)} keys, not on every key as a wrapper's, so not "
                "dropped")
    if not unexpected:
        return "the file holds only part of the model (or the wrong --base)"
    if not missing:
        return "the file holds more than the model (or the wrong --base)"
    return "the wrong --base, or a file of another model"


def size_differences(base: Mapping[str, torch.Tensor], target: Target) -> list[str]:
    """Each size of the model (layers, width) in which the state dict's keys and shapes differ from the config:
    "n_layer 12 in the checkpoint, 2 in --base", by the config's own field names."""
    cfg, out = target.config, []
    stack = next((m.group(1) for k in target.expected if (m := re.match(r"(.+?)\.\d+\.", k))), "")
    layer = re.compile(re.escape(stack) + r"\.(\d+)\.(.+)")
    held: dict[int, set[str]] = {}  # layer -> its keys' tails, in the checkpoint
    for k in base:
        if stack and (m := layer.fullmatch(k)):
            held.setdefault(int(m.group(1)), set()).add(m.group(2))
    whole = {m.group(2) for k in target.expected if (m := layer.fullmatch(k)) and m.group(1) == "0"}
    # only layers 0..n-1, each whole, tell a size: a key more or less is another matter
    if held and set(held) == set(range(len(held))) and all(tails >= whole for tails in held.values()) \
            and len(held) != cfg.num_hidden_layers:
        out.append(f"{cfg.attribute_map.get('num_hidden_layers', 'num_hidden_layers')} {len(held)} in the "
                   f"checkpoint, {cfg.num_hidden_layers} in --base")
    width = base[target.embedding].shape[-1] if target.embedding in base else cfg.hidden_size
    if width != cfg.hidden_size:
        out.append(f"{cfg.attribute_map.get('hidden_size', 'hidden_size')} {width} in the checkpoint, "
                   f"{cfg.hidden_size} in --base")
    return out
