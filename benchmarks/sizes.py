"""Model sizes the benchmarks run: random GPT-2s with the default model's tokenizer and Coconut config."""

from __future__ import annotations

import torch

# name -> (n_layer, n_embd, n_head); "default" is the shipped model's own shape, "rbs" the recipe of
# configs/rbs (the default model's replacement), "rbs-768" the width of "Reasoning by Superposition"
SIZES = {"tiny": (2, 64, 4), "default": (4, 128, 4), "rbs": (2, 512, 8), "rbs-768": (2, 768, 8),
         "gpt2-124m": (12, 768, 12)}


def random_model(size: str, tok, config, vocab: int | None = None):
    """A randomly initialised Coconut GPT-2 of a named size (seeded), in eval mode.

    vocab: the embedding and unembedding rows (default the tokenizer's; 50257 for GPT-2's, of which the
    tokenizer uses the first rows).
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    from probe.model.coconut import CoconutModel

    n_layer, n_embd, n_head = SIZES[size]
    torch.manual_seed(0)
    base = GPT2LMHeadModel(GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, vocab_size=vocab or len(tok),
                                      n_positions=1024, eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id))
    return CoconutModel(base.eval(), config)
