"""Checkpoints: our directory format and the official state-dict format, and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import PreTrainedTokenizerFast

from conftest import tiny_base
from probe.data.generate import CONCEPT_NAMES, PERSON_NAMES
from probe.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from probe.model.coconut import CoconutModel
from probe.model.tokenizer import LATENT_TOKENS, build_word_tokenizer, special_tokens


def probe_ids(model: CoconutModel) -> torch.Tensor:
    c = model.config
    return torch.tensor([[5, 6, 7, 8, c.start_id, c.latent_id, c.latent_id, c.end_id, 9, 10]])


@torch.no_grad()
def test_our_format_round_trips(tmp_path, tiny_model, word_tokenizer):
    path = save_checkpoint(tiny_model, word_tokenizer, tmp_path / "ckpt", metadata={"accuracy": 0.5})
    for name in ("config.json", "model.safetensors", "tokenizer.json", "coconut.json", "README.md"):
        assert (path / name).is_file(), name
    meta = json.loads((path / "coconut.json").read_text())
    assert meta["latent_id"] == tiny_model.config.latent_id and meta["metadata"] == {"accuracy": 0.5}
    model, tok = load_checkpoint(path)
    assert model.config == tiny_model.config
    assert tok.get_vocab() == word_tokenizer.get_vocab()
    a, b = tiny_model(probe_ids(tiny_model)), model(probe_ids(model))
    torch.testing.assert_close(a.logits, b.logits, atol=0, rtol=0)
    torch.testing.assert_close(a.thoughts, b.thoughts, atol=0, rtol=0)
    assert list(tmp_path.iterdir()) == [path]  # no temporary directory left behind


def test_failed_save_leaves_nothing(tmp_path, tiny_model, word_tokenizer, monkeypatch):
    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(word_tokenizer, "save_pretrained", broken)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tiny_model, word_tokenizer, tmp_path / "ckpt")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def saved(tmp_path, tiny_model, word_tokenizer) -> Path:
    return save_checkpoint(tiny_model, word_tokenizer, tmp_path / "ckpt")


def test_missing_and_corrupt_checkpoints(tmp_path, saved):
    with pytest.raises(CheckpointError, match=r"nowhere: no such checkpoint"):
        load_checkpoint(tmp_path / "nowhere")
    weights = saved / "model.safetensors"
    whole = weights.read_bytes()
    for damaged, why in ((whole[: len(whole) // 2], "incomplete metadata, file not fully covered"),
                         (b"\x00garbage" * 10, "header too large")):
        weights.write_bytes(damaged)
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(saved)
        assert str(e.value) == (f"{weights}: not a readable safetensors file (Error while deserializing header: "
                                f"{why}); the file is damaged or truncated: copy the checkpoint again")
    (saved / "coconut.json").unlink()
    with pytest.raises(CheckpointError, match=r"ckpt: a Hugging Face model directory without coconut.json: a base "
                                              r"model, not a Coconut checkpoint; give it as --base"):
        load_checkpoint(saved)
    (saved / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"ckpt: not a coconut-probe checkpoint \(no coconut.json\); --ckpt "
                                              r"takes a directory that `probe train` or `probe release` wrote"):
        load_checkpoint(saved)


def test_each_missing_or_unreadable_file_of_a_checkpoint_is_named(saved):
    """Without tokenizer.json transformers asked for sentencepiece; without tokenizer_config.json it silently built a
    GPT-2 tokenizer that mis-tokenised every prompt (accuracy 0 on the shipped model); a damaged JSON file was
    reported as the tokenizer's. Each is now named, with what to do."""
    holds = "coconut.json, config.json, model.safetensors, tokenizer.json, tokenizer_config.json"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        kept = (saved / name).read_bytes()
        (saved / name).unlink()
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(saved)
        assert str(e.value) == (f"{saved}: the checkpoint is incomplete: missing {name} (a checkpoint holds {holds}); "
                                "copy the whole directory again"), name
        (saved / name).write_bytes(kept)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        kept = (saved / name).read_bytes()
        (saved / name).write_text('{"vocab_size": 70,')
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(saved)
        assert str(e.value) == (f"{saved / name}: not valid JSON (Expecting property name enclosed in double quotes: "
                                "line 1 column 19 (char 18)); the file is damaged: copy it again from where it came "
                                "from"), name
        (saved / name).write_bytes(kept)
    load_checkpoint(saved)  # whole again


@pytest.mark.parametrize("values, counts", [([float("nan")] * 3, "3 NaN values"),
                                            ([float("inf"), -float("inf"), float("nan")], "1 NaN and 2 inf values")])
def test_weights_holding_nan_or_inf_are_refused_at_load_naming_file_and_tensor(saved, tmp_path, values, counts):
    """A model whose weights hold NaN used to be refused by check_computation, blaming an embedding scale; every
    loader (our directory, an official state dict, a base model to train from) now names the file and tensor."""
    from safetensors.torch import load_file, save_file

    weights = saved / "model.safetensors"
    tensors = load_file(str(weights))
    name = sorted(tensors)[len(tensors) // 2]
    tensors[name].view(-1)[: len(values)] = torch.tensor(values)
    save_file(tensors, str(weights), metadata={"format": "pt"})
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(saved)
    assert str(e.value) == f"{weights}: tensor {name} holds {counts}; the file is damaged or came from a diverged run"
    # a base model to train from (probe train's `base`)
    from probe.train.loop import TrainConfig, build_model

    with pytest.raises(CheckpointError) as e:
        build_model(TrainConfig(name="x", out_dir=str(tmp_path / "run"), base=str(saved)), [])
    assert str(e.value) == f"{weights}: tensor {name} holds {counts}; the file is damaged or came from a diverged run"
    # an official state dict
    (tmp_path / "official").mkdir()
    base_dir, ckpt, _ = official_fixture(tmp_path / "official", "gpt2")
    state = torch.load(ckpt, weights_only=True)
    key = "base_causallm.transformer.h.1.mlp.c_fc.weight"
    state[key].view(-1)[: len(values)] = torch.tensor(values)
    torch.save(state, ckpt)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(ckpt, base=base_dir)
    assert str(e.value) == f"{ckpt}: tensor {key} holds {counts}; the file is damaged or came from a diverged run"


def test_tokenizer_that_does_not_match_is_refused(saved):
    meta = json.loads((saved / "coconut.json").read_text())
    meta["latent_id"] -= 1
    (saved / "coconut.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"tokenizer latent_id=\d+ but coconut.json says \d+"):
        load_checkpoint(saved)


def test_tokenizer_larger_than_the_embedding_is_refused(saved):
    big = build_word_tokenizer([*PERSON_NAMES, *CONCEPT_NAMES, "extraname", "another"])
    big.save_pretrained(saved)
    with pytest.raises(CheckpointError, match=r"the tokenizer has \d+ tokens but the model's embedding has \d+ rows"):
        load_checkpoint(saved)


class OfficialCoconut(nn.Module):
    """The attributes of the official wrapper that reach its state dict."""

    def __init__(self, base):
        super().__init__()
        self.base_causallm = base
        self.embedding = base.get_input_embeddings()


def official_fixture(tmp_path: Path, kind: str):
    """A base directory (config + tokenizer without latent tokens) and an official checkpoint file."""
    base_dir = tmp_path / "base"
    tok = build_word_tokenizer([*PERSON_NAMES, *CONCEPT_NAMES])
    # a base tokenizer as a user has it: without the latent tokens
    raw = PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer, eos_token="<|endoftext|>", unk_token="<|unk|>")
    vocab_wo = len(tok) - 3
    model = tiny_base(kind, vocab_wo + 3, raw.eos_token_id)
    cfg = model.config.to_dict()
    cfg["vocab_size"] = vocab_wo  # the base model's own vocabulary, as downloaded
    base_dir.mkdir()
    (base_dir / "config.json").write_text(json.dumps(cfg))
    raw.save_pretrained(base_dir)
    ckpt = tmp_path / "checkpoint_50"
    torch.save(OfficialCoconut(model).state_dict(), ckpt)
    return base_dir, ckpt, model


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@torch.no_grad()
def test_official_checkpoint_loads_with_the_same_outputs(tmp_path, kind):
    base_dir, ckpt, original = official_fixture(tmp_path, kind)
    state = torch.load(ckpt, weights_only=True)
    assert "embedding.weight" in state and all(k.startswith("base_causallm.") or k == "embedding.weight" for k in state)
    model, tok = load_checkpoint(ckpt, base=base_dir)
    sp = special_tokens(tok)
    assert [tok.convert_ids_to_tokens(i) for i in (sp.start_id, sp.end_id, sp.latent_id)] == list(LATENT_TOKENS)
    assert model.config.max_latent_stage == 6 and model.config.default_thoughts == 6
    ids = probe_ids(model)
    expected = CoconutModel(original, model.config)(ids)
    got = model(ids)
    torch.testing.assert_close(got.logits, expected.logits, atol=0, rtol=0)
    torch.testing.assert_close(got.thoughts, expected.thoughts, atol=0, rtol=0)


def test_official_checkpoint_key_errors_count_and_name_the_first_keys_of_each_kind_with_a_cause(tmp_path):
    base_dir, ckpt, _ = official_fixture(tmp_path, "gpt2")
    state = torch.load(ckpt, weights_only=True)
    del state["base_causallm.transformer.h.0.ln_1.weight"]
    del state["base_causallm.transformer.ln_f.bias"]
    state["base_causallm.transformer.h.7.mlp.weight"] = torch.zeros(1)
    state["head.weight"] = torch.zeros(1)
    torch.save(state, ckpt)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(ckpt, base=base_dir)
    # three lines: the likely cause, then how many keys are missing and unexpected and the first few (the model's
    # order, then the file's)
    assert str(e.value) == (
        f"{ckpt}: the state dict does not fit the GPT-2 of {base_dir} with the tokenizer's 70 tokens; likely cause: "
        "the wrong --base, or a file of another model\n"
        "  missing 2 keys: base_causallm.transformer.h.0.ln_1.weight, base_causallm.transformer.ln_f.bias\n"
        "  unexpected 2 keys: base_causallm.transformer.h.7.mlp.weight, head.weight")


def test_official_checkpoint_errors(tmp_path):
    base_dir, ckpt, _ = official_fixture(tmp_path, "gpt2")
    with pytest.raises(CheckpointError, match=r"needs its base model directory \(--base DIR\)"):
        load_checkpoint(ckpt)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match=r"bad.pt: not a readable torch.save state dict"):
        load_checkpoint(bad, base=base_dir)
    with pytest.raises(CheckpointError, match=r"must hold the base model's config.json"):
        load_checkpoint(ckpt, base=tmp_path / "nobase")
    # a base whose vocabulary is one token short: shapes cannot match
    small = build_word_tokenizer([*PERSON_NAMES, *CONCEPT_NAMES][:-1])
    PreTrainedTokenizerFast(tokenizer_object=small.backend_tokenizer, eos_token="<|endoftext|>").save_pretrained(base_dir)
    with pytest.raises(CheckpointError, match=r"^[^\n]*checkpoint_50: base_causallm.transformer.wte.weight is \[70, 32\] in "
                                              r"the checkpoint but \[69, 32\] in the GPT-2 of [^\n]*base with the "
                                              r"tokenizer's 69 tokens \(2 tensors differ in shape in all\)$"):
        load_checkpoint(ckpt, base=base_dir)


def test_official_loader_checks(tmp_path, saved):
    for sub in ("g", "l"):
        (tmp_path / sub).mkdir()
    base_dir, ckpt, _ = official_fixture(tmp_path / "g", "gpt2")
    state = torch.load(ckpt, weights_only=True)
    # the wrapper's embedding.weight is the base model's input embedding: another tensor there is refused
    state["embedding.weight"] = state["embedding.weight"].clone()
    state["embedding.weight"][0, 0] += 1
    torch.save(state, ckpt)
    with pytest.raises(CheckpointError, match=r"embedding.weight differs from the base model's input embedding "
                                              r"\(base_causallm.transformer.wte.weight\)"):
        load_checkpoint(ckpt, base=base_dir)
    # a file that holds something else than a state dict of tensors
    for thing in ({"base_causallm.x": 1}, [torch.zeros(1)]):
        torch.save(thing, ckpt)
        with pytest.raises(CheckpointError, match="expected a state dict of tensors"):
            load_checkpoint(ckpt, base=base_dir)
    # an untied Llama checkpoint without its lm_head
    base_dir, ckpt, original = official_fixture(tmp_path / "l", "llama")
    assert not original.config.tie_word_embeddings
    state = torch.load(ckpt, weights_only=True)
    del state["base_causallm.lm_head.weight"]
    torch.save(state, ckpt)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(ckpt, base=base_dir)
    assert str(e.value).splitlines()[1:] == ["  missing 1 key: base_causallm.lm_head.weight"]
    # --base with one of our directories
    with pytest.raises(CheckpointError, match=r"a base model directory \(--base\) is only for official checkpoint files"):
        load_checkpoint(saved, base=base_dir)


class Pickled:
    """Not a tensor: torch.load(weights_only=True) refuses to unpickle it."""


def test_an_official_file_that_is_not_a_state_dict_says_what_it_holds_and_what_to_do(tmp_path):
    """torch's own message advised `weights_only=False`, which no option of ours passes; each kind of file is now
    named for what it holds, with the file to pass instead."""
    import zipfile

    base_dir, ckpt, model = official_fixture(tmp_path, "gpt2")
    state = torch.load(ckpt, weights_only=True)
    save = "torch.save(model.state_dict(), FILE)"
    f = tmp_path / "other.pt"

    def refused(write) -> str:
        write(f)
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(f, base=base_dir)
        return str(e.value)

    assert refused(lambda p: torch.save({"weights": Pickled()}, p)) == (
        f"{f}: holds a pickled Python object (test_checkpoint.Pickled), not only tensors, and unpickling it could run "
        f"any code; save the model's state dict alone ({save}) and pass that file")
    assert refused(lambda p: torch.save(model, p)).startswith(
        f"{f}: holds a pickled Python object (transformers.models.gpt2.modeling_gpt2.GPT2LMHeadModel), not only "
        "tensors")
    assert refused(lambda p: torch.save({"names": {"a", "b"}}, p)) == (
        f"{f}: expected a state dict of tensors, but entry 'names' is a set; pass the file that {save} wrote")

    def other_zip(p):
        with zipfile.ZipFile(p, "w") as z:
            z.writestr("notes.txt", "hello")

    assert refused(other_zip).startswith(f"{f}: a zip archive, but not one torch.save wrote (")
    assert refused(other_zip).endswith(f"); pass the file that {save} wrote")
    assert refused(lambda p: p.write_bytes(ckpt.read_bytes()[:5000])).endswith(
        "; the file is damaged or truncated: copy it again")
    assert refused(lambda p: p.write_bytes(b"")) == f"{f}: empty file; pass the file that {save} wrote"
    assert refused(lambda p: p.write_bytes(b"not a torch file")) == (
        f"{f}: not a readable torch.save state dict (not a file torch.save wrote); pass the file that {save} wrote")
    assert refused(lambda p: torch.save(torch.zeros(3), p)) == (
        f"{f}: expected a state dict of tensors (a dict from names to tensors), found a Tensor; pass the file that "
        f"{save} wrote")
    assert refused(lambda p: torch.save({}, p)) == (
        f"{f}: expected a state dict of tensors, found an empty dict; pass the file that {save} wrote")
    assert refused(lambda p: torch.save({"state_dict": state, "epoch": 3}, p)) == (
        f"{f}: expected a state dict of tensors, found a dict whose 'state_dict' entry holds the tensors (a training "
        "checkpoint?); save that entry alone (torch.save(checkpoint['state_dict'], FILE)) and pass that file")
    torch.save(state, f)
    load_checkpoint(f, base=base_dir)  # the entry alone loads


def test_a_base_directory_without_its_tokenizer_is_named_with_what_to_do(tmp_path):
    """--base without tokenizer.json asked for sentencepiece; without any tokenizer file transformers built a 4-token
    tokenizer and the state dict was blamed for its shapes; without tokenizer_config.json a wrong tokenizer loaded."""
    base_dir, ckpt, _ = official_fixture(tmp_path, "gpt2")
    files = {name: (base_dir / name).read_bytes() for name in ("tokenizer.json", "tokenizer_config.json")}
    saved = "transformers' save_pretrained writes tokenizer.json and tokenizer_config.json"
    for gone, missing in ((["tokenizer.json"], "tokenizer.json"), (["tokenizer_config.json"], "tokenizer_config.json"),
                          (list(files), "tokenizer_config.json and no tokenizer.json")):
        for name in gone:
            (base_dir / name).unlink()
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(ckpt, base=base_dir)
        assert str(e.value) == (f"--base {base_dir}: the tokenizer is incomplete: no {missing} ({saved}); copy the "
                                "tokenizer's files into it from where the model came from"), gone
        for name, data in files.items():
            (base_dir / name).write_bytes(data)
    (base_dir / "config.json").write_text("{")
    with pytest.raises(CheckpointError, match=r"^.*base/config.json: not valid JSON \(.*\); the file is damaged: copy "
                                              r"it again from where it came from$"):
        load_checkpoint(ckpt, base=base_dir)
