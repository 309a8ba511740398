"""Capture: the hooks see exactly what CoconutModel computes, at the right positions, in any batch."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import torch

import probe.capture.trace as capture_mod
from probe.capture.trace import CaptureError, TraceStore, capture, capture_batch, capture_to_disk, concat_traces
from probe.model.architecture import architecture
from probe.model.hook_names import FINAL, HookNameError, select_hooks
from probe.data.layout import prompt_layout
from probe.data.render import render_prompt, tokenize_item


@pytest.fixture
def items(official_items):
    return official_items[:6]


def test_thoughts_and_logits_are_the_models_own(tiny_model, word_tokenizer, items):
    k = 3
    tr = capture_batch(tiny_model, word_tokenizer, items, k=k)
    L = architecture(tiny_model).n_layers
    # Each item alone, without hooks: its thoughts and the logits at each step position.
    for b, it in enumerate(items):
        prompt = render_prompt(tokenize_item(it, word_tokenizer, "sentences"), k, tiny_model.config.stage_spec,
                               tiny_model.config.special)
        with torch.no_grad():
            out = tiny_model(torch.tensor([prompt]))
        torch.testing.assert_close(tr.thoughts[b], out.thoughts[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(tr.logits[b], out.logits[0, tr.positions[b]], atol=1e-4, rtol=0)
        assert tr.positions[b].tolist() == [len(prompt) - k - 2 + j for j in range(k)] + [len(prompt) - 1]
        assert prompt[tr.positions[b, -1]] == tiny_model.config.end_id
        assert tr.prompt_ids[b, : tr.prompt_len[b]].tolist() == prompt
    # The final norm's output at the thought positions is the thought (not the last block's residual).
    torch.testing.assert_close(tr[FINAL][:, :k], tr.thoughts, atol=1e-6, rtol=0)
    assert not torch.allclose(tr[f"blocks.{L - 1}.hook_resid_post"][:, :k], tr.thoughts, atol=1e-3)
    # The logit lens at the last layer is the model's logits.
    lens = tiny_model.unembed(architecture(tiny_model).final_norm(tr[f"blocks.{L - 1}.hook_resid_post"]))
    torch.testing.assert_close(lens, tr.logits, atol=1e-4, rtol=0)


def test_residual_bookkeeping_and_patterns(tiny_model, word_tokenizer, items):
    tr = capture_batch(tiny_model, word_tokenizer, items, k=2)
    L = tr.n_layers
    for l in range(L - 1):
        torch.testing.assert_close(tr[f"blocks.{l}.hook_resid_post"], tr[f"blocks.{l + 1}.hook_resid_pre"])
    for l in range(L):  # pre + attn_out + mlp_out = post (parallel-free GPT-2 and Llama blocks)
        total = tr[f"blocks.{l}.hook_resid_pre"] + tr[f"blocks.{l}.hook_attn_out"] + tr[f"blocks.{l}.hook_mlp_out"]
        torch.testing.assert_close(total, tr[f"blocks.{l}.hook_resid_post"], atol=1e-5, rtol=0)
    pat = tr["blocks.0.attn.hook_pattern"]  # [batch, steps, heads, keys] over prompt positions
    assert pat.shape[:3] == (len(items), 3, 4)
    for b in range(len(items)):
        for s, pos in enumerate(tr.positions[b].tolist()):
            torch.testing.assert_close(pat[b, s].sum(-1), torch.ones(4), atol=1e-5, rtol=0)
            assert float(pat[b, s, :, pos + 1 :].abs().sum()) == 0.0  # causal, and no padding keys


def test_a_batch_equals_its_items_alone(tiny_model, word_tokenizer, items):
    together = capture_batch(tiny_model, word_tokenizer, items, k=2)
    for b in (0, 3, 5):
        alone = capture_batch(tiny_model, word_tokenizer, [items[b]], k=2)
        n = int(alone.prompt_len[0])
        for name, t in alone.cache.items():
            got = together[name][b]
            if name.endswith("hook_pattern"):
                got, t = got[..., :n], t[0, ..., :n]
            else:
                t = t[0]
            torch.testing.assert_close(got, t, atol=1e-5, rtol=0, msg=name)


def test_answers_come_from_the_same_pass(tiny_model, word_tokenizer, official_items):
    from probe.model.evaluate import evaluate

    items = official_items[:9]  # batched by length, so batches mix data-set positions; returned in order
    tr = capture(tiny_model, word_tokenizer, items, k=2, batch_size=4, max_new_tokens=6, progress=False)
    ev = evaluate(tiny_model, word_tokenizer, items, k=2, batch_size=4, max_new_tokens=6, progress=False)
    assert tr.indices.tolist() == list(range(9))
    for b, it in enumerate(items):
        prompt = render_prompt(tokenize_item(it, word_tokenizer, "sentences"), 2, tiny_model.config.stage_spec,
                               tiny_model.config.special)
        assert tr.prompt_ids[b, : tr.prompt_len[b]].tolist() == prompt
    answers = tr.answers()
    assert [word_tokenizer.decode(a, skip_special_tokens=True) for a in answers] == [r.text for r in ev.items]
    assert [len(a) for a in answers] == [r.n_generated for r in ev.items] and max(map(len, answers)) <= 6
    assert tr.predictions(word_tokenizer) == [r.prediction for r in ev.items]
    with pytest.raises(CaptureError, match="holds no answers"):
        capture_batch(tiny_model, word_tokenizer, items[:2], k=2).answers()


def test_layout_marks_facts_and_names(word_tokenizer, items):
    it = items[0]
    for fmt in ("sentences", "edges"):
        lay = prompt_layout(it, word_tokenizer, fmt)
        ids = tokenize_item(it, word_tokenizer, fmt).question
        assert len(lay.fact) == len(ids)
        toks = word_tokenizer.convert_ids_to_tokens(list(ids))
        for e, (p, c) in enumerate(it.edges):
            named = [lay.node[i] for i in lay.fact_positions(e) if lay.node[i] >= 0]
            assert named == [p, c]
        for i, n in enumerate(lay.node):
            if n >= 0:
                assert toks[i] == it.name(n)
        assert [lay.node[i] for i in lay.query] == [it.root, *it.options()]


def test_selection_and_errors(tiny_model, word_tokenizer, items):
    names = select_hooks(2, ["*hook_resid_post"], layers=[-1])
    assert names == ["blocks.1.hook_resid_post"]
    tr = capture_batch(tiny_model, word_tokenizer, items[:2], k=1, names=names, dtype=torch.float16)
    assert set(tr.cache) == {"blocks.1.hook_resid_post"} and tr["blocks.1.hook_resid_post"].dtype == torch.float16
    with pytest.raises(KeyError, match="was not captured"):
        tr["blocks.0.hook_resid_post"]
    with pytest.raises(HookNameError, match=r"layer 2 is out of range for a model with 2 layers \(0..1, or -2..-1 from the end\)"):
        select_hooks(2, layers=[2])
    with pytest.raises(HookNameError, match=r"hook pattern\(s\) \['resid'\] match no hook"):
        select_hooks(2, ["resid"])
    with pytest.raises(CaptureError, match="k must be >= 0"):
        capture_batch(tiny_model, word_tokenizer, items[:1], k=-1)


def test_streaming_to_disk_keeps_memory_flat():
    """Peak memory of streaming 4x the items grows by far less than the extra traces' size."""
    peaks = runpy.run_path(str(Path(__file__).parents[1] / "benchmarks" / "capture_memory.py"))["peaks"]
    small, big = peaks([(48, "disk", 16), (192, "disk", 16)])
    growth = (big["peak_mb"] - big["before_mb"]) - (small["peak_mb"] - small["before_mb"])
    extra = big["stored_mb"] - small["stored_mb"]
    assert extra > 20  # the 144 extra items' traces, which an in-memory capture would hold
    assert growth < 0.3 * extra, (growth, extra)


def test_store_round_trip_and_errors(tiny_model, word_tokenizer, official_items, tmp_path, monkeypatch):
    items = official_items[:10]
    # a shard is a capture of its own items (batched by length within it)
    mem = concat_traces([capture(tiny_model, word_tokenizer, items[i : i + 4], k=2, batch_size=3, max_new_tokens=8,
                                 progress=False) for i in (0, 4, 8)])
    store = capture_to_disk(tiny_model, word_tokenizer, items, tmp_path / "t", k=2, batch_size=3, shard_size=4,
                            max_new_tokens=8, progress=False)
    assert len(store) == 10 and store.n_shards == 3 and store.k == 2  # shards of 4, 4, 2
    assert store.manifest["max_new_tokens"] == 8
    back = store.load()
    assert back.indices.tolist() == list(range(10))
    for name in ("thoughts", "logits", "positions", "fact", "node", "prompt_ids", "answer_ids"):
        assert torch.equal(getattr(back, name), getattr(mem, name)), name
    for name, t in mem.cache.items():
        assert torch.equal(back[name], t), name
    part = store.shard(1, names=["blocks.0.hook_resid_post"])
    assert set(part.cache) == {"blocks.0.hook_resid_post"} and part.indices.tolist() == [4, 5, 6, 7]
    with pytest.raises(IndexError, match="shard 3 is out of range"):
        store.shard(3)
    with pytest.raises(CaptureError, match="already exists"):
        capture_to_disk(tiny_model, word_tokenizer, items, tmp_path / "t", progress=False)
    # A failure half-way leaves nothing behind.
    real = capture_mod.capture_batch
    calls = []

    def failing(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return real(*a, **kw)

    monkeypatch.setattr(capture_mod, "capture_batch", failing)
    with pytest.raises(RuntimeError, match="boom"):
        capture_to_disk(tiny_model, word_tokenizer, items, tmp_path / "u", k=1, batch_size=4, shard_size=4, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]
    # A damaged store names what is wrong.
    (tmp_path / "t" / "shard-00001.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CaptureError, match="shard-00001.safetensors: cannot read the shard"):
        TraceStore(tmp_path / "t").shard(1)
    (tmp_path / "t" / "shard-00002.safetensors").unlink()
    with pytest.raises(CaptureError, match=r"missing shard file\(s\) \['shard-00002.safetensors'\]"):
        TraceStore(tmp_path / "t")
    with pytest.raises(CaptureError, match="not a trace store"):
        TraceStore(tmp_path)


def test_layout_with_a_bpe_tokenizer_marks_every_sub_token(official_items, bpe_tokenizer):
    """Names split into several BPE pieces: each piece is marked, and name_tokens finds the first."""
    from probe.data.layout import name_tokens

    tok = bpe_tokenizer
    it = official_items[0]
    split = [n for n in it.idx_to_symbol if len(tok.encode(" " + n)) > 1]
    assert split  # the small vocabulary leaves some names in pieces
    lay = prompt_layout(it, tok, "sentences")
    ids = tok.encode(it.question + "\n")
    assert len(lay.node) == len(ids)
    for v, name in enumerate(it.idx_to_symbol):
        pos = lay.node_positions(v)
        pieces = [t for t in tok.encode(" " + name) if tok.decode([t]).strip()]  # a bare-space piece is no part of it
        n_mentions = sum(name in (it.name(p), it.name(c)) for p, c in it.edges) + (v in (it.root, *it.options()))
        assert len(pos) == n_mentions * len(pieces), name
        assert tok.decode([ids[i] for i in pos[: len(pieces)]]).strip() == name
    first = name_tokens(it, tok, "sentences")
    pieces = [tok.decode([t]).strip() for t in first]
    assert all(p and n.startswith(p) for p, n in zip(pieces, it.idx_to_symbol))
    assert any(p != n for p, n in zip(pieces, it.idx_to_symbol))  # a split name's first piece, not the whole
