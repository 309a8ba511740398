"""Evaluation by the official rule, against an independent computation."""

from __future__ import annotations

import pytest
import torch

from probe.data.render import render_prompt, tokenize_item
from probe.model.evaluate import evaluate, extract_answer
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
        assert r.prompt_ids == tuple(prompt) and r.prompt == word_tokenizer.decode(prompt, skip_special_tokens=False)
        _, ref_thoughts = naive_forward(tiny_model, prompt)
        torch.testing.assert_close(r.thoughts, ref_thoughts, atol=1e-5, rtol=0)
    payload = res.to_json()
    assert set(payload) >= {"accuracy", "n", "items"} and payload["n"] == 5
    assert payload["items"][0].keys() == {"index", "prompt", "prediction", "correct"}
    assert payload["items"][0]["prompt"].endswith("<|start-latent|> <|latent|> <|latent|> <|end-latent|>")


def test_bad_k(tiny_model, word_tokenizer, official_items):
    with pytest.raises(ValueError, match="k must be >= 0"):
        evaluate(tiny_model, word_tokenizer, official_items[:1], k=-1, progress=False)


def test_an_answer_the_tokenizer_cannot_write_is_never_correct(tiny_model, word_tokenizer, official_items, monkeypatch,
                                                                tmp_path):
    """An item whose answer names a node outside the word-level vocabulary: a model that writes the gold tokens
    writes <|unk|> for that name; the prediction keeps it and is scored wrong, and the item is flagged."""
    import json

    from probe.data.prosqa import item_from_json
    from probe.model.evaluate import prediction, unknown_names

    raw = official_items[0].to_json()
    target = raw["idx_to_symbol"][raw["target"]]
    for key in ("question", "answer"):
        raw[key] = raw[key].replace(target, "zzpus")
    raw["steps"] = [s.replace(target, "zzpus") for s in raw["steps"]]
    raw["idx_to_symbol"] = ["zzpus" if n == target else n for n in raw["idx_to_symbol"]]
    item = item_from_json(raw)
    assert unknown_names(item, word_tokenizer) == ["zzpus"] and unknown_names(official_items[0], word_tokenizer) == []
    gold = list(tokenize_item(item, word_tokenizer).answer[:-1])  # '### Tom is a <|unk|> .'
    assert word_tokenizer.unk_token_id in gold
    assert prediction(word_tokenizer, [], gold) == "Tom is a <|unk|>."
    monkeypatch.setattr(type(tiny_model), "generate", lambda self, prompts, max_new_tokens=128, edit=None: Generation(
        [gold] * len(prompts), torch.zeros(len(prompts), 0, 1), torch.zeros(len(prompts)), torch.zeros(len(prompts), 1)))
    res = evaluate(tiny_model, word_tokenizer, [item, official_items[1]], progress=False)
    assert [r.correct for r in res.items] == [False, False] and res.items[0].unknown_names == ("zzpus",)
    assert json.loads(json.dumps(res.to_json()))["items"][0]["unknown_names"] == ["zzpus"]
    assert "unknown_names" not in res.to_json()["items"][1]
