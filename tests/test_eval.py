"""Evaluation by the official rule, against an independent computation."""

from __future__ import annotations

import pytest
import torch

from probe.data.render import render_prompt, tokenize_item
from probe.evaluate import evaluate, extract_answer
from probe.model.coconut import Generation
from test_coconut import naive_forward, naive_generate


@pytest.mark.parametrize(
    "text,expected",
    [
        ("Q?\n<|start-latent|><|end-latent|>Every a is a b.\n### Tom is a lempus.", "Tom is a lempus."),
        ("### a # b, c ", "b c"),
        ("no hash at all", "no hash at all"),
        ("###", ""),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_accuracy_counts_gold_continuations(tiny_model, word_tokenizer, official_items, monkeypatch):
    items = official_items[:6]
    gold = {}
    for it in items:
        q = tokenize_item(it, word_tokenizer)
        gold[q.question] = [t for s in q.steps for t in s] + list(q.answer[:-1])
    wrong = {0, 3}

    def fake_generate(self, prompts, max_new_tokens=128, edit=None):
        out = []
        for p in prompts:
            key = next(k for k in gold if tuple(p[: len(k)]) == k)
            i = next(j for j, it in enumerate(items) if tokenize_item(it, word_tokenizer).question == key)
            toks = gold[key]
            out.append(toks[:-2] if i in wrong else toks)  # drop the name and '.' of the answer
        return Generation(out, torch.zeros(len(prompts), 0, 1), torch.zeros(len(prompts)), torch.zeros(len(prompts), 1))

    monkeypatch.setattr(type(tiny_model), "generate", fake_generate)
    res = evaluate(tiny_model, word_tokenizer, items, progress=False)
    assert [r.correct for r in res.items] == [i not in wrong for i in range(6)]
    assert res.accuracy == pytest.approx(4 / 6)
    assert res.items[1].prediction == items[1].answer
    assert [r.n_thoughts for r in res.items] == [6] * 6  # the checkpoint's default, as the official eval


@torch.no_grad()
def test_predictions_equal_an_independent_decode(tiny_model, word_tokenizer, official_items):
    items = official_items[:5]
    res = evaluate(tiny_model, word_tokenizer, items, k=2, batch_size=3, max_new_tokens=8, progress=False)
    for it, r in zip(items, res.items):
        prompt = render_prompt(tokenize_item(it, word_tokenizer), 2, tiny_model.config.stage_spec, tiny_model.config.special)
        new = naive_generate(tiny_model, prompt, 8)
        assert r.prediction == extract_answer(word_tokenizer.decode(prompt + new, skip_special_tokens=True))
        assert r.n_generated == len(new) and r.n_thoughts == 2
        _, ref_thoughts = naive_forward(tiny_model, prompt)
        torch.testing.assert_close(r.thoughts, ref_thoughts, atol=1e-5, rtol=0)
    payload = res.to_json()
    assert set(payload) >= {"accuracy", "n", "items"} and payload["n"] == 5
    assert payload["items"][0].keys() == {"index", "prediction", "correct"}


def test_bad_k(tiny_model, word_tokenizer, official_items):
    with pytest.raises(ValueError, match="k must be >= 0"):
        evaluate(tiny_model, word_tokenizer, official_items[:1], k=-1, progress=False)
