"""Official checkpoints as training saves them in the wild (docs/formats.md, "Official and RbS checkpoint files").

Each file is written by its writer where that is cheap here (DistributedDataParallel, DataParallel and FSDP in a
one-process gloo group, activation checkpointing, DTensor, ShardedTensor, torch.distributed.checkpoint, safetensors'
save_model, accelerate's save, transformers' save_pretrained) and by hand where it is not, by the writer's rule as its
source states it (torch.compile's `_orig_mod.`, which needs dynamo, 3 s; FSDP's and activation checkpointing's names
inside keys, from older torch; Lightning's). Each loaded model must hold the file's weights and give the original's
logits exactly; each note and refusal is checked word for word.
"""

from __future__ import annotations

import copy
import json
import re
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from probe.cli import app
from probe.model.checkpoint import CheckpointError, CheckpointNote, load_checkpoint, save_checkpoint
from probe.model.coconut import CoconutModel
from test_checkpoint import OfficialCoconut, official_fixture, probe_ids

DDP_NOTE = "keys read without 'module.' (DistributedDataParallel's or DataParallel's wrapper)"
COMPILE = "'_orig_mod.' (torch.compile's wrapper)"
BARE = ("as the base model's own (a state dict of the base model alone, without the Coconut wrapper's "
        "'base_causallm.', as the official run.py also reads one)")
SAVE = "torch.save(model.state_dict(), FILE)"


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """{kind: (base directory, official checkpoint file, original base model)} for a tiny GPT-2 and Llama, whose
    tokenizer has 67 tokens and 70 with the latent ones."""
    out = {}
    for kind in ("gpt2", "llama"):
        tmp = tmp_path_factory.mktemp(kind)
        out[kind] = official_fixture(tmp, kind)
    return out


@pytest.fixture(scope="module")
def process_group(tmp_path_factory):
    """A one-process gloo group, for the writers that need one (DDP, FSDP, DTensor, ShardedTensor)."""
    import torch.distributed as dist

    if dist.is_initialized():
        yield
        return
    store = tmp_path_factory.mktemp("group") / "store"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def official_state(made, kind: str = "gpt2") -> dict[str, torch.Tensor]:
    return torch.load(made[kind][1], weights_only=True)


def load(file: Path, base: Path) -> tuple[CoconutModel, list[str]]:
    notes: list[str] = []
    model, _ = load_checkpoint(file, base=base, notes=notes)
    return model, notes


def refusal(file: Path, base: Path) -> str:
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(file, base=base, notes=[])
    return str(e.value)


@torch.no_grad()
def assert_same(model: CoconutModel, original, exact: bool = True) -> None:
    """Every weight of the loaded base is the original's (in float32) and the logits and thoughts are equal (or, not
    exact, within float32 rounding)."""
    own = model.base.state_dict()
    for key, value in original.state_dict().items():
        assert own[key].dtype == torch.float32, key
        torch.testing.assert_close(own[key], value.float(), atol=0, rtol=0, msg=key)
    ids = probe_ids(model)
    expected = CoconutModel(original.float().eval(), model.config)(ids)
    got = model(ids)
    tolerance = {"atol": 0, "rtol": 0} if exact else {}
    torch.testing.assert_close(got.logits, expected.logits, **tolerance)
    torch.testing.assert_close(got.thoughts, expected.thoughts, **tolerance)


def saved(path: Path, state: dict) -> Path:
    torch.save(state, path)
    return path


def _fsdp_names(key: str) -> str:
    """FSDP's name before every key and inside each wrapped block, with activation checkpointing's inside it: how
    torch before 1.13 wrote a block-wrapped model (and DCP's get_state_dict in torch 2.1, issue pytorch#117399)."""
    return "_fsdp_wrapped_module." + re.sub(r"(transformer\.h\.\d+\.)", r"\1_fsdp_wrapped_module."
                                            r"_checkpoint_wrapped_module.", key)


# (id, the key the writer makes of each official key, what the note says was dropped)
PREFIXES = [
    ("ddp", lambda k: "module." + k, DDP_NOTE),
    ("compile", lambda k: "_orig_mod." + k, f"keys read without {COMPILE}"),
    ("ddp-of-compiled", lambda k: "module._orig_mod." + k, f"{DDP_NOTE} and {COMPILE}"),
    ("compiled-ddp", lambda k: "_orig_mod.module." + k,
     f"keys read without {COMPILE} and 'module.' (DistributedDataParallel's or DataParallel's wrapper)"),
    ("compiled-base", lambda k: k.replace("base_causallm.", "base_causallm._orig_mod."),
     f"keys read without {COMPILE}"),
    ("fsdp-names", _fsdp_names, "keys read without '_fsdp_wrapped_module.' (FSDP's wrapper) and "
                                "'_checkpoint_wrapped_module.' (activation checkpointing's wrapper)"),
    ("lightning", lambda k: "model." + k,
     "keys read without 'model.' (a prefix every key shares: the model's name inside another module)"),
    ("lightning-compiled", lambda k: "model._orig_mod." + k,
     f"keys read without {COMPILE} and 'model.' (a prefix every key shares: the model's name inside another module)"),
    ("lightning-wrapper", lambda k: "_forward_module.model." + k,
     "keys read without '_forward_module.' (Lightning's wrapper) and 'model.' (a prefix every key shares: the "
     "model's name inside another module)"),
]


@pytest.mark.parametrize("name,rename,note", PREFIXES, ids=[p[0] for p in PREFIXES])
def test_a_wrapper_prefix_is_dropped_with_one_note(made, tmp_path, name, rename, note):
    base, _, original = made["gpt2"]
    f = saved(tmp_path / "checkpoint_50", {rename(k): v for k, v in official_state(made).items()})
    model, notes = load(f, base)
    assert notes == [f"{f}: {note}"]
    assert_same(model, original)


def test_lightning_lites_two_names_for_each_weight_are_one(made, tmp_path):
    """Lightning Lite before 1.8 (issue Lightning-AI/pytorch-lightning#14571): its wrapper's state dict held each
    weight twice, `_forward_module.module.*` (DDP inside) and `_original_module.*`. Equal copies are one weight;
    copies that differ are refused."""
    base, _, original = made["gpt2"]
    state = official_state(made)
    both = {**{f"_forward_module.module.{k}": v for k, v in state.items()},
            **{f"_original_module.{k}": v for k, v in state.items()}}
    f = saved(tmp_path / "lite.ckpt", both)
    model, notes = load(f, base)
    assert notes == [f"{f}: keys read without '_forward_module.' (Lightning's wrapper) and 'module.' "
                     "(DistributedDataParallel's or DataParallel's wrapper) and '_original_module.' (Lightning's "
                     "wrapper)"]
    assert_same(model, original)
    both["_original_module.base_causallm.transformer.ln_f.bias"] = torch.ones(32)
    saved(f, both)
    assert refusal(f, base) == (
        f"{f}: _forward_module.module.base_causallm.transformer.ln_f.bias and "
        "_original_module.base_causallm.transformer.ln_f.bias are both base_causallm.transformer.ln_f.bias without "
        "their wrappers' names, and hold different tensors; pass the state dict of the model inside the wrapper")


@pytest.mark.filterwarnings("ignore:FSDP is switching:UserWarning", "ignore:When using ``NO_SHARD``:UserWarning")
@pytest.mark.parametrize("writer", ["DistributedDataParallel", "DataParallel", "FSDP", "activation checkpointing"])
def test_the_writers_themselves_write_what_is_read(made, tmp_path, process_group, writer):
    """DDP and DataParallel put `module.` before every key; FSDP's default state dict (FULL_STATE_DICT, what the
    official run.py saves; its blocks wrapped as run.py wraps Llama's) and activation checkpointing's wrapper leave
    the keys as the model's own (their state-dict hooks drop their names)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy
    from transformers.models.gpt2.modeling_gpt2 import GPT2Block

    base, _, original = made["gpt2"]
    wrapper = OfficialCoconut(copy.deepcopy(original))
    if writer == "DistributedDataParallel":
        wrapper = torch.nn.parallel.DistributedDataParallel(wrapper)
    elif writer == "DataParallel":
        wrapper = torch.nn.DataParallel(wrapper)
    elif writer == "FSDP":
        wrapper = FullyShardedDataParallel(wrapper, auto_wrap_policy=ModuleWrapPolicy({GPT2Block}),
                                           device_id=torch.device("cpu"))
    else:
        apply_activation_checkpointing(wrapper, check_fn=lambda m: isinstance(m, GPT2Block))
        assert "base_causallm.transformer.h.0._checkpoint_wrapped_module.ln_1" in dict(wrapper.named_modules())
    f = saved(tmp_path / "checkpoint_50", wrapper.state_dict())
    model, notes = load(f, base)
    assert notes == ([f"{f}: {DDP_NOTE}"] if "DataParallel" in writer else [])
    assert_same(model, original)


@pytest.mark.parametrize("writer", ["save_model", "accelerate", "accelerate-ddp", "save_pretrained", "no-suffix"])
def test_safetensors_files_are_read_with_the_safetensors_library(made, tmp_path, writer):
    """safetensors keeps one name of a tensor saved under several: its save_model keeps the first in sorted order
    (`base_causallm.lm_head.weight`, not the embedding), accelerate's save the first in the state dict's (the
    embedding; its save_state under DDP keeps `module.`); transformers' save_pretrained of the base alone drops the tied
    head. A safetensors file is told by its header, whatever its name."""
    from accelerate.utils import save
    from safetensors.torch import load_file, save_model

    base, _, original = made["gpt2"]
    f = tmp_path / ("checkpoint_50" if writer == "no-suffix" else "model.safetensors")
    if writer in ("save_model", "no-suffix"):
        save_model(OfficialCoconut(original), str(f))
        assert "base_causallm.lm_head.weight" in load_file(f) and "embedding.weight" not in load_file(f)
    elif writer.startswith("accelerate"):
        state = OfficialCoconut(original).state_dict()  # an OrderedDict, which accelerate's save cleans of aliases
        save(OrderedDict((("module." if writer == "accelerate-ddp" else "") + k, v) for k, v in state.items()), f,
             safe_serialization=True)
        assert not {"base_causallm.lm_head.weight", "module.base_causallm.lm_head.weight"} & set(load_file(f))
    else:
        original.save_pretrained(tmp_path)
    model, notes = load(f, base)
    assert notes == {"accelerate-ddp": [f"{f}: {DDP_NOTE}"], "save_pretrained": [f"{f}: keys read {BARE}"]}.get(
        writer, [])
    assert_same(model, original)


def test_a_damaged_safetensors_file_is_refused_in_one_line(made, tmp_path):
    from safetensors.torch import save_model

    base, _, original = made["gpt2"]
    whole = tmp_path / "whole.safetensors"
    save_model(OfficialCoconut(original), str(whole))
    f = tmp_path / "model.safetensors"
    f.write_bytes(whole.read_bytes()[:5000])
    assert refusal(f, base) == (f"{f}: not a readable safetensors file (Error while deserializing header: incomplete "
                                "metadata, file not fully covered); the file is damaged or truncated: copy it again")
    f.write_bytes(b"not safetensors at all")
    assert refusal(f, base) == (f"{f}: not a readable safetensors file (Error while deserializing header: header too "
                                "large); the file is damaged or truncated: copy it again")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "mixed"])
def test_half_precision_weights_load_into_float32(made, tmp_path, dtype):
    """The official run.py with bf16: true casts the model to bfloat16 before FSDP, so it saves bfloat16."""
    base, _, original = made["gpt2"]
    state = official_state(made)
    cast = {k: v.to(torch.float16 if dtype == "float16" or (dtype == "mixed" and i % 2) else
                    torch.bfloat16 if dtype == "bfloat16" else torch.float32) for i, (k, v) in enumerate(state.items())}
    if dtype == "mixed":  # the tied names of the embedding as one tensor, as torch.save keeps them
        for k in ("base_causallm.lm_head.weight", "embedding.weight"):
            cast[k] = cast["base_causallm.transformer.wte.weight"]
    model, notes = load(saved(tmp_path / "checkpoint_50", cast), base)
    assert notes == []
    rounded = copy.deepcopy(original)
    rounded.load_state_dict({k[len("base_causallm."):]: v.float() for k, v in cast.items()
                             if k.startswith("base_causallm.")})
    assert_same(model, rounded)


@pytest.mark.parametrize("kept", ["all", "no head", "head only", "alias only", "no alias"])
def test_a_tied_embedding_may_be_saved_under_any_of_its_names(made, tmp_path, kept):
    base, _, original = made["gpt2"]
    names = {"embedding": "base_causallm.transformer.wte.weight", "head": "base_causallm.lm_head.weight",
             "alias": "embedding.weight"}
    drop = {"all": [], "no head": ["head"], "head only": ["embedding", "alias"], "alias only": ["embedding", "head"],
            "no alias": ["alias"]}[kept]
    state = {k: v for k, v in official_state(made).items() if k not in {names[d] for d in drop}}
    model, notes = load(saved(tmp_path / "checkpoint_50", state), base)
    assert notes == []
    assert_same(model, original)


def test_an_untied_head_in_a_config_that_ties_it_is_read_untied_with_a_note(made, tmp_path):
    """transformers 5 reads such a file untied and warns to set tie_word_embeddings false; the official run.py's
    load_state_dict would overwrite the head with the embedding (the last of the three names it copies), losing it.
    The model is the checkpoint's, with a note; with the tie switched off in the base's config, without one."""
    from transformers import GPT2LMHeadModel

    made_base, _, original = made["gpt2"]
    base = tmp_path / "base"
    base.mkdir()
    for file in made_base.iterdir():
        (base / file.name).write_bytes(file.read_bytes())
    state = official_state(made)
    head = state["base_causallm.lm_head.weight"].clone()
    head[5] += 1
    state["base_causallm.lm_head.weight"] = head
    f = saved(tmp_path / "checkpoint_50", {"module." + k: v for k, v in state.items()})
    untied = GPT2LMHeadModel(type(original.config)(**{**original.config.to_dict(), "tie_word_embeddings": False}))
    untied.load_state_dict({**original.state_dict(), "lm_head.weight": head})
    model, notes = load(f, base)
    assert notes == [
        f"{f}: {DDP_NOTE}; module.base_causallm.lm_head.weight differs from the input embedding "
        "module.base_causallm.transformer.wte.weight, though the config of --base ties the two (tie_word_embeddings): "
        "read with an output head of its own, as transformers reads such a file (set \"tie_word_embeddings\": false "
        f"in {base / 'config.json'} to say so)"]
    assert not model.base.config.tie_word_embeddings
    assert model.base.lm_head.weight is not model.base.transformer.wte.weight
    assert_same(model, untied)
    cfg = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**cfg, "tie_word_embeddings": False}))
    model, notes = load(f, base)
    assert notes == [f"{f}: {DDP_NOTE}"]
    assert_same(model, untied)


def test_an_untied_config_without_its_head_says_the_checkpoint_ties_it(made, tmp_path):
    base, _, _ = made["llama"]
    state = {k: v for k, v in official_state(made, "llama").items() if k != "base_causallm.lm_head.weight"}
    f = saved(tmp_path / "checkpoint_50", state)
    assert refusal(f, base) == (
        f"{f}: the state dict does not fit the Llama of {base} with the tokenizer's 70 tokens; likely cause: the "
        "checkpoint's model ties its output head to the input embedding and --base's config does not: set "
        f"\"tie_word_embeddings\": true in {base / 'config.json'}\n"
        "  missing 1 key: base_causallm.lm_head.weight")


@pytest.mark.parametrize("kind,prefix", [("gpt2", ""), ("llama", ""), ("gpt2", "module.")])
def test_a_bare_base_state_dict_is_read_as_the_wrappers_base(made, tmp_path, kind, prefix):
    """The official run.py loads a state dict without `base_causallm.` (its CoT stage's, or another base model's)
    into the base of its Coconut model; so does the loader, saying so."""
    base, _, original = made[kind]
    f = saved(tmp_path / "checkpoint_50", {prefix + k: v for k, v in original.state_dict().items()})
    model, notes = load(f, base)
    assert notes == [f"{f}: " + (f"{DDP_NOTE}, {BARE}" if prefix else f"keys read {BARE}")]
    assert_same(model, original)


def test_a_cot_stage_checkpoint_is_refused_as_a_model_without_latent_tokens(made, tmp_path):
    """The official CoT stage (cot: true) trains the base without the latent tokens; run.py adds them when Coconut
    training starts from it. Its file is not a Coconut model."""
    base, _, original = made["gpt2"]
    state = {k: v[:67] if k in ("transformer.wte.weight", "lm_head.weight") else v
             for k, v in original.state_dict().items()}
    f = saved(tmp_path / "checkpoint_6", state)
    assert refusal(f, base) == (
        f"{f}: transformer.wte.weight is [67, 32] in the checkpoint but [70, 32] in the GPT-2 of {base} with the "
        "tokenizer's 70 tokens (2 tensors differ in shape in all); its embedding lacks the 3 latent tokens' rows: a "
        "model before Coconut training (a CoT stage), not a Coconut model")


def test_the_wrong_base_is_named(made, tmp_path):
    base, _, _ = made["llama"]
    f = saved(tmp_path / "checkpoint_50", {"module." + k: v for k, v in official_state(made).items()})
    assert refusal(f, base) == (
        f"{f}: the state dict does not fit the Llama of {base} with the tokenizer's 70 tokens; likely cause: the wrong "
        "--base (the checkpoint holds a GPT-2, --base is a Llama)\n"
        "  missing 19 keys: base_causallm.model.layers.0.self_attn.q_proj.weight, "
        "base_causallm.model.layers.0.self_attn.k_proj.weight, base_causallm.model.layers.0.self_attn.v_proj.weight "
        "and 16 more\n"
        "  unexpected 28 keys: module.base_causallm.transformer.wte.weight, "
        "module.base_causallm.transformer.wpe.weight, module.base_causallm.transformer.h.0.ln_1.weight and 25 more")


@pytest.mark.parametrize("size", ["n_layer", "n_embd"])
def test_another_model_size_is_named(made, tmp_path, size):
    from transformers import GPT2LMHeadModel

    base, _, original = made["gpt2"]
    other = GPT2LMHeadModel(type(original.config)(**{**original.config.to_dict(),
                                                     **({"n_layer": 4} if size == "n_layer" else {"n_embd": 48})}))
    f = saved(tmp_path / "checkpoint_50", OfficialCoconut(other).state_dict())
    what = f"the GPT-2 of {base} with the tokenizer's 70 tokens"
    assert refusal(f, base) == ({
        "n_layer": f"{f}: the state dict does not fit {what}; likely cause: another model size: n_layer 4 in the "
                   "checkpoint, 2 in --base\n"
                   "  unexpected 24 keys: base_causallm.transformer.h.2.ln_1.weight, "
                   "base_causallm.transformer.h.2.ln_1.bias, base_causallm.transformer.h.2.attn.c_attn.weight and 21 "
                   "more",
        "n_embd": f"{f}: the checkpoint is of another model size than {what}: n_embd 48 in the checkpoint, 32 in "
                  "--base\n"
                  "  base_causallm.transformer.wte.weight is [70, 48] in the checkpoint but [70, 32] in the model (29 "
                  "tensors differ in shape in all)",
    }[size])


def test_keys_that_fit_nothing_are_refused_with_their_cause(made, tmp_path):
    base, _, _ = made["gpt2"]
    f = saved(tmp_path / "classifier.pt", {"fc1.weight": torch.zeros(4, 2), "fc2.weight": torch.zeros(2, 4)})
    assert refusal(f, base) == (
        f"{f}: the state dict does not fit the GPT-2 of {base} with the tokenizer's 70 tokens; likely cause: not a "
        "checkpoint of this model: none of its keys is one of the GPT-2's, with the Coconut wrapper's "
        "'base_causallm.' or without it\n"
        "  missing 28 keys: base_causallm.transformer.wte.weight, base_causallm.transformer.wpe.weight, "
        "base_causallm.transformer.h.0.ln_1.weight and 25 more\n"
        "  unexpected 2 keys: fc1.weight, fc2.weight")


def test_a_prefix_on_some_keys_only_is_named(made, tmp_path):
    base, _, _ = made["gpt2"]
    state = official_state(made)
    moved = [k for k in state if ".h.1." in k][:3]
    f = saved(tmp_path / "checkpoint_50", {("student." if k in moved else "") + k: v for k, v in state.items()})
    assert refusal(f, base) == (
        f"{f}: the state dict does not fit the GPT-2 of {base} with the tokenizer's 70 tokens; likely cause: the "
        "prefix 'student.' on 3 of its 30 keys, not on every key as a wrapper's, so not dropped\n"
        "  missing 3 keys: base_causallm.transformer.h.1.ln_1.weight, base_causallm.transformer.h.1.ln_1.bias, "
        "base_causallm.transformer.h.1.attn.c_attn.weight\n"
        "  unexpected 3 keys: student.base_causallm.transformer.h.1.ln_1.weight, "
        "student.base_causallm.transformer.h.1.ln_1.bias, student.base_causallm.transformer.h.1.attn.c_attn.weight")


def test_a_lightning_checkpoint_is_refused_then_its_state_dict_loads(made, tmp_path):
    """Lightning's ModelCheckpoint saves a dict whose 'state_dict' entry is the LightningModule's state dict (the
    Coconut model held as `self.model`: keys `model.*`)."""
    base, _, original = made["gpt2"]
    entry = {"model." + k: v for k, v in official_state(made).items()}
    f = saved(tmp_path / "epoch=3-step=7.ckpt", {"state_dict": entry, "epoch": 3, "global_step": 7,
                                                "pytorch-lightning_version": "2.4.0"})
    assert refusal(f, base) == (
        f"{f}: expected a state dict of tensors, found a dict whose 'state_dict' entry holds the tensors (a training "
        "checkpoint?); save that entry alone (torch.save(checkpoint['state_dict'], FILE)) and pass that file")
    model, notes = load(saved(f, entry), base)
    assert notes == [f"{f}: keys read without 'model.' (a prefix every key shares: the model's name inside another "
                     "module)"]
    assert_same(model, original)


@pytest.mark.filterwarnings("ignore:Please use DTensor instead:FutureWarning")
@pytest.mark.parametrize("kind", ["ShardedTensor", "DTensor"])
def test_sharded_state_dicts_are_refused_with_how_to_save_the_whole(made, tmp_path, process_group, kind):
    """FSDP's SHARDED_STATE_DICT and LOCAL_STATE_DICT hold ShardedTensors, FSDP2's DTensors: each rank's own shard."""
    from torch.distributed._shard import sharded_tensor
    from torch.distributed._shard.sharding_spec import ChunkShardingSpec
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    base, _, _ = made["gpt2"]
    state = official_state(made)
    if kind == "ShardedTensor":
        spec = ChunkShardingSpec(dim=0, placements=["rank:0/cpu"])
        state = {k: sharded_tensor.zeros(spec, *v.shape) for k, v in state.items()}
    else:
        mesh = init_device_mesh("cpu", (1,))
        state = {k: distribute_tensor(v, mesh, [Shard(0)]) for k, v in state.items()}
    f = saved(tmp_path / "checkpoint_50", state)
    assert refusal(f, base) == f"{f}: holds " + {
        "ShardedTensor": "FSDP's sharded tensors (ShardedTensor, from its SHARDED_STATE_DICT or LOCAL_STATE_DICT: each "
                         "rank's own shard of the weights); save the full state dict on rank 0: under "
                         f"FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT), {SAVE}",
        "DTensor": "DTensors (FSDP2's fully_shard or tensor parallelism: each rank's own shard of the weights); save "
                   "the full state dict on rank 0: torch.save(get_model_state_dict(model, options=StateDictOptions("
                   "full_state_dict=True, cpu_offload=True)), FILE), from torch.distributed.checkpoint.state_dict",
    }[kind]


def test_a_torch_distributed_checkpoint_directory_is_refused_with_the_command_that_converts_it(made, tmp_path):
    import torch.distributed.checkpoint as dcp

    base, _, _ = made["gpt2"]
    d = tmp_path / "pytorch_model_fsdp_0"
    dcp.save({"model": official_state(made)}, checkpoint_id=d)
    assert sorted(p.name for p in d.iterdir()) == [".metadata", "__0_0.distcp"]
    assert refusal(d, None) == (
        f"{d}: a torch.distributed.checkpoint directory (FSDP's sharded state dict, or accelerate's), whose .metadata "
        "is a pickle that could run any code, so it is not read here; convert it where you trust it (python -m "
        f"torch.distributed.checkpoint.format_utils dcp_to_torch {d} FILE) and pass FILE with --base")


def test_the_cli_says_a_note_once_and_refuses_in_at_most_three_lines(made, tmp_path, official_path):
    from transformers import GPT2LMHeadModel

    base, _, original = made["gpt2"]
    ddp = saved(tmp_path / "ddp", {"module." + k: v for k, v in official_state(made).items()})
    args = ["eval", "--data", str(official_path), "--limit", "1", "--k", "0", "--base", str(base), "--ckpt"]
    r = CliRunner().invoke(app, [*args, str(ddp)])
    assert r.exit_code == 0, r.output[-1500:]
    assert [line for line in r.stderr.splitlines() if "note" in line] == [f"note: {ddp}: {DDP_NOTE}"]
    bigger = GPT2LMHeadModel(type(original.config)(**{**original.config.to_dict(), "n_layer": 4}))
    f = saved(tmp_path / "bigger", OfficialCoconut(bigger).state_dict())
    r = CliRunner().invoke(app, [*args, str(f)])
    assert r.exit_code == 2 and r.stdout == "", r.output[-1500:]
    assert r.stderr.splitlines() == [
        f"error: {f}: the state dict does not fit the GPT-2 of {base} with the tokenizer's 70 tokens; likely cause: "
        "another model size: n_layer 4 in the checkpoint, 2 in --base",
        "  unexpected 24 keys: base_causallm.transformer.h.2.ln_1.weight, base_causallm.transformer.h.2.ln_1.bias, "
        "base_causallm.transformer.h.2.attn.c_attn.weight and 21 more"]


def test_without_a_list_for_notes_the_note_is_a_warning(made, tmp_path):
    base, _, _ = made["gpt2"]
    f = saved(tmp_path / "ddp", {"module." + k: v for k, v in official_state(made).items()})
    with pytest.warns(CheckpointNote) as caught:
        load_checkpoint(f, base=base)
    assert [str(w.message) for w in caught if w.category is CheckpointNote] == [f"{f}: {DDP_NOTE}"]


@pytest.mark.parametrize("stored", ["float16", "bfloat16", "sharded"])
def test_our_directory_with_half_precision_or_sharded_weights_loads_in_float32(tiny_model, word_tokenizer, tmp_path,
                                                                              stored):
    """Ours is a transformers directory: weights saved in half precision, or in shards with
    model.safetensors.index.json, load as float32."""
    d = save_checkpoint(tiny_model, word_tokenizer, tmp_path / "ckpt")
    (d / "model.safetensors").unlink()
    if stored == "sharded":
        tiny_model.base.save_pretrained(d, max_shard_size="20KB")
        assert (d / "model.safetensors.index.json").is_file() and len(list(d.glob("model-*.safetensors"))) > 1
    else:
        copy.deepcopy(tiny_model.base).to(getattr(torch, stored)).save_pretrained(d)
    model, _ = load_checkpoint(d)
    original = copy.deepcopy(tiny_model.base)
    if stored != "sharded":  # the weights rounded (not the rotary buffers, which the loaded model computes anew)
        original.load_state_dict({k: v.to(getattr(torch, stored)) for k, v in original.state_dict().items()})
    # shards leave some weights at 8-byte aligned addresses, which changes the order of float32 sums by ~3e-8 (the
    # same weights copied into fresh storage give the original's logits exactly)
    assert_same(model, original, exact=stored != "sharded")
