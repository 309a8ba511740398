"""Every command, given bad input of each kind: one line that names the thing and what is wrong, exit code 2,
never a Python traceback, and nothing written."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from probe.cli import app
from probe.model.checkpoint import DEFAULT_CHECKPOINT

runner = CliRunner()

# each command with the options that make it run, {data} and {out} filled in per case
COMMANDS = {
    "eval": ["eval", "--data", "{data}", "--limit", "2"],
    "decode": ["decode", "--data", "{data}", "--index", "0"],
    "capture": ["capture", "--data", "{data}", "--limit", "2", "--out", "{out}"],
    "analyze": ["analyze", "--data", "{data}", "--limit", "2", "--k-max", "1", "--out", "{out}"],
    "tuned-lens": ["tuned-lens", "--data", "{data}", "--epochs", "1", "--out", "{out}"],
    "intervene": ["intervene", "--data", "{data}", "--limit", "2", "--k", "1", "--out", "{out}"],
    "probes fit": ["probes", "fit", "--data", "{data}", "--limit", "4", "--k-max", "1", "--folds", "2", "--out", "{out}"],
    "probes halt": ["probes", "halt", "--data", "{data}", "--k-max", "2", "--folds", "2", "--out", "{out}"],
    "sae train": ["sae", "train", "--data", "{data}", "--epochs", "1", "--d-sae", "8", "--k", "2", "--out", "{out}"],
}


def bad_cases(tmp_path, official_path):
    """(name, extra arguments or a replaced --data, the words the one line must hold)."""
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text("[{not json")
    ours_without_meta = tmp_path / "not-a-checkpoint"
    ours_without_meta.mkdir()
    broken = tmp_path / "broken-ckpt"
    broken.mkdir()
    (broken / "coconut.json").write_text('{"format_version": 1, "start_id": 1}')
    no_tokenizer, nan = _shipped_copy(tmp_path / "no-tokenizer"), _shipped_copy(tmp_path / "nan-weights")
    (no_tokenizer / "tokenizer.json").unlink()
    (nan / "model.safetensors").unlink()
    tensors = load_file(str(DEFAULT_CHECKPOINT / "model.safetensors"))
    tensors["transformer.h.1.mlp.c_fc.weight"].view(-1)[:3] = float("nan")
    save_file(tensors, str(nan / "model.safetensors"), metadata={"format": "pt"})
    pickled, base = tmp_path / "pickled.pt", tmp_path / "base"
    torch.save({"model": _Pickled()}, pickled)
    base.mkdir()
    (base / "config.json").write_text((DEFAULT_CHECKPOINT / "config.json").read_text())
    return [
        ("missing data file", {"data": str(tmp_path / "nowhere.json")}, "no such ProsQA data file"),
        ("corrupt data file", {"data": str(corrupt)}, "not a valid JSON file"),
        ("missing checkpoint", {"args": ["--ckpt", str(tmp_path / "nockpt")]}, "no such checkpoint"),
        ("a directory that is not a checkpoint", {"args": ["--ckpt", str(ours_without_meta)]}, "no coconut.json"),
        ("a checkpoint with a broken coconut.json", {"args": ["--ckpt", str(broken)]}, "broken-ckpt"),
        ("a device that is not there", {"args": ["--device", "cuda:7"]}, "--device cuda:7"),
        ("text that names no device", {"args": ["--device", "foo"]}, "--device foo: not a device name"),
        ("a kind of device we do not run on", {"args": ["--device", "mps"]}, "--device mps: expected cpu, cuda or cuda:N"),
        ("an unknown dtype", {"args": ["--dtype", "float8"]}, "--dtype"),
        ("a checkpoint without tokenizer.json", {"args": ["--ckpt", str(no_tokenizer)]},
         f"{no_tokenizer}: the checkpoint is incomplete: missing tokenizer.json"),
        ("a checkpoint whose weights hold NaN", {"args": ["--ckpt", str(nan)]},
         f"{nan / 'model.safetensors'}: tensor transformer.h.1.mlp.c_fc.weight holds 3 NaN values; the file is damaged "
         "or came from a diverged run"),
        ("an official file holding a pickled object", {"args": ["--ckpt", str(pickled), "--base", str(base)]},
         f"{pickled}: holds a pickled Python object (test_cli_bad_input._Pickled), not only tensors"),
        ("a tokenizer for one of our checkpoints", {"args": ["--tokenizer", "rbs"]},
         f"{DEFAULT_CHECKPOINT}: a tokenizer (--tokenizer) is only for official checkpoint files"),
        ("a config file for a base, and no tokenizer",
         {"args": ["--ckpt", str(pickled), "--base", str(base / "config.json")]},
         f"--base {base / 'config.json'} holds no tokenizer; pass --tokenizer rbs or a tokenizer directory"),
    ]


class _Pickled:
    """An object torch.load(weights_only=True) does not unpickle."""


def _shipped_copy(path):
    """The shipped checkpoint's small files, its weights linked (tests break one file of the copy)."""
    path.mkdir()
    for f in DEFAULT_CHECKPOINT.iterdir():
        if f.name == "model.safetensors":
            (path / f.name).symlink_to(f)
        elif f.is_file():
            (path / f.name).write_bytes(f.read_bytes())
    return path


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_answers_bad_input_in_one_line(command, tmp_path, official_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    out = tmp_path / "out"
    for name, case, words in bad_cases(inputs, official_path):
        args = [a.format(data=case.get("data", str(official_path)), out=str(out)) for a in COMMANDS[command]]
        r = runner.invoke(app, args + case.get("args", []))
        lines = [line for line in r.output.splitlines() if line.strip()]
        assert r.exit_code == 2, (command, name, r.output[-1500:])
        assert isinstance(r.exception, SystemExit) and "Traceback" not in r.output, (command, name, r.output[-1500:])
        assert words in r.output and lines[-1].startswith("error: "), (command, name, lines[-3:])
        assert not out.exists(), (command, name)


def test_train_release_and_data_answer_bad_input_in_one_line(tmp_path, official_path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("name: x\nmode: [\n")
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("name: x\nepochs: 3\n")
    good = tmp_path / "good.yaml"
    good.write_text(f"name: x\nout_dir: {tmp_path / 'run'}\n")
    cases = [
        (["train", "--config", str(tmp_path / "none.yaml")], "none.yaml: no such config file"),
        (["train", "--config", str(bad_yaml)], "bad.yaml: not valid YAML"),
        (["train", "--config", str(unknown)], "unknown option(s) ['epochs']"),
        (["train", "--config", str(good), "--set", "lr"], "--set 'lr': expected OPTION=VALUE"),
        (["train", "--config", str(good), "--set", "mode=sideways"], "mode: unknown 'sideways'"),
        (["train", "--config", str(good), "--max-minutes", "-1"], "max_minutes must be > 0, got -1.0"),
        (["release", "--ckpt", str(tmp_path / "nockpt"), "--out", str(tmp_path / "rel"), "--data", str(official_path),
          "--config", str(good)], "no trainer_state.json"),
        (["data", "stats", str(tmp_path / "none.json")], "no such ProsQA data file"),
        (["eval", "--data", str(official_path), "--k", "three"], "--k: expected an integer, got 'three'"),
        (["train", "--config", str(good), "--device", "foo"], "--device foo: not a device name"),
        (["release", "--ckpt", str(tmp_path / "nockpt"), "--out", str(tmp_path / "rel"), "--data", str(official_path),
          "--config", str(good), "--store-dtype", "int8"], "--store-dtype: expected one of float32, bfloat16, float16"),
        (["capture", "--data", str(official_path), "--out", str(tmp_path / "cap"), "--store-dtype", "int8"],
         "--store-dtype: expected one of float32, bfloat16, float16, got 'int8'"),
        (["capture", "--data", str(official_path), "--out", str(tmp_path / "cap"), "--layers", "1-2"],
         "--layers: expected comma-separated integers such as 0,2,-1, got '1-2'"),
        (["capture", "--data", str(official_path), "--out", str(tmp_path / "cap"), "--hooks", "blocks.9.*"],
         "hook pattern(s) ['blocks.9.*'] match no hook"),
        (["decode", "--data", str(official_path), "--index", "-1"], "--index -1 is out of range"),
        (["capture", "--data", str(official_path), "--limit", "1", "--out", str(bad_yaml / "cap")],
         f"--out {bad_yaml / 'cap'}: {bad_yaml} is a file, not a directory"),
        (["decode", "--data", str(official_path), "--index", "0", "--json", str(bad_yaml / "d.json")],
         f"--json {bad_yaml / 'd.json'}: {bad_yaml} is a file, not a directory"),
        (["eval", "--data", str(official_path), "--limit", "1", "--json", str(bad_yaml / "e.json")],
         f"--json {bad_yaml / 'e.json'}: {bad_yaml} is a file, not a directory"),
        (["eval", "--data", str(official_path), "--limit", "1", "--json", str(tmp_path)],
         f"--json {tmp_path}: is a directory; give a file name"),
        (["decode", "--data", str(official_path), "--index", "0", "--json", str(tmp_path)],
         f"--json {tmp_path}: is a directory; give a file name"),
    ]
    for args, words in cases:
        r = runner.invoke(app, args)
        lines = [line for line in r.output.splitlines() if line.strip()]
        assert r.exit_code == 2 and isinstance(r.exception, SystemExit), (args, r.output[-1500:])
        assert "Traceback" not in r.output and words in lines[-1] and lines[-1].startswith("error: "), (args, lines[-3:])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml", "good.yaml", "unknown.yaml"]


@pytest.fixture(scope="module")
def short_model(tmp_path_factory, official_path, word_tokenizer):
    """(checkpoint, data directory, long, its prompt's length, limit): a tiny GPT-2 whose position limit is 2 below
    the prompt of the longest of four validation items (index `long`) with the checkpoint's own 6 thoughts (each
    other prompt fits), and data files of those four items (four.json), one and two items that fit, and none."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from probe.data.prosqa import load_items
    from probe.data.render import render_prompt, tokenize_item
    from probe.model.checkpoint import save_checkpoint
    from probe.model.coconut import CoconutConfig, CoconutModel
    from probe.model.tokenizer import special_tokens

    tmp = tmp_path_factory.mktemp("short")
    raw = json.loads(official_path.read_text())[:4]
    config = CoconutConfig.from_special(special_tokens(word_tokenizer))
    lengths = [len(render_prompt(tokenize_item(it, word_tokenizer, "sentences"), 6, config.stage_spec, config.special))
               for it in load_items(official_path, limit=4)]
    long = max(range(4), key=lengths.__getitem__)
    limit = lengths[long] - 2
    assert sorted(lengths)[-2] <= limit  # only one item is past it
    torch.manual_seed(0)
    sp = special_tokens(word_tokenizer)
    base = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=limit, vocab_size=len(word_tokenizer),
                                      bos_token_id=sp.eos_id, eos_token_id=sp.eos_id, pad_token_id=sp.eos_id))
    ckpt = save_checkpoint(CoconutModel(base.eval(), config), word_tokenizer, tmp / "ckpt")
    short = [it for i, it in enumerate(raw) if i != long]
    for name, data in (("four", raw), ("one", short[:1]), ("two", short[:2]), ("empty", [])):
        (tmp / f"{name}.json").write_text(json.dumps(data))
    return ckpt, tmp, long, lengths[long], limit


def _one_line(args) -> str:
    r = runner.invoke(app, args)
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit), (args, r.output[-1500:])
    assert "Traceback" not in r.output and lines[-1].startswith("error: "), (args, lines[-3:])
    return lines[-1]


def test_every_command_that_builds_prompts_names_the_item_past_the_position_limit(short_model, tmp_path):
    """With the checkpoint's own thoughts (no --k) eval said 'stage None' and no item; every command that builds
    prompts now names the item, its length and the limit, and how many thoughts would fit."""
    ckpt, data, long, length, limit = short_model
    four = ["--ckpt", str(ckpt), "--data", str(data / "four.json")]
    runs = {
        "eval": ["eval", *four],
        "decode": ["decode", "--ckpt", str(ckpt), "--data", str(data / "four.json"), "--index", str(long)],
        "capture": ["capture", *four, "--out", str(tmp_path / "c")],
        "analyze": ["analyze", *four, "--out", str(tmp_path / "a")],
        "intervene": ["intervene", *four, "--only", "k,ablate,patch", "--out", str(tmp_path / "i")],
        "probes fit": ["probes", "fit", *four, "--folds", "2", "--out", str(tmp_path / "p")],
        "probes halt": ["probes", "halt", *four, "--folds", "2", "--out", str(tmp_path / "h")],
        "sae train": ["sae", "train", *four, "--out", str(tmp_path / "s")],
        "tuned-lens": ["tuned-lens", *four, "--out", str(tmp_path / "t.safetensors")],
    }
    want = (f"error: item {long}: its prompt with 6 thoughts holds {length} positions, past this model's limit of "
            f"{limit} (n_positions); at most 4 thoughts fit this item")
    for name, args in runs.items():
        assert _one_line(args) == want, name
    assert list(tmp_path.iterdir()) == []


def test_every_command_says_why_its_data_holds_too_few_items(short_model, tmp_path):
    """A one-item or empty file: each command runs, or says in one line which data, how many items and why that is
    too few, before it loads a model where it can ('data stats' refused one item by an internal function's name)."""
    ckpt, data, *_ = short_model
    empty, one, two = (str(data / f"{n}.json") for n in ("empty", "one", "two"))
    out = str(tmp_path / "out")
    folds = "each fold's probe is fit on the other folds' items, at least 2 of them (give more items or fewer folds)"
    held = "on some items and checked on others held out (10%, at least one): it needs at least 2"
    cases = [
        (["eval", "--data", empty], f"--data {empty}: no items; there is nothing to evaluate"),
        (["capture", "--data", empty, "--out", out], f"--data {empty}: no items; there is nothing to capture"),
        (["analyze", "--data", empty, "--out", out], f"--data {empty}: no items; there is nothing to analyze"),
        (["intervene", "--data", empty, "--out", out], f"--data {empty}: no items; there is nothing to intervene on"),
        (["data", "stats", empty], f"{empty}: no items; there is nothing to describe"),
        (["probes", "fit", "--data", one, "--out", out], f"--data {one}: 1 item; --folds 5 needs at least 5: {folds}"),
        (["probes", "fit", "--data", two, "--folds", "2", "--limit", "2", "--out", out],
         f"--data {two} --limit 2: 2 items; --folds 2 needs at least 4: {folds}"),
        (["probes", "halt", "--data", one, "--out", out],
         f"--data {one}: 1 item; the halting probe is cross-validated with folds over items (one at least held out): "
         "it needs at least 2"),
        (["probes", "halt", "--ckpt", str(ckpt), "--data", two, "--k-max", "2", "--out", out],
         "2 item(s) are too few for the halting probe with k_max=2: its folds over items leave a fold's probe fewer "
         "than 2 rows (1 per item); give at least 3 items"),
        (["sae", "train", "--data", one, "--out", out], f"--data {one}: 1 item; an SAE is trained {held}"),
        (["tuned-lens", "--data", one, "--out", out], f"--data {one}: 1 item; a tuned lens is fit {held}"),
        (["intervene", "--ckpt", str(ckpt), "--data", one, "--only", "ablate", "--out", out],
         "1 item: the 'other' ablation gives each item another item's thoughts, so it needs at least 2 distinct "
         "items; give more, or leave 'other' out (--ablations zero,mean,random)"),
        (["intervene", "--ckpt", str(ckpt), "--data", two, "--out", out],
         "steering: the frontier probe fit on these 2 items has no direction for any item's steering target (a parent "
         "of its wrong option; a probe learns a name's direction only if it is in the frontier at thought 1 in some "
         "items and out of it in others); give more items, another probe (--probe), or leave steering out "
         "(--only k,ablate,patch)"),
    ]
    for args, want in cases:
        assert _one_line(args) == f"error: {want}", args
    assert list(tmp_path.iterdir()) == []
    # one item is enough for these
    r = runner.invoke(app, ["data", "stats", one])
    assert r.exit_code == 0 and json.loads(r.output)["n"] == 1 and json.loads(r.output)["std_nodes"] is None
    r = runner.invoke(app, ["analyze", "--ckpt", str(ckpt), "--data", one, "--k-max", "1", "--out", out])
    assert r.exit_code == 0, r.output[-1500:]
