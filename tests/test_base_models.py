"""Hugging Face base models: every config field that changes what the latent loop or a lens computes is applied
as transformers applies it, or the base is refused in one line.

The reference is the base model's own forward (transformers' code for that architecture), on tiny random
configs built here; nothing is downloaded.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from probe.model.architecture import ArchitectureError
from probe.model.coconut import CoconutConfig, CoconutModel
from probe.model.tokenizer import SpecialTokens

SPECIAL = SpecialTokens(start_id=1, end_id=2, latent_id=3, eos_id=0, pad_id=0)
SMALL = dict(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=8, bos_token_id=0, eos_token_id=0, pad_token_id=0)

# (model type, config fields that change the readout or the input scale, as the owner applies them)
HEADS = [
    ("llama", {}),
    ("gemma2", {"final_logit_softcapping": 0.05}),  # tanh(logits / cap) * cap
    ("cohere", {"logit_scale": 0.25}),  # logits * logit_scale
    ("granite", {"logits_scaling": 4.0, "embedding_multiplier": 3.0}),  # logits / logits_scaling; every input scaled
]


def tiny(model_type: str, **fields) -> CoconutModel:
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **{**SMALL, **fields}))
    return CoconutModel(base.eval(), CoconutConfig.from_special(SPECIAL))


@pytest.mark.parametrize("model_type,fields", HEADS, ids=[h[0] for h in HEADS])
def test_the_readout_is_the_models_own(model_type, fields):
    model = tiny(model_type, **fields)
    model.check_computation()
    ids = torch.tensor([[5, 9, 1, 3, 7]])
    with torch.no_grad():
        own = model.base(input_ids=ids).logits
        ours = model.unembed(model.base.base_model(inputs_embeds=model.embed(ids)).last_hidden_state)
        plain = model.base.get_output_embeddings()(model.base.base_model(input_ids=ids).last_hidden_state)
    torch.testing.assert_close(ours, own, atol=1e-5, rtol=1e-5)
    if fields.keys() - {"embedding_multiplier"}:  # the field matters: without it the readout would differ
        assert (plain - own).abs().max() > 1e-2


def test_a_head_it_does_not_reproduce_is_refused():
    model = tiny("llama")
    model.base.config.logits_scaling = 4.0  # our readout would divide; Llama's own head does not
    with pytest.raises(ArchitectureError, match=r"LlamaForCausalLM: its logits differ from the output embedding of "
                                                r"its final hidden state with lm_head_multiplier, logit_scale, "
                                                r"logits_scaling, final_logit_softcapping applied"):
        model.check_computation()


def test_an_embedding_scaled_only_on_the_ids_path_is_refused():
    # Falcon-H1 multiplies token embeddings by embedding_multiplier only when given ids: the thoughts the latent
    # loop feeds back as inputs_embeds would reach it on another scale.
    model = tiny("falcon_h1", embedding_multiplier=3.0, mamba_d_ssm=32, mamba_n_heads=4, mamba_d_head=8,
                 mamba_n_groups=1, mamba_d_state=8, mamba_chunk_size=4)
    with pytest.raises(ArchitectureError, match=r"FalconH1ForCausalLM: its decoder fed embed\(ids\) as inputs_embeds "
                                                r"differs from it fed the ids"):
        model.check_computation()


def test_loading_refuses_such_a_base_in_one_line(tmp_path, tiny_model, word_tokenizer):
    from probe.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

    save_checkpoint(tiny_model, word_tokenizer, tmp_path / "ckpt")
    load_checkpoint(tmp_path / "ckpt")  # its own head
    cfg = tmp_path / "ckpt" / "config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "logits_scaling": 3.0}))
    with pytest.raises(CheckpointError, match=r"ckpt: \w+(ForCausalLM|LMHeadModel): its logits differ"):
        load_checkpoint(tmp_path / "ckpt")
