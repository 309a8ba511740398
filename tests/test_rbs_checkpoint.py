"""Checkpoints in RbS's file layout (docs/rbs-notes.md, section 4): their Coconut wrapper's state dict loaded strictly
over a GPT-2 built from their config file with RbS's built-in vocabulary (`--tokenizer rbs`), bad input of each kind
in one line, and ours in RbS's data format written with their two files, which load back bit for bit."""

from __future__ import annotations

import copy

import json

import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel
from typer.testing import CliRunner

from probe.cli import app
from probe.data.rbs import RBS_NODES, to_rbs_json
from probe.data.render import RBS_OPTION_SEED, rbs_question, rbs_target_first
from probe.model.evaluate import evaluate
from probe.model.checkpoint import (
    DEFAULT_CHECKPOINT, CheckpointError, load_checkpoint, rbs_state_dict, save_checkpoint,
)
from probe.model.coconut import CoconutConfig, CoconutModel
from probe.model.tokenizer import build_rbs_tokenizer, special_tokens

runner = CliRunner()

# configs/symbol-2layer-8head-768dim.json of RbS's repository: the fields that shape the model
THEIR_CONFIG = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "activation_function": "gelu_new",
                "n_layer": 2, "n_embd": 768, "n_head": 8, "n_inner": None, "vocab_size": 40, "n_positions": 1024,
                "n_ctx": 1024, "bos_token_id": 35, "eos_token_id": 0}
# the key list of docs/rbs-notes.md, section 4, for their two layers
THEIR_KEYS = {
    "base_causallm.transformer.wte.weight", "base_causallm.transformer.wpe.weight",
    *(f"base_causallm.transformer.h.{i}.{part}.{p}" for i in (0, 1) for p in ("weight", "bias")
      for part in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj")),
    "base_causallm.transformer.ln_f.weight", "base_causallm.transformer.ln_f.bias",
    "base_causallm.lm_head.weight", "embedding.weight",
}


class TheirCoconut(nn.Module):
    """The attributes of RbS's Coconut wrapper (coconut.py) that reach its state dict."""

    def __init__(self, base):
        super().__init__()
        self.base_causallm = base
        self.embedding = base.transformer.get_input_embeddings()


@pytest.fixture(scope="module")
def items(official_items):
    """Validation items that RbS's 31 node tokens can write."""
    return [it for it in official_items if it.n_nodes <= RBS_NODES][:4]


@pytest.fixture(scope="module")
def theirs(tmp_path_factory, items):
    """(directory, their config file, their checkpoint file, its state dict, an RbS data file): a random GPT-2 of
    their size saved as their run.py saves it."""
    tmp = tmp_path_factory.mktemp("theirs")
    config = tmp / "symbol-2layer-8head-768dim.json"
    config.write_text(json.dumps(THEIR_CONFIG))
    torch.manual_seed(0)
    state = TheirCoconut(GPT2LMHeadModel(GPT2Config(**THEIR_CONFIG))).state_dict()
    ckpt = tmp / "checkpoint_300"
    torch.save(state, ckpt)
    data = tmp / "prosqa_valid_graph_4_coconut.json"
    data.write_text(json.dumps([to_rbs_json(it) for it in items]))
    return tmp, config, ckpt, state, data


def test_their_checkpoint_is_evaluated_from_the_command_line_with_each_prompt(theirs, items):
    tmp, config, ckpt, state, data = theirs
    out = tmp / "eval.json"
    r = runner.invoke(app, ["eval", "--ckpt", str(ckpt), "--base", str(config), "--tokenizer", "rbs",
                            "--data", str(data), "--k", "gold", "--json", str(out)])
    assert r.exit_code == 0, r.output
    report = json.loads(out.read_text())
    assert report["n"] == len(items)
    for it, row in zip(items, report["items"]):
        question = rbs_question(it, rbs_target_first(it))
        assert row["prompt"] == " ".join([question, *["<|latent|>"] * len(it.steps), "[A]"])
        assert isinstance(row["prediction"], str) and row["correct"] == (row["prediction"] == str(it.target))
    first = sum(rbs_target_first(it) for it in items)
    assert (f"options' order: drawn per item from seed probe.data.render.RBS_OPTION_SEED = {RBS_OPTION_SEED}; the "
            f"target is listed first in {first}/{len(items)} items") in r.stdout
    model, tok = load_checkpoint(ckpt, base=config, tokenizer="rbs")
    cfg = model.config
    assert (cfg.data_format, cfg.supervision, cfg.max_latent_stage, cfg.pad_latent_to_max) == ("rbs", "optimal", 4,
                                                                                               False)
    assert (cfg.start_id, cfg.end_id, cfg.latent_id, cfg.eos_id, cfg.pad_id) == (31, 32, 33, 38, 38)
    assert all(torch.equal(v, state[f"base_causallm.{k}"]) for k, v in model.base.state_dict().items())


def _bad_inputs(tmp, config, ckpt, state):
    """(name, the options after --ckpt, the one line the error must be) for each kind of bad input."""

    def saved(name, change):
        s = dict(state)
        change(s)
        torch.save(s, tmp / name)
        return str(tmp / name)

    def vocab_50(s):
        for key in ("base_causallm.transformer.wte.weight", "base_causallm.lm_head.weight", "embedding.weight"):
            s[key] = torch.zeros(50, 768)

    def other_embedding(s):
        s["embedding.weight"] = s["embedding.weight"].clone()
        s["embedding.weight"][3, 5] += 1

    not_json, big = tmp / "not-json.json", tmp / "gpt2-vocab.json"
    not_json.write_text('{"model_type": "gpt2", ')
    big.write_text(json.dumps({**THEIR_CONFIG, "vocab_size": 50257}))
    rbs = ["--tokenizer", "rbs"]
    f = saved("vocab50", vocab_50)
    missing = saved("missing", lambda s: s.pop("base_causallm.transformer.h.1.mlp.c_fc.bias"))
    extra = saved("extra", lambda s: s.update({"base_causallm.transformer.h.2.ln_1.weight": torch.ones(768)}))
    embedding = saved("embedding", other_embedding)
    return [
        ("a tensor of another shape", [f, "--base", str(config), *rbs],
         f"{f}: base_causallm.transformer.wte.weight is [50, 768] in the checkpoint but [40, 768] in the GPT-2 of "
         f"{config} (2 tensors differ in shape in all)"),
        ("a missing key", [missing, "--base", str(config), *rbs],
         f"{missing}: the state dict does not fit the GPT-2 of {config}; likely cause: the file holds only part of "
         "the model (or the wrong --base)\n  missing 1 key: base_causallm.transformer.h.1.mlp.c_fc.bias"),
        ("an extra key", [extra, "--base", str(config), *rbs],
         f"{extra}: the state dict does not fit the GPT-2 of {config}; likely cause: the file holds more than the "
         "model (or the wrong --base)\n  unexpected 1 key: base_causallm.transformer.h.2.ln_1.weight"),
        ("embedding.weight other than wte", [embedding, "--base", str(config), *rbs],
         f"{embedding}: embedding.weight differs from the base model's input embedding "
         "(base_causallm.transformer.wte.weight); the file is not one official wrapper's"),
        ("a config file that is not JSON", [str(ckpt), "--base", str(not_json), *rbs],
         f"{not_json}: not valid JSON"),
        ("a config file that is not there", [str(ckpt), "--base", str(tmp / "none.json"), *rbs],
         f"{tmp / 'none.json'}: no such config file; --base takes a config JSON file or a base model directory"),
        ("a config file without a tokenizer", [str(ckpt), "--base", str(config)],
         f"--base {config} holds no tokenizer; pass --tokenizer rbs or a tokenizer directory"),
        ("RbS's vocabulary over a config of another vocabulary", [str(ckpt), "--base", str(big), *rbs],
         f"{big}: vocab_size 50257, but RbS's vocabulary has 40 tokens; their models' config has vocab_size 40, and "
         "its embedding rows are these tokens (no resizing)"),
        ("--tokenizer with one of our checkpoints", [str(DEFAULT_CHECKPOINT), *rbs],
         f"{DEFAULT_CHECKPOINT}: a tokenizer (--tokenizer) is only for official checkpoint files; this is one of ours "
         "(a directory), which holds its own"),
    ]


def test_bad_input_for_their_checkpoint_is_one_line_and_writes_nothing(theirs):
    tmp, config, ckpt, state, data = theirs
    out = tmp / "bad.json"
    for name, args, line in _bad_inputs(tmp, config, ckpt, state):
        r = runner.invoke(app, ["eval", "--data", str(data), "--k", "gold", "--json", str(out), "--ckpt", *args])
        assert r.exit_code == 2 and isinstance(r.exception, SystemExit), (name, r.output[-1500:])
        assert "Traceback" not in r.output, (name, r.output[-1500:])
        lines, expected = r.stderr.strip().splitlines(), f"error: {line}".splitlines()
        # one line, or for keys that do not fit, three at most: the cause, then the keys missing and unexpected
        assert len(lines) == len(expected) <= 3 and lines[0].startswith(expected[0]) and lines[1:] == expected[1:], \
            (name, lines, line)
        assert not out.exists() and not list(tmp.glob(".bad.json*")), name


def _rbs_model(seed: int = 0) -> tuple[CoconutModel, object]:
    """A tiny random GPT-2 over RbS's vocabulary, in RbS's data format."""
    tok = build_rbs_tokenizer()
    torch.manual_seed(seed)
    base = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=len(tok), n_positions=256))
    base.eval()
    config = CoconutConfig.from_special(special_tokens(tok), mode="coconut", data_format="rbs", supervision="optimal",
                                        max_latent_stage=4)
    return CoconutModel(base, config), tok


@torch.no_grad()
def test_ours_in_rbs_format_carries_their_files_which_load_back_bit_for_bit(tmp_path, items):
    model, tok = _rbs_model()
    path = save_checkpoint(model, tok, tmp_path / "ours")
    theirs, their_config = path / "rbs" / "checkpoint", path / "rbs" / "config.json"
    state = torch.load(theirs, weights_only=True)
    assert set(state) == THEIR_KEYS
    assert all(v.dtype == torch.float32 and v.is_contiguous() for v in state.values())  # the model's dtype
    assert {v.dtype for v in rbs_state_dict(copy.deepcopy(model).to(torch.bfloat16)).values()} == {torch.bfloat16}
    assert len({v.untyped_storage().data_ptr() for v in state.values()}) == len(state)  # each a tensor of its own
    assert torch.equal(state["embedding.weight"], state["base_causallm.transformer.wte.weight"])
    assert torch.equal(state["base_causallm.lm_head.weight"], state["base_causallm.transformer.wte.weight"])
    # a sharded run's gathered weights, as save_pretrained keeps them (no tied lm_head): the same file
    gathered = {k: v.clone() for k, v in model.base.state_dict().items() if k != "lm_head.weight"}
    again = rbs_state_dict(model, gathered)
    assert again.keys() == state.keys() and all(torch.equal(again[k], state[k]) for k in state)
    raw = json.loads(their_config.read_text())
    assert raw["architectures"] == ["GPT2LMHeadModel"] and raw["vocab_size"] == 40 and "dtype" not in raw
    # their loading (run.py): AutoConfig over the config file, from_config, the wrapper, load_state_dict
    wrapper = TheirCoconut(AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(their_config))))
    assert not wrapper.load_state_dict(state, strict=True).missing_keys
    card = (path / "README.md").read_text()
    assert "data format rbs, RbS's 40-token vocabulary; rbs/checkpoint loads in their code unchanged" in card

    ours, ours_tok = load_checkpoint(path)
    back, back_tok = load_checkpoint(theirs, base=their_config, tokenizer="rbs")
    tok_dir = tmp_path / "tokenizer"
    tok.save_pretrained(tok_dir)  # RbS's vocabulary in a tokenizer directory means the same
    assert load_checkpoint(theirs, base=their_config, tokenizer=tok_dir)[0].config == back.config
    for k in ("gold", 2):
        a = evaluate(ours, ours_tok, items, k=k, progress=False)
        b = evaluate(back, back_tok, items, k=k, progress=False)
        assert [r.prediction for r in a.items] == [r.prediction for r in b.items]
        assert [r.prompt for r in a.items] == [r.prompt for r in b.items]
        assert all(torch.equal(x.thoughts, y.thoughts) for x, y in zip(a.items, b.items))


def test_a_model_in_another_format_writes_no_rbs_files(tmp_path, tiny_model, word_tokenizer):
    path = save_checkpoint(tiny_model, word_tokenizer, tmp_path / "ours")
    assert not (path / "rbs").exists()
    assert f"data format {tiny_model.config.data_format}, a " in (path / "README.md").read_text()


def test_a_config_file_with_a_word_tokenizer_directory_resizes_as_a_base_directory_does(tmp_path, word_tokenizer):
    """--base CONFIG.json --tokenizer DIR: the tokenizer's latent tokens are added and the embedding resized to it,
    as with a base directory holding both."""
    from tests.test_checkpoint import official_fixture

    base_dir, ckpt, _ = official_fixture(tmp_path, "gpt2")
    a, _ = load_checkpoint(ckpt, base=base_dir)
    b, _ = load_checkpoint(ckpt, base=base_dir / "config.json", tokenizer=base_dir)
    assert a.config == b.config and a.config.data_format == "sentences"
    assert all(torch.equal(x, y) for x, y in zip(a.base.state_dict().values(), b.base.state_dict().values()))
    with pytest.raises(CheckpointError, match=r"^--tokenizer .*nowhere: no such tokenizer directory$"):
        load_checkpoint(ckpt, base=base_dir / "config.json", tokenizer=tmp_path / "nowhere")
