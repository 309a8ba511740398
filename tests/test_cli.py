"""The `probe` command line, end to end on tiny inputs."""

from __future__ import annotations

import json
import re

from typer.testing import CliRunner

from probe.cli import app
from probe.data.prosqa import load_items

runner = CliRunner()


def test_data_generate_and_stats(tmp_path):
    out = tmp_path / "gen.json"
    r = runner.invoke(app, ["data", "generate", "--n", "20", "--seed", "3", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert len(load_items(out)) == 20
    r = runner.invoke(app, ["data", "stats", str(out)])
    stats = json.loads(r.stdout)
    assert r.exit_code == 0 and (stats["n"], stats["distinct_items"], stats["items_with_a_copy"]) == (20, 20, 0)
    assert "copy" not in r.stderr
    # Items 0..4 then 0..2 again: 8 items, 5 distinct, 6 of them with a copy; said on stderr, stdout stays JSON.
    from probe.data.prosqa import save_items

    items = load_items(out)
    save_items(items[:5] + items[:3], tmp_path / "copies.json")
    r = runner.invoke(app, ["data", "stats", str(tmp_path / "copies.json")])
    stats = json.loads(r.stdout)
    assert r.exit_code == 0 and (stats["n"], stats["distinct_items"], stats["items_with_a_copy"]) == (8, 5, 6)
    assert "warning: 6 of 8 items have a copy" in r.stderr and "5 are distinct" in r.stderr


def test_train_then_eval(tmp_path, official_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        f"name: tiny\nout_dir: {tmp_path / 'run'}\nmodel: {{model_type: gpt2, n_layer: 1, n_embd: 16, n_head: 2}}\n"
        "train_size: 16\nbatch_size: 16\nnum_epochs: 2\nepochs_per_stage: 1\nmax_latent_stage: 1\n"
    )
    r = runner.invoke(app, ["train", "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    ckpt = tmp_path / "run" / "epoch-002"
    report = tmp_path / "eval.json"
    r = runner.invoke(app, ["eval", "--ckpt", str(ckpt), "--data", str(official_path), "--limit", "4",
                            "--k", "1", "--json", str(report)])
    assert r.exit_code == 0, r.output
    payload = json.loads(report.read_text())
    assert payload["n"] == 4 and len(payload["items"]) == 4
    assert f"({sum(i['correct'] for i in payload['items'])}/4)" in r.stdout


def test_errors_are_one_line(tmp_path, official_path):
    r = runner.invoke(app, ["eval", "--ckpt", str(tmp_path / "missing"), "--data", str(official_path)])
    assert r.exit_code == 2
    assert r.stderr.strip() == f"error: {tmp_path / 'missing'}: no such checkpoint"
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    r = runner.invoke(app, ["eval", "--ckpt", str(tmp_path), "--data", str(bad)])
    assert r.exit_code == 2 and "bad.json: item 0: expected an object, got int" in r.stderr


def test_thoughts_past_the_position_limit_are_one_line_and_write_nothing(tmp_path, official_path):
    """--k 600 on the default model (a GPT-2 of 512 positions): every command that forces thoughts refuses it
    before it runs, in one line naming the item, its thoughts, the prompt's positions, the limit and what fits."""
    data = ["--data", str(official_path)]
    runs = {
        "eval": ["eval", *data, "--limit", "1", "--k", "600"],
        "decode": ["decode", *data, "--index", "0", "--k", "600"],
        "capture": ["capture", *data, "--limit", "1", "--k", "600", "--out", str(tmp_path / "capture")],
        "analyze": ["analyze", *data, "--limit", "2", "--k-max", "600", "--out", str(tmp_path / "analyze")],
        "intervene": ["intervene", *data, "--limit", "2", "--k", "600", "--only", "k,ablate,patch",
                      "--out", str(tmp_path / "intervene")],
    }
    for name, args in runs.items():
        r = runner.invoke(app, args)
        lines = [line for line in r.output.splitlines() if line.strip()]
        assert r.exit_code == 2, (name, r.output[-2000:])
        found = re.fullmatch(r"error: item 0: its prompt with 600 thoughts holds (\d+) positions, past this model's "
                             r"limit of 512 \(n_positions\); at most (\d+) thoughts fit this item", lines[-1])
        assert found and int(found[2]) == 600 - (int(found[1]) - 512), (name, lines[-1])
        assert "Traceback" not in r.output
    assert list(tmp_path.iterdir()) == []


def test_a_layer_past_the_model_is_refused_alike_by_every_command(tmp_path, official_path):
    """--layers 4 on the 4-layer default: decode used to wrap it to layer 0; every command now says the same."""
    data = ["--data", str(official_path)]
    want = "error: layer 4 is out of range for a model with 4 layers (0..3, or -4..-1 from the end)"
    for args in (["decode", *data, "--index", "0", "--layers", "4"],
                 ["capture", *data, "--limit", "1", "--layers", "4", "--out", str(tmp_path / "c")],
                 ["probes", "fit", *data, "--limit", "6", "--layer", "4", "--out", str(tmp_path / "p")],
                 ["intervene", *data, "--limit", "2", "--sites", "4", "--out", str(tmp_path / "i")]):
        r = runner.invoke(app, args)
        lines = [line for line in r.output.splitlines() if line.strip()]
        assert r.exit_code == 2 and lines[-1] == want, (args[0], r.output[-1500:])
    r = runner.invoke(app, ["decode", *data, "--index", "0", "--layers", "-4", "--json", str(tmp_path / "d.json")])
    assert r.exit_code == 0 and json.loads((tmp_path / "d.json").read_text())["thoughts"][0]["layers"][0]["layer"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.json"]


def test_eval_warns_about_names_the_tokenizer_cannot_write(tmp_path, official_path):
    raw = json.loads(official_path.read_text())[:2]
    target = raw[0]["idx_to_symbol"][raw[0]["target"]]
    text = json.dumps(raw[0]).replace(f'"{target}"', '"zzpus"').replace(f" {target}", " zzpus")
    data = tmp_path / "two.json"
    data.write_text(json.dumps([json.loads(text), raw[1]]))
    r = runner.invoke(app, ["eval", "--data", str(data), "--json", str(tmp_path / "e.json")])
    assert r.exit_code == 2 and "cannot write the word 'zzpus' of item 0" in r.output  # refused before any work
    r = runner.invoke(app, ["eval", "--data", str(data), "--json", str(tmp_path / "e.json"), "--allow-lossy-tokenizer"])
    assert r.exit_code == 0, r.output
    assert "warning: 1 item(s) name nodes the tokenizer cannot write (zzpus)" in r.stderr
    items = json.loads((tmp_path / "e.json").read_text())["items"]
    assert items[0]["unknown_names"] == ["zzpus"] and items[0]["correct"] is False


def test_decode_says_which_names_the_lens_cannot_tell_apart(tmp_path, official_path, bpe_tokenizer, official_items):
    """Two names unknown to the default model's word-level tokenizer read as one token: decode warns and flags
    them; with a byte-level BPE, names that only start with the same piece are read whole and not grouped."""
    from probe.data.layout import indistinct_names

    raw = json.loads(official_path.read_text())[0]
    a, b = [n for i, n in enumerate(raw["idx_to_symbol"]) if i not in (raw["root"], raw["target"], raw["neg_target"])][:2]
    text = json.dumps(raw)
    for old, new in ((a, "zzpus"), (b, "qqpus")):
        text = text.replace(f'"{old}"', f'"{new}"').replace(f" {old} ", f" {new} ").replace(f" {old}.", f" {new}.")
    data = tmp_path / "one.json"
    data.write_text(f"[{text}]")
    r = runner.invoke(app, ["decode", "--data", str(data), "--index", "0", "--json", str(tmp_path / "d.json"),
                            "--allow-lossy-tokenizer"])  # refused without it (tests/test_lossy_tokenizer.py)
    assert r.exit_code == 0, r.output
    assert "warning: the lens cannot tell these names apart" in r.stderr and "zzpus = qqpus" in r.stderr.replace("\n", "")
    assert json.loads((tmp_path / "d.json").read_text())["indistinct_names"] == [["zzpus", "qqpus"]]
    r = runner.invoke(app, ["decode", "--data", str(official_path), "--index", "0", "--json", str(tmp_path / "o.json")])
    assert r.exit_code == 0 and "indistinct_names" not in json.loads((tmp_path / "o.json").read_text())
    assert "cannot tell" not in r.stderr
    # With a byte-level BPE, names that share only their first piece are read whole, so they are not grouped.
    firsts = [[bpe_tokenizer.encode(f"Every {n}")[1] for n in it.idx_to_symbol] for it in official_items[:10]]
    assert any(len(set(f)) < len(f) for f in firsts)  # a small BPE does give some names one first piece
    assert not [g for it in official_items[:10] for g in indistinct_names(it, bpe_tokenizer)]
