"""Lenses: the logit lens at the last layer is the model, frontier mass is the mass on frontier names,
and a tuned lens fits better than the logit lens on held-out items and refuses another model."""

from __future__ import annotations

import pytest
import torch

from probe.capture.trace import capture
from probe.data.generate import generate_items
from probe.data.graph import ProsQAGraph
from probe.readouts.lens import LensError, TunedLens, lens_logits, mean_kl_to_final, read_lens
from probe.model.coconut import CoconutConfig, CoconutModel
from probe.model.tokenizer import special_tokens
from conftest import tiny_base


@pytest.mark.parametrize("fmt", ["sentences", "edges", "graph"])
def test_logit_lens_reads_the_model_and_the_frontier(tiny_model, word_tokenizer, official_items, fmt):
    from dataclasses import replace

    from conftest import prompt_by_hand

    tiny_model.config = replace(tiny_model.config, data_format=fmt)
    items = official_items[:5]
    tr = capture(tiny_model, word_tokenizer, items, k=3, progress=False)
    logits = lens_logits(tr, tiny_model)
    torch.testing.assert_close(logits[:, :, -1], tr.logits, atol=1e-4, rtol=0)
    # the trace's logits are the model's at the positions emitting thoughts 1..3 and the answer, in a prompt
    # written by hand in this format (thought j is emitted at the position before latent j)
    for b, it in enumerate(items):
        prompt = prompt_by_hand(it, word_tokenizer, fmt, 3, tiny_model.config.special)
        q = prompt.index(tiny_model.config.special.start_id)
        with torch.no_grad():
            full = tiny_model(torch.tensor([prompt])).logits[0]
        torch.testing.assert_close(tr.logits[b].float(), full[[q, q + 1, q + 2, q + 4]], atol=1e-4, rtol=1e-4)
    ro = read_lens(tr, tiny_model, word_tokenizer, items, top=4)
    probs = tr.logits.softmax(-1)  # the last layer, computed independently
    vocab = word_tokenizer.get_vocab()
    for b, it in enumerate(items):
        g = ProsQAGraph.from_item(it)
        for s, depth in enumerate([1, 2, 3, 3]):
            names = [it.name(v) for v in g.frontier(depth)]
            want = float(sum(probs[b, s, vocab[n]] for n in set(names)))
            assert ro.frontier_mass[b, s, -1].item() == pytest.approx(want, abs=1e-5)
            assert sorted(torch.nonzero(ro.frontier[b, s]).flatten().tolist()) == g.frontier(depth)
            for v in range(it.n_nodes):
                p = probs[b, s, vocab[it.name(v)]]
                assert ro.node_prob[b, s, -1, v].item() == pytest.approx(p.item(), abs=1e-6)
                assert ro.node_rank[b, s, -1, v].item() == int((probs[b, s] > p).sum())
            assert ro.top_ids[b, s, -1].tolist() == probs[b, s].topk(4).indices.tolist()
        assert torch.isnan(ro.node_prob[b, :, :, it.n_nodes :]).all()


def _model(vocab_tok, seed):
    sp = special_tokens(vocab_tok)
    base = tiny_base("gpt2", len(vocab_tok), sp.eos_id, seed=seed)
    return CoconutModel(base, CoconutConfig.from_special(sp))


def test_tuned_lens_beats_the_logit_lens_on_held_out_items(word_tokenizer, tmp_path):
    model = _model(word_tokenizer, seed=0)
    items = generate_items(96, seed=5)
    train, held = capture(model, word_tokenizer, items[:64], k=3, progress=False), \
        capture(model, word_tokenizer, items[64:], k=3, progress=False)
    lens = TunedLens.for_model(model).fit(train, epochs=30, lr=3e-3, progress=False)
    kl_logit, kl_tuned = mean_kl_to_final(held, model), mean_kl_to_final(held, model, lens)
    assert kl_tuned[0] < 0.5 * kl_logit[0], (kl_tuned, kl_logit)
    torch.testing.assert_close(kl_tuned[-1], kl_logit[-1])  # the last layer is the model either way
    path = lens.save(tmp_path / "lens.safetensors")
    back = TunedLens.load(path, model)
    torch.testing.assert_close(mean_kl_to_final(held, model, back), kl_tuned)
    with pytest.raises(LensError, match="trained for another model"):
        TunedLens.load(path, _model(word_tokenizer, seed=1))
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(LensError, match="bad.safetensors: not a readable safetensors file"):
        TunedLens.load(tmp_path / "bad.safetensors", model)
    with pytest.raises(LensError, match="no such tuned lens file"):
        TunedLens.load(tmp_path / "none.safetensors", model)


@pytest.mark.parametrize("fmt", ["sentences", "edges", "graph"])
def test_decode_reads_each_thought_in_every_format(tiny_model, word_tokenizer, official_items, fmt):
    """decode_item's last-layer reading of thought j: the model's own top tokens and frontier_j mass at the
    position emitting it, in a prompt written by hand in the format."""
    from dataclasses import replace

    from conftest import prompt_by_hand
    from probe.analyses.decode import decode_item

    tiny_model.config = replace(tiny_model.config, data_format=fmt)
    it = official_items[2]
    dec = decode_item(tiny_model, word_tokenizer, it, k=3)
    prompt = prompt_by_hand(it, word_tokenizer, fmt, 3, tiny_model.config.special)
    q = prompt.index(tiny_model.config.special.start_id)
    with torch.no_grad():
        probs = tiny_model(torch.tensor([prompt])).logits[0].softmax(-1)
    g = ProsQAGraph.from_item(it)
    vocab = word_tokenizer.get_vocab()
    for j, step in enumerate(dec.thoughts, start=1):
        last = step.layers[-1]
        p = probs[q + j - 1]
        assert [t for t, _ in last.top[:3]] == [word_tokenizer.decode([i]) for i in p.topk(3).indices.tolist()]
        mass = sum(float(p[vocab[n]]) for n in {it.name(v) for v in g.frontier(j)})
        assert last.frontier_mass == pytest.approx(mass, abs=1e-5)
    # the answer, decoded from the capture pass, is the one evaluate generates
    from probe.model.evaluate import evaluate

    res = evaluate(tiny_model, word_tokenizer, [it], k=3, progress=False).items[0]
    assert (dec.prediction, dec.correct, dec.generated) == (res.prediction, res.correct, res.text)


def test_a_name_of_several_pieces_reads_as_the_product_of_its_pieces(bpe_tokenizer, official_items):
    """With a byte-level BPE, names split into pieces and several share their first piece. A lens reads each
    whole name: checked at the last layer against the model's own next-token probabilities on the prompt cut
    after the step and continued with the name, and at layer 0 against a plain hook on block 0 read through
    the final norm and unembedding by hand."""
    from probe.data.layout import indistinct_names, name_pieces
    from probe.model.tokenizer import add_latent_tokens

    tok = bpe_tokenizer
    sp = add_latent_tokens(tok)
    model = CoconutModel(tiny_base("gpt2", len(tok), sp.eos_id, seed=3), CoconutConfig.from_special(sp))
    items = official_items[:2]
    tr = capture(model, tok, items, k=2, progress=False)
    ro = read_lens(tr, model, tok, items)
    block0, ln_f = model.base.transformer.h[0], model.base.transformer.ln_f
    shared = 0
    for b, it in enumerate(items):
        pieces = name_pieces(it, tok, "sentences")
        assert any(len(p) > 1 for p in pieces)
        assert not indistinct_names(it, tok, "sentences")  # shared first pieces no longer merge names
        prompt = [t for t in tr.prompt_ids[b].tolist() if t >= 0]
        for s in range(3):
            pos = int(tr.positions[b, s])
            for v, p in enumerate(pieces):
                seq = torch.tensor([prompt[: pos + 1] + p])
                kept = []
                handle = block0.register_forward_hook(lambda m, a, out: kept.append(out[0] if isinstance(out, tuple) else out))
                with torch.no_grad():
                    logp = model(seq).logits[0].log_softmax(-1)
                handle.remove()
                want = sum(float(logp[pos + i, t]) for i, t in enumerate(p))
                assert ro.node_prob[b, s, -1, v].log().item() == pytest.approx(want, abs=1e-4)
                with torch.no_grad():  # the forward runs in segments (latents); the last holds the name's pieces
                    h0 = torch.cat(kept, dim=1)[0]
                    logp0 = model.base.lm_head(ln_f(h0)).log_softmax(-1)
                want0 = sum(float(logp0[pos + i, t]) for i, t in enumerate(p))
                assert ro.node_prob[b, s, 0, v].log().item() == pytest.approx(want0, abs=1e-4)
            firsts = [p[0] for p in pieces]
            for v, w in [(v, w) for v in range(len(pieces)) for w in range(v) if firsts[v] == firsts[w]]:
                shared += 1
                assert ro.node_prob[b, s, -1, v] != ro.node_prob[b, s, -1, w]
            nodes = torch.nonzero(ro.frontier[b, s]).flatten()
            assert ro.frontier_mass[b, s, -1].item() == pytest.approx(float(ro.node_prob[b, s, -1, nodes].sum()), rel=1e-5)
    assert shared  # the example of the issue: names sharing a first piece, now told apart


def test_every_lens_has_one_interface_and_a_saved_config(word_tokenizer, tmp_path):
    """lens(h, layer) -> logits for both lenses; the tuned lens saves a TunedLensConfig and refuses a header
    without a model hash, a broken one, and another model, in the current format and the first."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from probe.readouts.lens import LogitLens, TunedLensConfig, fit_tuned_lens
    from probe.model.identity import readout_hash

    model = _model(word_tokenizer, seed=0)
    items = generate_items(12, seed=2)
    tr = capture(model, word_tokenizer, items[:3], k=2, progress=False)
    h = tr["hook_resid_post", -1]
    torch.testing.assert_close(LogitLens(model)(h, 1), tr.logits.float(), atol=1e-4, rtol=0)
    fit = fit_tuned_lens(model, word_tokenizer, items, k=2, epochs=2, progress=False)
    assert (fit.n_train, fit.n_held_out, fit.duplicates_merged) == (11, 1, 0) and fit.kl_tuned.shape == (2,)
    # Six items twice: the one distinct item held out is held out with its copy, and nothing of it is trained on.
    copies = fit_tuned_lens(model, word_tokenizer, items[:6] * 2, k=2, epochs=1, progress=False)
    assert (copies.n_train, copies.n_held_out, copies.duplicates_merged) == (10, 2, 6)
    with pytest.raises(LensError, match=r"2 items \(1 distinct\) cannot be split"):
        fit_tuned_lens(model, word_tokenizer, items[:1] * 2, progress=False)
    torch.testing.assert_close(fit.lens(h, 1), tr.logits.float(), atol=1e-4, rtol=0)  # the last layer is untouched
    assert not torch.allclose(fit.lens(h, 0), LogitLens(model)(h, 0))
    path = fit.lens.save(tmp_path / "lens.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == "coconut-probe tuned lens 2"
    assert TunedLensConfig(**json.loads(meta["config"])) == TunedLensConfig(2, 32, readout_hash(model))
    tensors = load_file(str(path))
    for name, header, words in [
        ("unhashed", {**meta, "config": json.dumps({"n_layers": 2, "d_model": 32, "model_hash": ""})}, "records no model hash"),
        ("broken", {**meta, "config": "{not json"}, "a broken tuned lens header"),
        ("v1", {"format": "coconut-probe tuned lens 1", "n_layers": "2", "d_model": "32", "model_hash": "ab"},
         "trained for another model"),
        ("foreign", {"format": "something else"}, "not a coconut-probe tuned lens"),
    ]:
        save_file(tensors, str(tmp_path / f"{name}.safetensors"), metadata=header)
        with pytest.raises(LensError, match=words):
            TunedLens.load(tmp_path / f"{name}.safetensors", model)
    v1 = {"format": "coconut-probe tuned lens 1", "n_layers": "2", "d_model": "32", "model_hash": readout_hash(model)}
    save_file(tensors, str(tmp_path / "v1ok.safetensors"), metadata=v1)
    torch.testing.assert_close(TunedLens.load(tmp_path / "v1ok.safetensors", model)(h, 0), fit.lens(h, 0))
    other = _model(word_tokenizer, seed=1)
    with pytest.raises(LensError, match="bound to another model"):
        read_lens(tr, other, word_tokenizer, items[:3], lens=LogitLens(model))


def test_a_lens_by_its_kind(word_tokenizer, tmp_path):
    from probe.readouts.lens import LENSES, LogitLens, open_lens

    model = _model(word_tokenizer, seed=0)
    assert LENSES == ("logit", "tuned") and type(open_lens("logit", model)) is LogitLens
    TunedLens.for_model(model).save(tmp_path / "t.safetensors")
    assert open_lens("tuned", model, tmp_path / "t.safetensors").name == "tuned"
    with pytest.raises(LensError, match="a tuned lens needs the path of its file"):
        open_lens("tuned", model)
    with pytest.raises(LensError, match="lens: expected one of logit, tuned, got 'tuned2'"):
        open_lens("tuned2", model)
