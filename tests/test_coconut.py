"""The batched, KV-cached latent loop against a naive reference that recomputes everything."""

from __future__ import annotations

import pytest
import torch

from probe.data.render import StageSpec, render_prompt, render_stage, tokenize_item
from probe.model.coconut import CoconutConfig, CoconutModel
from probe.model.tokenizer import special_tokens
from probe.data.stream import collate
from probe.train.loop import sequence_loss

TOL = 1e-5


def naive_forward(model: CoconutModel, ids: list[int], replace: dict | None = None, add: dict | None = None,
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [seq, vocab] and thoughts [k, d]: the whole prefix recomputed, uncached, for every thought.

    replace / add: {slot: vector} edits of the thought fed back at that slot.
    """
    base, latent = model.base, model.config.latent_id
    embeds = base.get_input_embeddings()(torch.tensor([ids]))
    thoughts = []
    for j, col in enumerate([i for i, t in enumerate(ids) if t == latent]):
        h = base.base_model(inputs_embeds=embeds[:, :col], use_cache=False).last_hidden_state[0, -1]
        h = (replace or {}).get(j, h) + (add or {}).get(j, 0.0)
        thoughts.append(h)
        embeds = embeds.clone()
        embeds[0, col] = h
    h = base.base_model(inputs_embeds=embeds, use_cache=False).last_hidden_state[0]
    return base.get_output_embeddings()(h), torch.stack(thoughts) if thoughts else torch.zeros(0, h.shape[-1])


def naive_generate(model: CoconutModel, ids: list[int], max_new: int) -> list[int]:
    """The official generate's rule, one item, no cache: the first token always kept, then stop at eos."""
    logits, _ = naive_forward(model, ids)
    out = [int(logits[-1].argmax())]
    seq = list(ids) + out
    for _ in range(max_new - 1):
        logits, _ = naive_forward(model, seq)
        nxt = int(logits[-1].argmax())
        if nxt == model.config.eos_id:
            break
        out.append(nxt)
        seq.append(nxt)
    return out


@pytest.fixture
def sequences(tiny_model, word_tokenizer, official_items):
    sp = tiny_model.config.special
    toks = [tokenize_item(it, word_tokenizer) for it in official_items[:4]]
    # Mixed lengths and mixed thought counts: stages 0, 1, 3 and 6.
    return [render_stage(t, s, StageSpec(), sp) for t, s in zip(toks, (0, 1, 3, 6))]


@torch.no_grad()
def test_each_item_equals_the_naive_reference(tiny_model, sequences):
    for seq in sequences:
        out = tiny_model(torch.tensor([seq.input_ids]))
        ref_logits, ref_thoughts = naive_forward(tiny_model, list(seq.input_ids))
        assert int(out.n_thoughts[0]) == seq.n_thoughts == len(ref_thoughts)
        torch.testing.assert_close(out.logits[0], ref_logits, atol=TOL, rtol=0)
        torch.testing.assert_close(out.thoughts[0], ref_thoughts, atol=TOL, rtol=0)


@torch.no_grad()
def test_thought_is_the_final_normed_state_not_the_raw_residual(tiny_model, sequences):
    seq = sequences[2]
    col = seq.input_ids.index(tiny_model.config.latent_id)
    body = tiny_model.base.base_model
    final_norm = body.ln_f if hasattr(body, "ln_f") else body.norm
    seen = {}
    handle = final_norm.register_forward_hook(lambda m, i, o: seen.update(pre=i[0][0, -1], post=o[0, -1]))
    body(torch.tensor([seq.input_ids[:col]]))
    handle.remove()
    out = tiny_model(torch.tensor([seq.input_ids]))
    torch.testing.assert_close(out.thoughts[0, 0], seen["post"], atol=TOL, rtol=0)
    # the randomised final norm makes them differ: a thought taken before the norm would fail here
    assert (out.thoughts[0, 0] - seen["pre"]).abs().max() > 1e-2


@torch.no_grad()
def test_mixed_batch_equals_each_item_alone(tiny_model, sequences):
    sp = tiny_model.config.special
    batch = collate(sequences, sp.pad_id, sp.latent_id)
    out = tiny_model(batch["input_ids"], batch["attention_mask"], batch["position_ids"])
    for i, seq in enumerate(sequences):
        alone = tiny_model(torch.tensor([seq.input_ids]))
        cols = batch["attention_mask"][i].bool()
        torch.testing.assert_close(out.logits[i, cols], alone.logits[0], atol=TOL, rtol=0)
        torch.testing.assert_close(out.thoughts[i, : seq.n_thoughts], alone.thoughts[0], atol=TOL, rtol=0)
        assert int(out.n_thoughts[i]) == seq.n_thoughts


@torch.no_grad()
def test_edited_thoughts_equal_the_naive_reference_fed_the_same_edits(tiny_model, sequences):
    from probe.model.coconut import ThoughtEdit

    sp = tiny_model.config.special
    seqs = sequences[2:]  # 3 and 6 thoughts, of different lengths
    batch = collate(seqs, sp.pad_id, sp.latent_id)
    g = torch.Generator().manual_seed(0)
    d = tiny_model.d_model
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0, 1] = mask[1, 0] = True
    replace, add = torch.randn(2, 6, d, generator=g), torch.zeros(2, 6, d)
    add[1, 2] = torch.randn(d, generator=g)
    out = tiny_model(batch["input_ids"], batch["attention_mask"], batch["position_ids"],
                     edit=ThoughtEdit(mask, replace, add))
    for i, seq in enumerate(seqs):
        reps = {j: replace[i, j] for j in range(6) if mask[i, j]}
        adds = {j: add[i, j] for j in range(6) if add[i, j].any()}
        ref_logits, ref_thoughts = naive_forward(tiny_model, list(seq.input_ids), reps, adds)
        cols = batch["attention_mask"][i].bool()
        torch.testing.assert_close(out.logits[i, cols], ref_logits, atol=TOL, rtol=0)
        torch.testing.assert_close(out.thoughts[i, : seq.n_thoughts], ref_thoughts, atol=TOL, rtol=0)
    # The edit changes what follows it: the unedited run differs after the first edited thought.
    plain = tiny_model(batch["input_ids"], batch["attention_mask"], batch["position_ids"])
    assert (plain.logits - out.logits).abs().max() > 1e-3
    # An edit that puts back each thought as it is changes nothing.
    same = ThoughtEdit(torch.ones(2, 6, dtype=torch.bool), plain.thoughts)
    again = tiny_model(batch["input_ids"], batch["attention_mask"], batch["position_ids"], edit=same)
    torch.testing.assert_close(again.logits, plain.logits, atol=TOL, rtol=0)


@torch.no_grad()
def test_logits_at_some_columns_are_those_of_the_full_pass(tiny_model, sequences):
    sp = tiny_model.config.special
    batch = collate(sequences, sp.pad_id, sp.latent_id)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    full = tiny_model(ids, mask)
    width = ids.shape[1]
    cols = torch.tensor([[0, 5, width - 1], [width - 1, 3, 3], [1, 2, 4], [width - 2, 0, width - 1]])
    some = tiny_model(ids, mask, logits_at=cols)  # per row
    assert some.logits.shape == (4, 3, full.logits.shape[-1])
    torch.testing.assert_close(some.logits, full.logits[torch.arange(4)[:, None], cols], atol=TOL, rtol=0)
    last = tiny_model(ids, mask, logits_at=torch.tensor([width - 1]))  # one set of columns for every row
    torch.testing.assert_close(last.logits[:, 0], full.logits[:, -1], atol=TOL, rtol=0)
    torch.testing.assert_close(last.thoughts, full.thoughts)
    with pytest.raises(ValueError, match="the loss needs every position's logits"):
        tiny_model(ids, mask, labels=batch["labels"], logits_at=cols)


@torch.no_grad()
def test_loss_is_mean_cross_entropy_on_labelled_tokens(tiny_model, sequences):
    sp = tiny_model.config.special
    batch = collate(sequences[:2], sp.pad_id, sp.latent_id)
    out = tiny_model(batch["input_ids"], batch["attention_mask"], batch["position_ids"], labels=batch["labels"])
    logp = out.logits[:, :-1].log_softmax(-1)
    labels = batch["labels"][:, 1:]
    keep = labels != -100
    expected = -logp[keep].gather(-1, labels[keep][:, None]).mean()
    torch.testing.assert_close(out.loss, expected)
    # The training loss reads the same units from collate's target tensors, unembedding only those columns.
    torch.testing.assert_close(sequence_loss(tiny_model, batch), expected)


@torch.no_grad()
def test_batched_generation_equals_official_rule_per_item(tiny_model, word_tokenizer, official_items):
    sp = tiny_model.config.special
    prompts = [
        render_prompt(tokenize_item(it, word_tokenizer), k, StageSpec(), sp)
        for it, k in zip(official_items[:3], (0, 2, 6))
    ]
    gen = tiny_model.generate(prompts, max_new_tokens=6)
    for i, p in enumerate(prompts):
        assert gen.tokens[i] == naive_generate(tiny_model, p, 6)
    assert gen.n_thoughts.tolist() == [0, 2, 6]


@torch.no_grad()
def test_pause_tokens_are_not_fed_back(word_tokenizer, official_items):
    from conftest import tiny_base

    sp = CoconutConfig.from_special(special_tokens(word_tokenizer), mode="pause_as_thought")
    base = tiny_base("gpt2", len(word_tokenizer), sp.eos_id)
    model = CoconutModel(base, sp)
    ids = render_prompt(tokenize_item(official_items[0], word_tokenizer), 3, StageSpec(), sp.special)
    out = model(torch.tensor([ids]))
    plain = base(torch.tensor([ids])).logits
    torch.testing.assert_close(out.logits, plain, atol=TOL, rtol=0)
    col = ids.index(sp.latent_id)
    hidden = base.base_model(torch.tensor([ids])).last_hidden_state[0]
    torch.testing.assert_close(out.thoughts[0], hidden[col - 1 : col + 2], atol=TOL, rtol=0)


def test_ids_outside_the_vocabulary_are_refused(word_tokenizer):
    from conftest import tiny_base

    base = tiny_base("gpt2", 20, 1)
    with pytest.raises(ValueError, match=r"latent_id=\d+ is outside the model's vocabulary of 20"):
        CoconutModel(base, CoconutConfig(start_id=3, end_id=4, latent_id=99, eos_id=1, pad_id=1))


@torch.no_grad()
def test_an_edit_of_a_pause_model_acts_on_the_pause_input(word_tokenizer, official_items):
    from conftest import tiny_base
    from probe.model.coconut import ThoughtEdit

    sp = CoconutConfig.from_special(special_tokens(word_tokenizer), mode="pause_as_thought")
    base = tiny_base("gpt2", len(word_tokenizer), sp.eos_id)
    model = CoconutModel(base, sp)
    ids = render_prompt(tokenize_item(official_items[0], word_tokenizer), 3, StageSpec(), sp.special)
    v = torch.randn(model.d_model, generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([[False, True, False]])
    out = model(torch.tensor([ids]), edit=ThoughtEdit(mask, v.expand(1, 3, -1)))
    embeds = base.get_input_embeddings()(torch.tensor([ids])).clone()
    embeds[0, ids.index(sp.latent_id) + 1] = v  # the second pause token's input
    torch.testing.assert_close(out.logits, base(inputs_embeds=embeds).logits, atol=TOL, rtol=0)


def test_the_latent_loop_uses_the_kv_cache_keyword_that_stays(tiny_model, sequences):
    """transformers 5.2x renamed past_key_values to cache and warns on every call with the old name; older 5.x
    have only the old one. The loop passes whichever the model takes: no FutureWarning reaches users."""
    import warnings

    sp = tiny_model.config.special
    batch = collate(sequences, sp.pad_id, sp.latent_id)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        tiny_model(batch["input_ids"], batch["attention_mask"])
        tiny_model.generate([list(sequences[0].input_ids)], max_new_tokens=3)
