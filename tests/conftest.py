"""Shared fixtures: the official validation split, word and BPE tokenizers and tiny random models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
from transformers.utils import logging as hf_logging

from probe.data.generate import CONCEPT_NAMES, PERSON_NAMES
from probe.data.prosqa import load_items
from probe.model.coconut import CoconutConfig, CoconutModel
from probe.model.tokenizer import build_word_tokenizer, special_tokens

hf_logging.set_verbosity_error()
OFFICIAL_VALID = Path(__file__).resolve().parents[2] / "shared" / "data" / "prosqa_valid.json"


@pytest.fixture(scope="session")
def official_path() -> Path:
    if not OFFICIAL_VALID.is_file():
        pytest.skip(f"the official validation split is not at {OFFICIAL_VALID}")
    return OFFICIAL_VALID


@pytest.fixture(scope="session")
def official_items(official_path):
    return load_items(official_path)


@pytest.fixture(scope="session")
def answering(answering_checkpoint):
    """(model, tokenizer) of answering_checkpoint."""
    from probe.model.checkpoint import load_checkpoint

    return load_checkpoint(answering_checkpoint)


@pytest.fixture(scope="session")
def answering_checkpoint(tmp_path_factory, official_path):
    """A checkpoint directory: a tiny Coconut model built to answer some validation items right and some wrong
    after any number of thoughts: trained on items 0..7 at every stage (uniform_prob 1), so that it writes
    an answer line after any k, right on most of those items and wrong on items 8..11 (about 12 s, once).
    Comparisons of accuracies or correctness on it can fail, unlike 0 == 0 on a random model."""
    import json

    from probe.train.loop import TrainConfig, train

    tmp = tmp_path_factory.mktemp("answering")
    data = tmp / "first8.json"
    data.write_text(json.dumps(json.loads(official_path.read_text())[:8]))
    cfg = TrainConfig(name="answering", out_dir=str(tmp / "run"), data_format="edges", train_data=str(data),
                      model={"model_type": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 4}, train_size=8,
                      batch_size=8, epochs_per_stage=1, max_latent_stage=6, start_epoch=7, num_epochs=127,
                      uniform_prob=1.0, lr=3e-3, warmup_steps=10, seed=1, keep_checkpoints=1)
    return train(cfg, progress=False).last_checkpoint


@pytest.fixture(scope="session")
def word_tokenizer():
    return build_word_tokenizer([*PERSON_NAMES, *CONCEPT_NAMES])


def prompt_by_hand(item, tok, fmt: str, k: int, special) -> list[int]:
    """The inference prompt after k thoughts, written from each data format's description (render.py's
    docstring), not by probe.data.render: an independent reference for every format."""
    from probe.data.prosqa import parse_question

    facts, (root, a, b) = parse_question(item.question)
    listed = " ".join(f"{p} {c} |" for p, c in facts)
    text = {"sentences": item.question, "edges": f"{listed} {root} ? {a} {b}", "graph": f"{listed} {a} {b} ? {root}"}[fmt]
    return tok.encode(text + "\n") + [special.start_id] + [special.latent_id] * k + [special.end_id]


@torch.no_grad()
def latent_forward_by_hand(base, ids: list[int], origin: int, k: int, **kw):
    """A Hugging Face forward over a whole prompt with k thoughts written in by hand, for RbS's layout (and any
    prompt whose k latents follow position `origin` directly): thought j is the last hidden state (after the final
    norm, `hidden_states[-1]`) at origin + j - 1, written as the input embedding at origin + j, and the whole
    sequence is recomputed after each write (no KV cache, no CoconutModel code). kw go to every forward
    (output_attentions=True on an eager base). Returns (the last forward's output, thoughts [k, d_model])."""
    embeds = base.get_input_embeddings()(torch.tensor([ids])).clone()
    thoughts = []
    for j in range(1, k + 1):
        out = base(inputs_embeds=embeds, output_hidden_states=True, use_cache=False, **kw)
        thoughts.append(out.hidden_states[-1][0, origin + j - 1])
        embeds[0, origin + j] = thoughts[-1]
    out = base(inputs_embeds=embeds, output_hidden_states=True, use_cache=False, **kw)
    return out, torch.stack(thoughts) if thoughts else torch.zeros(0, embeds.shape[-1])


def randomize_norms(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every layer norm non-trivial weights (and biases), so a skipped norm shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name or "norm" in name:
                p.copy_(1.0 + 0.5 * torch.randn(p.shape, generator=g))


def hashed_as(weights: str):
    """A stand-in for a model whose weights hash is `weights` (pinned, as probe.model.identity.pin keeps it): what a
    probe's or SAE's check(model) compares, for one saved with a made-up hash."""
    from types import SimpleNamespace

    from probe.model.identity import WEIGHTS

    return SimpleNamespace(identity={WEIGHTS: weights})


def tiny_base(kind: str, vocab: int, eos: int, seed: int = 0):
    """A two-layer random GPT-2 or Llama with randomised norms, in eval mode."""
    torch.manual_seed(seed)
    ids = {"vocab_size": vocab, "bos_token_id": eos, "eos_token_id": eos, "pad_token_id": eos}
    if kind == "gpt2":
        base = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=512, **ids))
    elif kind == "llama":
        base = LlamaForCausalLM(LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                            num_key_value_heads=2, intermediate_size=64, **ids))
    else:
        raise ValueError(kind)
    randomize_norms(base, seed)
    return base.eval()


@pytest.fixture(params=["gpt2", "llama"])
def tiny_model(request, word_tokenizer) -> CoconutModel:
    sp = special_tokens(word_tokenizer)
    base = tiny_base(request.param, len(word_tokenizer), sp.eos_id)
    return CoconutModel(base, CoconutConfig.from_special(sp))


@pytest.fixture
def bpe_tokenizer(official_items):
    """A byte-level BPE trained on 20 official questions, so small that some names split into pieces."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([it.question for it in official_items[:20]],
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")


# In CI (CI set, as CI runs .ci/run, or COCONUT_BROWSER_TEST=required) everything a test needs must be
# there: a skip for a missing data file or dependency (the validation split, streamlit, nbclient,
# playwright, chromium) is a failure, so that `make test` cannot pass by running nothing.
STRICT = os.environ.get("CI", "").lower() in ("1", "true", "yes") or os.environ.get("COCONUT_BROWSER_TEST") == "required"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if STRICT and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped where nothing may be missing (CI): {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if STRICT and report.skipped:  # a module-level importorskip: the whole file would vanish
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped where nothing may be missing (CI): {reason}"
