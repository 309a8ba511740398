"""`probe decode`, `probe capture` and `probe tuned-lens` on a tiny saved checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from probe.capture.trace import TraceStore
from probe.cli import app
from probe.data.graph import ProsQAGraph
from probe.data.render import render_prompt, tokenize_item
from probe.model.evaluate import evaluate
from probe.model.checkpoint import load_checkpoint, save_checkpoint
from probe.model.coconut import CoconutConfig, CoconutModel
from probe.model.tokenizer import build_word_tokenizer, special_tokens
from conftest import tiny_base

runner = CliRunner()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, official_items):
    names = sorted({s for it in official_items for s in it.idx_to_symbol})
    tok = build_word_tokenizer(names)
    sp = special_tokens(tok)
    model = CoconutModel(tiny_base("gpt2", len(tok), sp.eos_id), CoconutConfig.from_special(sp, max_latent_stage=3))
    return save_checkpoint(model, tok, tmp_path_factory.mktemp("ckpt") / "tiny")


def test_decode_reports_each_thought_against_an_independent_forward(ckpt, official_path, official_items, tmp_path):
    out = tmp_path / "d.json"
    r = runner.invoke(app, ["decode", "--ckpt", str(ckpt), "--data", str(official_path), "--index", "7",
                            "--top", "3", "--json", str(out)])
    assert r.exit_code == 0, r.output
    got = json.loads(out.read_text())
    item = official_items[7]
    assert got["index"] == 7 and got["question"] == item.question and isinstance(got["correct"], bool)
    assert [t["k"] for t in got["thoughts"]] == [1, 2, 3]
    g = ProsQAGraph.from_item(item)
    model, tok = load_checkpoint(ckpt)
    prompt = render_prompt(tokenize_item(item, tok, "sentences"), 3, model.config.stage_spec, model.config.special)
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[0]
    q = len(tokenize_item(item, tok, "sentences").question)
    for t in got["thoughts"]:
        assert t["frontier"] == [item.name(v) for v in g.frontier(t["k"])]
        assert t["reachable"] == [item.name(v) for v in g.reachable(t["k"])]
        assert [l["layer"] for l in t["layers"]] == [0, 1]
        probs = logits[q + t["k"] - 1].softmax(-1)  # the position that emits thought k
        top = probs.topk(3)
        last = t["layers"][-1]
        assert [tok_ for tok_, _ in last["top"]] == [tok.decode([i]).strip() or repr(tok.decode([i])) for i in top.indices.tolist()]
        assert [p for _, p in last["top"]] == pytest.approx(top.values.tolist(), abs=1e-5)
        want = sum(float(probs[tok.convert_tokens_to_ids(n)]) for n in t["frontier"])
        assert last["frontier_mass"] == pytest.approx(want, abs=1e-5)
    assert "thought 1 (logit lens)" in r.stdout and "answer:" in r.stdout


def test_decode_errors(ckpt, official_path, tmp_path):
    r = runner.invoke(app, ["decode", "--ckpt", str(ckpt), "--data", str(official_path), "--index", "300"])
    assert r.exit_code == 2 and "--index 300 is out of range" in r.stderr and "has 300 items (0..299)" in r.stderr
    r = runner.invoke(app, ["decode", "--ckpt", str(ckpt), "--data", str(official_path), "--index", "0", "--lens", "tuned"])
    assert r.exit_code == 2 and "tuned_lens.safetensors: no such tuned lens file; fit one with `probe tuned-lens" in r.stderr
    r = runner.invoke(app, ["decode", "--ckpt", str(ckpt), "--data", str(official_path), "--index", "0", "--layers", "x"])
    assert r.exit_code == 2 and "--layers: expected comma-separated integers" in r.stderr


def test_capture_and_tuned_lens_commands(ckpt, official_path, official_items, tmp_path):
    r = runner.invoke(app, ["capture", "--ckpt", str(ckpt), "--data", str(official_path), "--out", str(tmp_path / "t"),
                            "--limit", "10", "--hooks", "*hook_resid_post", "--batch-size", "4", "--shard-size", "4"])
    assert r.exit_code == 0, r.output
    store = TraceStore(tmp_path / "t")
    assert len(store) == 10 and store.n_shards == 3 and store.names == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    right = sum(r.correct for r in evaluate(*load_checkpoint(ckpt), official_items[:10], progress=False).items)
    assert f"answers (greedy, up to 128 tokens): {right}/10 correct" in r.stdout  # as probe eval scores them
    assert store.manifest["source"]["data"] == str(official_path)
    lens = tmp_path / "lens.safetensors"
    r = runner.invoke(app, ["tuned-lens", "--ckpt", str(ckpt), "--out", str(lens), "--n", "40", "--epochs", "5"])
    assert r.exit_code == 0, r.output
    assert lens.is_file() and "layer 0: held-out KL to the final distribution" in r.stdout
    r = runner.invoke(app, ["decode", "--ckpt", str(ckpt), "--data", str(official_path), "--index", "0",
                            "--lens", "tuned", "--lens-file", str(lens), "--layers", "0"])
    assert r.exit_code == 0, r.output
    assert "(tuned lens)" in r.stdout


def test_official_checkpoints_decode_and_capture_with_base(tmp_path, official_path):
    from test_checkpoint import official_fixture

    base_dir, official, _ = official_fixture(tmp_path, "gpt2")
    r = runner.invoke(app, ["decode", "--ckpt", str(official), "--base", str(base_dir), "--data", str(official_path),
                            "--index", "2", "--k", "2", "--json", str(tmp_path / "d.json")])
    assert r.exit_code == 0, r.output
    assert [t["k"] for t in json.loads((tmp_path / "d.json").read_text())["thoughts"]] == [1, 2]
    r = runner.invoke(app, ["capture", "--ckpt", str(official), "--base", str(base_dir), "--data", str(official_path),
                            "--out", str(tmp_path / "t"), "--limit", "3", "--layers", "-1", "--k", "1"])
    assert r.exit_code == 0, r.output
    assert TraceStore(tmp_path / "t").names == [f"blocks.1.{p}" for p in
                                                ("hook_resid_pre", "attn.hook_pattern", "hook_attn_out", "hook_mlp_out",
                                                 "hook_resid_post")] + ["ln_final.hook_normalized"]
