"""Supervision: optimal (Reasoning by Superposition): the targets on a hand-built graph, the sequences of
each stage, and one pass carrying the separate stage sequences' losses exactly."""

from __future__ import annotations

import pytest
import torch

from probe.data.layout import name_tokens
from probe.data.prosqa import item_from_json
from probe.data.render import IGNORE_INDEX, StageSpec, question_text, step_texts, tokenize_item
from probe.data.stream import collate
from probe.data.supervision import TrainingItem, optimal_targets, render_optimal, render_training
from probe.model.tokenizer import special_tokens
from probe.train.loop import sequence_loss

# Tom reaches lempus in three steps along two shortest paths (through wumpus or yumpus, then zumpus);
# numpus (depth 1) and gorpus (depth 2) are frontier nodes on no shortest path; Bob reaches rempus.
NAMES = ["Tom", "wumpus", "yumpus", "zumpus", "lempus", "numpus", "Bob", "rempus", "gorpus"]
EDGES = [(0, 1), (0, 2), (0, 5), (1, 3), (2, 3), (3, 4), (5, 8), (6, 7)]


def fact(p: int, c: int) -> str:
    return f"{NAMES[p]} is a {NAMES[c]}." if NAMES[p][0].isupper() else f"Every {NAMES[p]} is a {NAMES[c]}."


def hand_item():
    return item_from_json({
        "question": " ".join(fact(p, c) for p, c in EDGES) + " Is Tom a lempus or rempus?",
        "steps": [fact(0, 1), fact(1, 3), fact(3, 4)], "answer": "Tom is a lempus.",
        "idx_to_symbol": NAMES, "edges": [list(e) for e in EDGES], "root": 0, "target": 4, "neg_target": 7,
    })


@pytest.fixture
def hand(word_tokenizer):
    item = hand_item()
    ids = {n: word_tokenizer.convert_tokens_to_ids(n) for n in NAMES}
    tok = tokenize_item(item, word_tokenizer, "graph")
    targets = optimal_targets(item, name_tokens(item, word_tokenizer, "graph"))
    return item, ids, TrainingItem(tok, targets), special_tokens(word_tokenizer)


def test_optimal_targets_by_hand(hand):
    item, ids, t, _ = hand
    assert t.targets == (tuple(sorted([ids["wumpus"], ids["yumpus"]])), (ids["zumpus"],), (ids["lempus"],))
    # frontier nodes off every shortest path are never targets
    assert not {ids["numpus"], ids["gorpus"]} & {i for s in t.targets for i in s}
    with pytest.raises(ValueError, match="got 3 name tokens for an item of 9 nodes"):
        optimal_targets(item, [1, 2, 3])
    with pytest.raises(ValueError, match="optimal_1 share their first name token"):
        optimal_targets(item, [ids[n] for n in NAMES[:2]] + [ids["wumpus"]] + [ids[n] for n in NAMES[3:]])


def test_graph_format_text(hand, word_tokenizer):
    item = hand[0]
    q = question_text(item, "graph")
    assert q == "Tom wumpus | Tom yumpus | Tom numpus | wumpus zumpus | yumpus zumpus | zumpus lempus | " \
                "numpus gorpus | Bob rempus | lempus rempus ? Tom"
    assert step_texts(item, "graph") == ["wumpus", "zumpus", "lempus"]
    # one token per name and template word: 8 facts of three tokens, two options, '?', the root, '\n'
    assert len(tokenize_item(item, word_tokenizer, "graph").question) == 8 * 3 + 4 + 1


def test_reshuffled_keeps_the_item_and_moves_facts_and_options(hand):
    import random

    from probe.data.prosqa import parse_question

    item = hand[0]
    views = [item.reshuffled(random.Random(s)) for s in range(12)]
    for v in views:
        item_from_json(v.to_json())  # still a valid item
        facts, (root, a, b) = parse_question(v.question)
        assert sorted(facts) == sorted(parse_question(item.question)[0]) and root == "Tom"
        assert {a, b} == {"lempus", "rempus"} and v.steps == item.steps and v.answer == item.answer
    assert len({v.question for v in views}) == 12
    assert {parse_question(v.question)[1][1] for v in views} == {"lempus", "rempus"}


def test_sequences_of_each_stage(hand):
    _, ids, t, sp = hand
    q = list(t.tokens.question)
    Q, answer = len(q), list(t.tokens.answer)
    spec = StageSpec(max_latent_stage=6)
    r = render_optimal(t, 0, spec, sp)  # thought 1 is emitted at <|start-latent|>
    assert list(r.input_ids) == q + [sp.start_id] and r.targets == ((Q, t.targets[0]),)
    assert set(r.labels) == {IGNORE_INDEX} and r.n_thoughts == 0
    r = render_optimal(t, 2, spec, sp)
    assert list(r.input_ids) == q + [sp.start_id] + [sp.latent_id] * 2
    assert r.targets == tuple((Q + j, t.targets[j]) for j in range(3))
    assert render_optimal(t, 2, spec, sp, thought_loss="newest").targets == ((Q + 2, t.targets[2]),)
    # the answer stage (stage >= 3 steps): thoughts, <|end-latent|>, the official answer line
    for stage, k in ((3, 3), (5, 5), (7, 6)):
        r = render_optimal(t, stage, spec, sp)
        prefix = q + [sp.start_id] + [sp.latent_id] * k + [sp.end_id]
        assert list(r.input_ids) == prefix + answer and r.n_thoughts == k
        assert list(r.labels) == [IGNORE_INDEX] * len(prefix) + answer
        assert r.targets == tuple((Q + j, t.targets[j]) for j in range(3))
        assert render_optimal(t, stage, spec, sp, thought_loss="newest").targets == ()
    # pause: the same layout; no thoughts: the answer right after the question, at any stage
    assert render_optimal(t, 2, StageSpec(mode="pause_as_thought"), sp) == render_optimal(t, 2, spec, sp)
    r = render_optimal(t, 4, StageSpec(mode="no_thoughts", c_thought=0), sp)
    assert list(r.input_ids) == q + answer and r.targets == ()
    with pytest.raises(ValueError, match="use supervision: language"):
        render_optimal(t, 1, StageSpec(mode="cot"), sp)
    with pytest.raises(ValueError, match="c_thought must be 1, got 2"):
        render_optimal(t, 1, StageSpec(c_thought=2), sp)
    assert render_training(t, 1, spec, sp, supervision="language").targets == ()  # Coconut's language stage
    # a unit is read at its own position; a label at the position before it
    units = render_optimal(t, 3, spec, sp).units()
    assert units[:3] == [(Q + j, t.targets[j]) for j in range(3)]
    n = len(q) + 1 + 3 + 1
    assert units[3:] == [(n + i - 1, (tok,)) for i, tok in enumerate(answer)]


def _grads(model, batch):
    model.zero_grad()
    loss = sequence_loss(model, batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("stage", [2, 7])
def test_one_pass_carries_the_stage_losses_exactly(tiny_model, word_tokenizer, official_items, stage):
    """thought_loss all at a stage == RbS's newest-thought sequences of stages 0..stage, as one batch:
    the same loss and the same gradient (every thought's logits depend only on what precedes it)."""
    sp = tiny_model.config.special
    spec = StageSpec(max_latent_stage=6)
    items = [it for it in official_items if len(it.steps) in (3, 4)][:2]
    train_items = [TrainingItem(tokenize_item(it, word_tokenizer, "graph"),
                                optimal_targets(it, name_tokens(it, word_tokenizer, "graph"))) for it in items]
    one_pass = [render_optimal(t, stage, spec, sp, thought_loss="all") for t in train_items]
    # each earlier stage's sequence (its newest thought), then this stage's (its newest thought, or the answer)
    separate = [render_optimal(t, s, spec, sp, thought_loss="newest") for t in train_items
                for s in [*range(min(stage, t.n_steps)), stage]]
    assert sum(len(r.units()) for r in one_pass) == sum(len(r.units()) for r in separate)
    loss_a, grad_a = _grads(tiny_model, collate(one_pass, sp.pad_id, sp.latent_id))
    loss_b, grad_b = _grads(tiny_model, collate(separate, sp.pad_id, sp.latent_id))
    torch.testing.assert_close(loss_a, loss_b, atol=1e-6, rtol=1e-5)
    assert grad_a.keys() == grad_b.keys() and grad_a
    for name in grad_a:
        torch.testing.assert_close(grad_a[name], grad_b[name], atol=1e-6, rtol=1e-4, msg=name)
    # and the loss is not flat: a different stage gives another loss
    other = [render_optimal(t, 0, spec, sp, thought_loss="all") for t in train_items]
    with torch.no_grad():
        assert abs(float(sequence_loss(tiny_model, collate(other, sp.pad_id, sp.latent_id))) - float(loss_a)) > 1e-4
