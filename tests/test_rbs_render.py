"""RbS's layout (data format "rbs"): the exact token sequences of their dataset.py, the thought positions, the answer
rule, and the prompt layout read by position."""

from __future__ import annotations

import pytest

from probe.data.layout import NONE, name_tokens, prompt_layout
from probe.data.prosqa import ProsQAItem
from probe.data.render import (StageSpec, answer_of, gold_answer, question_text, rbs_question, rbs_target_first,
                               render_prompt, tokenize_item)
from probe.data.supervision import TrainingItem, optimal_targets, render_optimal
from probe.model.tokenizer import RBS_VOCABULARY, build_rbs_tokenizer, build_word_tokenizer, special_tokens

# A hand-built item: Tom (0) -> wumpus (1) -> zumpus (3); Tom -> yumpus (2); the distractor lorpus (4) is unreachable.
ITEM = ProsQAItem(
    question="Tom is a wumpus. Tom is a yumpus. Every wumpus is a zumpus. Every lorpus is a yumpus. "
             "Is Tom a zumpus or lorpus?",
    steps=("Tom is a wumpus.", "Every wumpus is a zumpus."),
    answer="Tom is a zumpus.",
    idx_to_symbol=("Tom", "wumpus", "yumpus", "zumpus", "lorpus"),
    edges=((0, 1), (0, 2), (1, 3), (4, 2)),
    root=0, target=3, neg_target=4,
)
TOK = build_rbs_tokenizer()
SPECIAL = special_tokens(TOK)
SPEC = StageSpec("coconut", 1, 6, True)


def words(ids):
    return [RBS_VOCABULARY[i] for i in ids]


def test_the_question_is_rbs_prefix_with_no_bar_after_the_last_edge():
    assert rbs_question(ITEM, True) == "<eos> 0 1 | 0 2 | 1 3 | 4 2 [Q] 3 4 [R] 0"
    assert rbs_question(ITEM, False).endswith("[Q] 4 3 [R] 0")
    tok = tokenize_item(ITEM, TOK, "rbs")
    assert " ".join(words(tok.question)) == question_text(ITEM, "rbs")
    assert len(tok.question) == 3 * len(ITEM.edges) + 5  # 3E + 5 tokens, as the notes count them
    assert tok.answer == (3,) and words(tok.cue) == ["[A]"] and tok.steps == ((1,), (3,))
    assert tok.thought_origin == len(tok.question) - 1  # the root's own position


def test_prompts_at_k_follow_the_root_and_end_with_the_answer_marker():
    tok = tokenize_item(ITEM, TOK, "rbs")
    q = list(tok.question)
    assert render_prompt(tok, 0, SPEC, SPECIAL) == q + [37]
    assert words(render_prompt(tok, 2, SPEC, SPECIAL)[len(q):]) == ["<|latent|>", "<|latent|>", "[A]"]
    assert render_prompt(tok, 0, StageSpec("no_thoughts"), SPECIAL) == q + [37]


def test_option_order_is_drawn_per_item_from_the_seed_and_is_about_even(official_items):
    firsts = [rbs_target_first(it) for it in official_items]
    assert firsts == [rbs_target_first(it) for it in official_items]  # fixed
    assert 0.35 < sum(firsts) / len(firsts) < 0.65
    assert [rbs_target_first(it, seed=1) for it in official_items] != firsts


def test_training_sequences_are_rbs_stage_sequences():
    tok = tokenize_item(ITEM, TOK, "rbs")
    item = TrainingItem(tok, optimal_targets(ITEM, name_tokens(ITEM, TOK, "rbs")))
    assert item.targets == ((1,), (3,))
    q = len(tok.question)
    r0 = render_optimal(item, 0, SPEC, SPECIAL, thought_loss="newest")  # stage 0: the root emits thought 1
    assert r0.input_ids == tok.question and r0.targets == ((q - 1, (1,)),)
    r1 = render_optimal(item, 1, SPEC, SPECIAL, thought_loss="newest")
    assert words(r1.input_ids[q:]) == ["<|latent|>"] and r1.targets == ((q, (3,)),)
    last = render_optimal(item, 2, StageSpec("coconut", 1, 2, False), SPECIAL, thought_loss="newest")
    assert words(last.input_ids[q:]) == ["<|latent|>", "<|latent|>", "[A]", "3"]  # no eos after the answer
    assert [t for t in last.labels if t != -100] == [3]
    every = render_optimal(item, 2, StageSpec("coconut", 1, 2, False), SPECIAL, thought_loss="all")
    assert every.targets == ((q - 1, (1,)), (q, (3,)))


def test_the_answer_rule_is_the_token_after_the_last_answer_marker():
    assert gold_answer(ITEM, "rbs") == "3"
    assert answer_of("<eos> 0 1 [Q] 3 4 [R] 0 <|latent|> [A] 3", "rbs") == "3"
    assert answer_of("... [A] 4", "rbs") != gold_answer(ITEM, "rbs")


def test_the_layout_marks_each_edge_s_t_and_bar_and_the_query():
    lay = prompt_layout(ITEM, TOK, "rbs")
    ws = question_text(ITEM, "rbs").split()
    assert lay.fact[:12] == (NONE, 0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3) and lay.fact[12:] == (NONE,) * 5
    assert [ws[p] for p in lay.query] == ws[-4:-2] + ws[-1:]
    assert lay.node_positions(2) == [5, 11] and lay.node[lay.query[-1]] == ITEM.root


def test_another_tokenizer_is_refused_with_one_line():
    with pytest.raises(ValueError, match=r"use RbS's tokenizer \(--tokenizer rbs\)"):
        tokenize_item(ITEM, build_word_tokenizer(ITEM.idx_to_symbol), "rbs")
