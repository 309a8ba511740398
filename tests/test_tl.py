"""TransformerLens on thoughts: a ThoughtTrace as an ActivationCache, whose TL methods give what ours give.

Needs the `tl` extra (installed by `make test`); in CI a skip here is a failure.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformer_lens")

from probe.capture.trace import capture  # noqa: E402
from probe.readouts.lens import lens_logits  # noqa: E402
from probe.capture.tl import TLError, bridge_for, from_activation_cache, to_activation_cache  # noqa: E402


@pytest.fixture
def traced(tiny_model, word_tokenizer, official_items):
    items = official_items[:3]
    return capture(tiny_model, word_tokenizer, items, k=3, progress=False), bridge_for(tiny_model, word_tokenizer)


def test_tl_cache_methods_equal_ours(tiny_model, traced):
    """On tiny GPT-2 and Llama: accumulated_resid, decompose_resid and the logit lens in TL idiom equal our
    trace and our logit lens; the bridge leaves our model as it was."""
    tr, bridge = traced
    cache = to_activation_cache(tr, bridge)
    L = tr.n_layers
    acc = cache.accumulated_resid()  # [L + 1, batch, k + 1, d]: resid_pre of each layer, then the final resid
    ours = torch.cat([tr.stack("hook_resid_pre"), tr["hook_resid_post", -1][:, :, None]], dim=2).permute(2, 0, 1, 3)
    torch.testing.assert_close(acc, ours.float(), atol=1e-5, rtol=0)
    parts = cache.decompose_resid(incl_embeds=False)  # [2L, batch, k + 1, d]: attn_out, mlp_out per layer
    want = torch.stack([tr[f"blocks.{l}.{p}"] for l in range(L) for p in ("hook_attn_out", "hook_mlp_out")])
    torch.testing.assert_close(parts, want.float(), atol=1e-5, rtol=0)
    with torch.no_grad():
        tl_lens = bridge.unembed(bridge.ln_final(acc[1:]))  # the logit lens, TL idiom: [L, batch, k + 1, vocab]
    torch.testing.assert_close(tl_lens.permute(1, 2, 0, 3), lens_logits(tr, tiny_model), atol=1e-5, rtol=0)
    assert not any("bridge" in type(m).__module__ for m in tiny_model.base.modules())  # ours is left as it was
    ours = {id(p) for p in tiny_model.base.parameters()}
    assert ours <= {id(p) for p in bridge.parameters()}  # ... and the bridge holds its very weights


def test_a_cache_converts_back(traced, word_tokenizer):
    tr, bridge = traced
    cache = to_activation_cache(tr, bridge)
    assert cache["blocks.0.attn.hook_pattern"].shape[1:3] == (tr["blocks.0.attn.hook_pattern"].shape[2], tr.k + 1)
    back = from_activation_cache(cache, tr)
    assert sorted(back.cache) == sorted(tr.cache)
    for name in tr.cache:
        assert torch.equal(back[name], tr[name]), name
    assert torch.equal(back.positions, tr.positions) and torch.equal(back.thoughts, tr.thoughts)
    with pytest.raises(TLError, match="'blocks.0.hook_embed' is not one of the hook points a ThoughtTrace holds"):
        from_activation_cache({"blocks.0.hook_embed": tr["blocks.0.hook_resid_pre"]}, tr)
    with pytest.raises(TLError, match="ln_final.hook_normalized in TransformerLens 4 is the value before"):
        from_activation_cache({"ln_final.hook_normalized": tr["ln_final.hook_normalized"]}, tr)
    with pytest.raises(TLError, match=r"blocks.0.hook_resid_pre: shape \[2, 4, 32\] does not hold the trace's 3 items"):
        from_activation_cache({"blocks.0.hook_resid_pre": tr["blocks.0.hook_resid_pre"][:2]}, tr)


def test_a_model_tl_cannot_bridge_is_one_line(word_tokenizer):
    from transformers import AutoConfig, AutoModelForCausalLM

    from probe.model.coconut import CoconutConfig, CoconutModel
    from probe.model.tokenizer import special_tokens

    sp = special_tokens(word_tokenizer)
    cfg = AutoConfig.for_model("cohere", vocab_size=len(word_tokenizer), hidden_size=32, intermediate_size=64,
                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                               bos_token_id=sp.eos_id, eos_token_id=sp.eos_id, pad_token_id=sp.eos_id)
    model = CoconutModel(AutoModelForCausalLM.from_config(cfg), CoconutConfig.from_special(sp))
    with pytest.raises(TLError, match=r"^CohereForCausalLM: TransformerLens cannot bridge this model \(Could not "
                                      r"determine supported architecture from config\)$"):
        bridge_for(model, word_tokenizer)


def test_the_latent_loop_runs_through_a_bridge(tiny_model, word_tokenizer, official_items):
    """On tiny GPT-2 and Llama: a CoconutModel over the bridged modules feeds back the same thoughts and gives the
    same logits (to 1e-5), and run_with_cache on Coconut prompts holds, at the thought-emitting positions,
    what our capture holds there."""
    from probe.capture.tl import CoconutBridge

    items = official_items[:3]
    tr = capture(tiny_model, word_tokenizer, items, k=3, progress=False)
    width = tr.prompt_ids.shape[1]
    pad = width - tr.prompt_len
    ids = torch.full((3, width), tiny_model.config.pad_id)
    mask = torch.zeros_like(ids)
    for b in range(3):
        n = int(tr.prompt_len[b])
        ids[b, width - n :], mask[b, width - n :] = tr.prompt_ids[b, :n], 1
    cb = CoconutBridge(tiny_model, word_tokenizer)
    rendered = cb.prompts(items, k=3)
    assert torch.equal(rendered[0], ids) and torch.equal(rendered[1], mask)
    out, cache = cb.run_with_cache(ids, mask)
    with torch.no_grad():
        own = tiny_model(ids, mask)
    torch.testing.assert_close(out.thoughts, own.thoughts, atol=1e-5, rtol=0)
    real = mask.bool()
    torch.testing.assert_close(out.logits[real], own.logits[real], atol=1e-5, rtol=0)
    cols, rows = tr.positions + pad[:, None], torch.arange(3)[:, None]
    for name in ("blocks.0.hook_resid_pre", "blocks.1.hook_resid_post", "blocks.1.hook_attn_out",
                 "blocks.0.hook_mlp_out"):
        torch.testing.assert_close(cache[name][rows, cols], tr[name], atol=1e-5, rtol=0)
    final = cache["ln_final.hook_out"][rows, cols]  # TL 4's name for the final norm's output
    torch.testing.assert_close(final, tr["ln_final.hook_normalized"], atol=1e-5, rtol=0)
    pattern = cache["blocks.1.attn.hook_pattern"]  # [batch, heads, seq, seq]
    for b in range(3):
        got = pattern[b][:, cols[b]][..., int(pad[b]) :].transpose(0, 1)  # [k + 1, heads, prompt keys]
        want = tr["blocks.1.attn.hook_pattern"][b][..., : int(tr.prompt_len[b])]
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert not any("bridge" in type(m).__module__ for m in tiny_model.base.modules())  # ours is untouched
    # at a latent position the token embedding is the thought fed back: the decomposition adds up everywhere
    real = mask.bool()
    torch.testing.assert_close(cache.decompose_resid().sum(0)[real], cache["blocks.1.hook_resid_post"][real],
                               atol=1e-5, rtol=0)
    # what a converted trace derives (norm scales, resid_mid) is what the bridge records at the thoughts
    converted = to_activation_cache(tr, cb.bridge)
    for name in ("ln_final.hook_scale", "blocks.1.ln1.hook_scale", "blocks.1.ln2.hook_scale",
                 "blocks.0.hook_resid_mid"):
        torch.testing.assert_close(converted[name], cache[name][rows, cols], atol=1e-5, rtol=0)
    attrs = converted.logit_attrs(converted.accumulated_resid(pos_slice=-1), tokens=torch.tensor([5, 6, 7]),
                                  pos_slice=-1)
    assert attrs.shape == (3, 3)
    with pytest.raises(TLError, match="blocks.0.hook_mlp_in: Cannot add hook"):
        cb.run_with_cache(ids, mask, names_filter=["blocks.0.hook_mlp_in"])
    with pytest.raises(TLError, match=r"unknown hook name\(s\) \['blocks.9.hook_resid_post'\] for this bridge"):
        cb.run_with_cache(ids, mask, names_filter="blocks.9.hook_resid_post")
    with pytest.raises(TLError, match="input_ids must be a"):
        cb.run_with_cache("Every tom is a wumpus")
    one, _ = cb.run_with_cache(ids[0, pad[0] :], names_filter=[])  # one prompt, unbatched
    torch.testing.assert_close(one.thoughts[0], own.thoughts[0], atol=1e-5, rtol=0)


def test_head_results_of_the_thoughts(tiny_model, word_tokenizer, official_items):
    """TL's per-head results on the bridged loop (set_use_attn_result, as in TransformerLens): for every layer
    the heads' results and the output bias sum to the attention output, and stack_head_results stacks them."""
    from probe.data.render import render_prompt, tokenize_item
    from probe.capture.tl import CoconutBridge

    cfg = tiny_model.config
    ids = torch.tensor([render_prompt(tokenize_item(official_items[0], word_tokenizer, cfg.data_format), 3,
                                      cfg.stage_spec, cfg.special)])
    cb = CoconutBridge(tiny_model, word_tokenizer)
    cb.bridge.set_use_attn_result(True)
    out, cache = cb.run_with_cache(ids)
    with torch.no_grad():
        torch.testing.assert_close(out.thoughts, tiny_model(ids).thoughts, atol=1e-5, rtol=0)
    L, heads = cb.bridge.cfg.n_layers, cb.bridge.cfg.n_heads
    for l in range(L):
        result = cache[f"blocks.{l}.attn.hook_result"]  # [batch, seq, heads, d_model]
        b_O = getattr(cb.bridge.blocks[l].attn, "b_O", None)
        total = result.sum(-2) + (b_O if b_O is not None else 0)
        torch.testing.assert_close(total, cache[f"blocks.{l}.hook_attn_out"], atol=1e-5, rtol=0)
    assert cache.stack_head_results(layer=-1).shape == (L * heads, 1, ids.shape[1], tiny_model.d_model)


def test_a_checkpoint_opens_through_a_bridge(tmp_path, tiny_model, word_tokenizer, official_items):
    from probe.data.render import render_prompt, tokenize_item
    from probe.model.checkpoint import CheckpointError, save_checkpoint
    from probe.capture.tl import CoconutBridge

    save_checkpoint(tiny_model, word_tokenizer, tmp_path / "ckpt")
    cb = CoconutBridge.from_checkpoint(tmp_path / "ckpt")
    cfg = tiny_model.config
    ids = torch.tensor([render_prompt(tokenize_item(official_items[1], cb.tokenizer, cfg.data_format), 2,
                                      cfg.stage_spec, cfg.special)])
    out, cache = cb.run_with_cache(ids, names_filter=lambda name: name.endswith("hook_resid_post"))
    with torch.no_grad():
        torch.testing.assert_close(out.thoughts, tiny_model(ids).thoughts, atol=1e-5, rtol=0)
    assert sorted(cache.keys()) == [f"blocks.{l}.hook_resid_post" for l in range(2)]
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        CoconutBridge.from_checkpoint(tmp_path / "none")
