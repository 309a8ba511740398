"""Capture: the hooks see exactly what CoconutModel computes, at the right positions, in any batch."""

from __future__ import annotations

import pytest
import torch

from probe.capture import FINAL, CaptureError, architecture, capture_batch, select_hooks
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
    with pytest.raises(CaptureError, match=r"layers \[2\] are out of range for a model with 2 layers"):
        select_hooks(2, layers=[2])
    with pytest.raises(CaptureError, match=r"hook pattern\(s\) \['resid'\] match no hook"):
        select_hooks(2, ["resid"])
    with pytest.raises(CaptureError, match="k must be >= 0"):
        capture_batch(tiny_model, word_tokenizer, items[:1], k=-1)
