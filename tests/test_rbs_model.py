"""A model in RbS's format (their config: GPT-2, 2 layers, d768, 8 heads, vocabulary 40; data format "rbs") runs our
KV-cached latent loop exactly as an independent computation does: a plain Hugging Face forward over the whole
prompt, recomputed after each thought is written in by hand (conftest.latent_forward_by_hand)."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from conftest import latent_forward_by_hand, randomize_norms
from probe.data.render import render_prompt, tokenize_item
from probe.model.evaluate import evaluate
from probe.model.coconut import CoconutConfig, CoconutModel
from probe.model.tokenizer import RBS_VOCABULARY, build_rbs_tokenizer, special_tokens

TOL = 1e-4


def rbs_model(seed: int = 0) -> tuple[CoconutModel, object]:
    """A random model of RbS's configuration (configs/symbol-2layer-8head-768dim.json) with perturbed norms, in eval
    mode, and RbS's tokenizer. Weights are drawn at initializer_range 0.1, not their 0.02: at 0.02 every prompt of the
    test, at every k, answers the same token, and the answers would not test the thoughts."""
    torch.manual_seed(seed)
    tok = build_rbs_tokenizer()
    base = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=768, n_head=8, vocab_size=40, n_positions=1024,
                                      activation_function="gelu_new", initializer_range=0.1))
    randomize_norms(base, seed)
    config = CoconutConfig.from_special(special_tokens(tok), mode="coconut", data_format="rbs",
                                        supervision="optimal", max_latent_stage=4)
    return CoconutModel(base.eval(), config).eval(), tok


@pytest.fixture(scope="module")
def setup(official_items):
    model, tok = rbs_model()
    # 3, 4 and 5 steps, 22..28 edges: prompts of different lengths in one batch (short ones: the hand computation
    # runs the whole d768 model once per thought)
    items = [official_items[i] for i in (0, 1, 4, 11, 80, 97, 179, 263)]
    return model, tok, items, [tokenize_item(it, tok, "rbs") for it in items]


def by_hand(model: CoconutModel, tok_item, k: int) -> tuple[int, torch.Tensor]:
    """(the answer token after "[A]": argmax over all 40 logits, thoughts [k, d]) of one item, computed by hand."""
    ids = list(tok_item.question) + [model.config.latent_id] * k + list(tok_item.cue)
    root = len(tok_item.question) - 1  # RbS's thought 1 is the root's last hidden state
    out, thoughts = latent_forward_by_hand(model.base, ids, root, k)
    return int(out.logits[0, -1].argmax()), thoughts


@torch.no_grad()
def test_latent_loop_and_answer_equal_the_hand_computation_at_every_k(setup):
    model, tok, items, toks = setup
    sp = model.config.special
    answers = set()
    for k in range(7):
        prompts = [render_prompt(t, k, model.config.stage_spec, sp) for t in toks]
        batched = model.generate(prompts, max_new_tokens=8)
        for b, t in enumerate(toks):
            token, thoughts = by_hand(model, t, k)
            assert batched.tokens[b] == [token]  # one answer token in RbS's layout, whatever max_new_tokens says
            assert int(batched.n_thoughts[b]) == k
            torch.testing.assert_close(batched.thoughts[b, :k], thoughts, atol=TOL, rtol=0)
            one = model.generate([prompts[b]], max_new_tokens=1)  # one at a time: the same tokens and thoughts
            assert one.tokens == [[token]]
            torch.testing.assert_close(one.thoughts[0, :k], batched.thoughts[b, :k], atol=TOL, rtol=0)
            answers.add(token)
    assert len(answers) > 1  # the comparison is not of one constant answer


@torch.no_grad()
def test_evaluate_at_the_gold_depth_equals_the_hand_computation(setup):
    model, tok, items, toks = setup
    batched = evaluate(model, tok, items, k="gold", batch_size=8, progress=False)
    single = evaluate(model, tok, items, k="gold", batch_size=1, progress=False)
    for it, t, r, s in zip(items, toks, batched.items, single.items):
        k = len(it.steps)
        token, thoughts = by_hand(model, t, k)
        # RbS's answer rule on the decoded text: the word after the last "[A]"; <eos> is skipped in decoding, and a
        # second "[A]" leaves nothing after it.
        want = "" if RBS_VOCABULARY[token] in ("<eos>", "[A]") else RBS_VOCABULARY[token]
        assert (r.n_thoughts, r.prediction, r.correct) == (k, want, want == str(it.target))
        torch.testing.assert_close(r.thoughts, thoughts, atol=TOL, rtol=0)
        assert (s.prediction, s.n_thoughts) == (r.prediction, r.n_thoughts)
        torch.testing.assert_close(s.thoughts, r.thoughts, atol=TOL, rtol=0)
