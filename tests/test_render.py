"""Tokenizers and rendering to Coconut token sequences, checked against the official rules."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from probe.data.render import (
    IGNORE_INDEX, StageSpec, render_prompt, render_stage, step_texts, question_text, tokenize_item,
)
from probe.data.prosqa import persons_and_concepts
from probe.model.evaluate import extract_answer
from probe.model.tokenizer import LATENT_TOKENS, add_latent_tokens, load_tokenizer, special_tokens


def test_every_name_is_one_token(word_tokenizer, official_items):
    persons, concepts = persons_and_concepts(official_items)
    for name in persons + concepts:
        assert len(word_tokenizer.encode(" " + name, add_special_tokens=False)) == 1, name
    assert word_tokenizer.unk_token_id not in word_tokenizer.encode(official_items[0].question)


def test_latent_tokens_are_the_last_three_in_official_order(word_tokenizer):
    sp = special_tokens(word_tokenizer)
    n = len(word_tokenizer)
    assert (sp.start_id, sp.end_id, sp.latent_id) == (n - 3, n - 2, n - 1)
    assert sp.pad_id == sp.eos_id == word_tokenizer.eos_token_id


def test_word_tokenizer_saves_as_hf_files_and_reloads(tmp_path, word_tokenizer, official_items):
    word_tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()
    again = load_tokenizer(tmp_path)
    text = official_items[3].question
    assert again.encode(text) == word_tokenizer.encode(text)
    assert special_tokens(again) == special_tokens(word_tokenizer)


def test_decoding_keeps_the_official_answer(word_tokenizer, official_items):
    it = official_items[0]
    ids = word_tokenizer.encode("\n".join([it.question, *it.steps, "### " + it.answer]))
    text = word_tokenizer.decode(ids, skip_special_tokens=True)
    assert extract_answer(text) == it.answer
    assert text.startswith(it.question)


def test_any_hf_tokenizer_gets_latents_in_order():
    vocab = {"<eos>": 0, "hello": 1, "world": 2}
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<eos>")), eos_token="<eos>"
    )
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    sp = add_latent_tokens(tok)
    assert [tok.convert_ids_to_tokens(i) for i in (sp.start_id, sp.end_id, sp.latent_id)] == list(LATENT_TOKENS)
    assert (sp.start_id, sp.end_id, sp.latent_id) == (3, 4, 5)
    assert add_latent_tokens(tok) == sp  # idempotent
    assert tok.encode("hello <|latent|> world") == [1, 5, 2]


def test_concatenated_parts_equal_the_whole_text(word_tokenizer, official_items):
    # The official get_dataset asserts the same for its first item.
    for it in official_items[:20]:
        t = tokenize_item(it, word_tokenizer)
        whole = it.question + "\n" + "\n".join(it.steps) + "\n### " + it.answer
        assert list(t.question) + [x for s in t.steps for x in s] + list(t.answer) == (
            word_tokenizer.encode(whole) + [word_tokenizer.eos_token_id]
        )


@pytest.mark.parametrize(
    "spec,stage,n_steps,expected",
    [
        (StageSpec(), 0, 4, (0, 0)),
        (StageSpec(), 2, 4, (2, 2)),
        (StageSpec(), 5, 3, (3, 5)),  # the official rule: stage > steps still adds `stage` thoughts
        (StageSpec(max_latent_stage=3), 7, 5, (5, 3)),  # past the last stage: all steps, max thoughts
        (StageSpec(max_latent_stage=6, pad_latent_to_max=False), 9, 4, (4, 4)),
        (StageSpec(c_thought=2), 2, 4, (2, 4)),
        (StageSpec(mode="cot"), 3, 4, (0, 0)),
        (StageSpec(mode="no_cot"), 3, 4, (4, 0)),
        (StageSpec(mode="no_thoughts"), 2, 4, (2, 0)),
        (StageSpec(mode="pause_as_thought"), 2, 4, (2, 2)),
    ],
)
def test_stage_layout(spec, stage, n_steps, expected):
    assert spec.layout(stage, n_steps) == expected


def test_render_stage_places_thoughts_and_masks_labels(word_tokenizer, official_items):
    sp = special_tokens(word_tokenizer)
    it = official_items[0]  # three steps
    t = tokenize_item(it, word_tokenizer)
    r = render_stage(t, 2, StageSpec(), sp)
    q = len(t.question)
    assert r.input_ids[:q] == t.question
    assert r.input_ids[q : q + 4] == (sp.start_id, sp.latent_id, sp.latent_id, sp.end_id)
    assert r.input_ids[q + 4 :] == t.steps[2] + t.answer
    assert r.labels == (IGNORE_INDEX,) * (q + 4) + t.steps[2] + t.answer
    assert r.n_thoughts == 2
    cot = render_stage(t, 2, StageSpec(mode="cot"), sp)
    assert sp.start_id not in cot.input_ids and cot.input_ids == t.question + sum(t.steps, ()) + t.answer
    prompt = render_prompt(t, 6, StageSpec(), sp)
    assert prompt == list(t.question) + [sp.start_id] + [sp.latent_id] * 6 + [sp.end_id]
    with pytest.raises(ValueError, match="a cot model takes no thoughts"):
        render_prompt(t, 1, StageSpec(mode="cot"), sp)


def test_edges_format_is_compact_and_faithful(word_tokenizer, official_items):
    it = official_items[0]
    assert question_text(it, "edges").startswith("shumpus rempus | shumpus yimpus |")
    assert question_text(it, "edges").endswith("Tom ? lempus scrompus")
    assert step_texts(it, "edges") == ["Tom terpus", "terpus brimpus", "brimpus lempus"]
    n_sent = sum(len(tokenize_item(x, word_tokenizer).question) for x in official_items)
    n_edge = sum(len(tokenize_item(x, word_tokenizer, "edges").question) for x in official_items)
    assert 0.45 < n_edge / n_sent < 0.6
