"""Never a NaN passed off as a value: every file of numbers is checked once at load (a lens, a probe, an SAE, a trace
store; models in test_checkpoint.py), and a run whose activations turn NaN or inf says which item, which thought
and which hook point, instead of printing 'nan' or ranking garbage."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from conftest import hashed_as, prompt_by_hand, tiny_base
from probe.capture.trace import CaptureError, TraceStore, capture, capture_batch, capture_to_disk
from probe.model.architecture import architecture
from probe.analyses.decode import decode_item
from probe.model.evaluate import evaluate
from probe.model.finite import NonFiniteActivation
from probe.readouts.lens import LensError, TunedLens, fit_tuned_lens, read_lens
from probe.model.coconut import CoconutConfig, CoconutModel, ThoughtEdit
from probe.model.identity import weights_hash
from probe.model.tokenizer import special_tokens
from probe.readouts.probes import ProbeError, SavedProbe
from probe.readouts.sae import SAEError, SparseAutoencoder
from probe.readouts.values import node_values

DAMAGED = "the file is damaged or came from a diverged run"
OVERFLOW = ("the model's weights are finite, but its activations overflow float32 on this input (weights far too "
            "large: a diverged run?)")


@pytest.fixture
def gpt2(word_tokenizer) -> CoconutModel:
    sp = special_tokens(word_tokenizer)
    return CoconutModel(tiny_base("gpt2", len(word_tokenizer), sp.eos_id), CoconutConfig.from_special(sp))


def poison(file, name: str, values: list[float]) -> None:
    """Put values (nan, inf) into the first elements of one tensor of a safetensors file, keeping its header."""
    with safe_open(str(file), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors[name].view(-1)[: len(values)] = torch.tensor(values, dtype=tensors[name].dtype)
    save_file(tensors, str(file), metadata=meta)


def test_readout_and_trace_files_holding_nan_or_inf_are_refused_naming_file_and_tensor(gpt2, word_tokenizer,
                                                                                       official_items, tmp_path):
    nan, inf = float("nan"), float("inf")
    # a tuned lens whose translator holds NaN but whose header (and hash) is intact
    TunedLens.for_model(gpt2).save(tmp_path / "lens.safetensors")
    poison(tmp_path / "lens.safetensors", "1.weight", [nan, nan, nan])
    with pytest.raises(LensError) as e:
        TunedLens.load(tmp_path / "lens.safetensors", gpt2)
    assert str(e.value) == f"{tmp_path / 'lens.safetensors'}: tensor 1.weight holds 3 NaN values; {DAMAGED}"
    # a probe, and the halting probe (the same file format)
    for target, names in (("frontier", ["a", "b"]), ("halt", ["correct"])):
        SavedProbe(target=target, kind="classification", hook="blocks.1.hook_resid_post", steps=[2], names=names,
                   coef=np.ones((1, len(names), 32)), intercept=np.zeros((1, len(names))),
                   model_hash=weights_hash(gpt2)).save(tmp_path / target)
        poison(tmp_path / target / "probe.safetensors", "intercept", [inf])
        with pytest.raises(ProbeError) as e:
            SavedProbe.load(tmp_path / target, gpt2)
        file = tmp_path / target / "probe.safetensors"
        assert str(e.value) == f"{file}: tensor intercept holds 1 inf value; {DAMAGED}"
    # an SAE
    SparseAutoencoder(d_sae=8, k=2, epochs=1, progress=False).fit(torch.randn(40, 32), model=hashed_as("abc")).save(
        tmp_path / "sae", hook_name="ln_final.hook_normalized")
    poison(tmp_path / "sae" / "sae_weights.safetensors", "W_dec", [nan, inf, -inf])
    with pytest.raises(SAEError) as e:
        SparseAutoencoder.load(tmp_path / "sae", hashed_as("abc"))
    assert str(e.value) == (f"{tmp_path / 'sae' / 'sae_weights.safetensors'}: tensor W_dec holds 1 NaN and 2 inf "
                            f"values; {DAMAGED}")
    # a trace store's shard
    store = capture_to_disk(gpt2, word_tokenizer, official_items[:2], tmp_path / "trace", k=1, progress=False,
                            names=["blocks.0.hook_resid_post"])
    shard = tmp_path / "trace" / "shard-00000.safetensors"
    poison(shard, "blocks.0.hook_resid_post", [nan, nan])
    with pytest.raises(CaptureError) as e:
        store.shard(0)
    assert str(e.value) == f"{shard}: tensor blocks.0.hook_resid_post holds 2 NaN values; {DAMAGED}"


def _one_item_token(items, tokenizer, j: int) -> int:
    """A node name's token that item j's question holds and no other item's does."""
    others = {t for i, it in enumerate(items) if i != j for t in tokenizer.encode(it.question)}
    names = {t for n in items[j].idx_to_symbol for t in tokenizer.encode(n)}
    return min(t for t in names - others if t in tokenizer.encode(items[j].question))


def test_a_huge_finite_weight_that_overflows_names_the_item_and_layer(gpt2, word_tokenizer, official_items):
    """Weights finite (the load check passes them) but one embedding row so large that layer 0's norm overflows: only
    the item whose question holds that token turns NaN, and every batched run names that item and the layer, and a
    span of its prompt that holds the token, whatever order it batches items in (attention may spread a NaN to the
    positions before it in its segment, so the span, not one position, is what can be told)."""
    items, j = official_items[:6], 4
    token = _one_item_token(items, word_tokenizer, j)
    with torch.no_grad():
        gpt2.base.get_input_embeddings().weight[token] = 1e30
    at = prompt_by_hand(items[j], word_tokenizer, "sentences", 2, gpt2.config.special).index(token)
    runs = {"evaluate": lambda: evaluate(gpt2, word_tokenizer, items, k=2, batch_size=4, progress=False),
            "capture": lambda: capture(gpt2, word_tokenizer, items, k=2, batch_size=4, progress=False),
            "node_values": lambda: node_values(gpt2, word_tokenizer, items, 2, batch_size=4, progress=False),
            # split into held-out and training items by content: still named by its index in the data set
            "fit_tuned_lens": lambda: fit_tuned_lens(gpt2, word_tokenizer, items, k=2, epochs=1, progress=False)}
    for name, run in runs.items():
        with pytest.raises(NonFiniteActivation) as e:
            run()
        found = re.fullmatch(rf"item {j}: NaN or inf first appears at blocks.0.hook_resid_post, in prompt positions "
                             rf"(\d+)-(\d+) \(of \d+\); {re.escape(OVERFLOW)}", str(e.value))
        assert found and int(found[1]) <= at <= int(found[2]), (name, str(e.value))
    # the other items run and stay finite
    rest = [it for i, it in enumerate(items) if i != j]
    assert torch.isfinite(capture(gpt2, word_tokenizer, rest, k=2, progress=False).thoughts).all()


def _inf_at(model, layer: int, call: int):
    """A hook on a decoder layer that writes inf into its output on its `call`-th one-column segment (0-based)."""
    seen = []

    def hook(module, args, out):
        x = out[0] if isinstance(out, tuple) else out
        if x.shape[1] != 1:
            return None
        seen.append(1)
        if len(seen) - 1 != call:
            return None
        x = x.clone()
        x[:, -1, 0] = float("inf")
        return (x, *out[1:]) if isinstance(out, tuple) else x

    return architecture(model).layers[layer].register_forward_hook(hook)


def test_an_activation_that_turns_inf_is_named_by_thought_answer_token_and_hook(gpt2, word_tokenizer, official_items):
    item = official_items[5]
    # in the latent loop: the first one-column segment is latent 1's, the position that emits thought 2
    handle = _inf_at(gpt2, 1, 0)
    try:
        with pytest.raises(NonFiniteActivation) as e:
            decode_item(gpt2, word_tokenizer, item, index=5, k=3)
    finally:
        handle.remove()
    assert str(e.value) == f"item 5: NaN or inf first appears at blocks.1.hook_resid_post, in thought 2; {OVERFLOW}"
    # while the answer is decoded: the first token comes from the prompt's pass, the second from the first step
    tr = capture_batch(gpt2, word_tokenizer, [item], k=1, indices=[5])
    prompt = [t for t in tr.prompt_ids[0].tolist() if t >= 0]
    ids, mask = gpt2.left_padded([prompt])
    with torch.no_grad():
        out = gpt2(ids, mask, logits_at=torch.tensor([ids.shape[1] - 1]))
    handle = _inf_at(gpt2, 0, 0)
    try:
        with pytest.raises(NonFiniteActivation) as e:
            gpt2.continue_greedy(out, mask, 4)
    finally:
        handle.remove()
    assert str(e.value) == (f"batch row 0: NaN or inf first appears at blocks.0.hook_resid_post, in answer token 2; "
                            f"{OVERFLOW}")
    # an edit that feeds back inf: the thought as fed back, and the advice names the edit
    edit = ThoughtEdit(add=torch.zeros(1, 2, gpt2.d_model).index_fill_(1, torch.tensor([1]), float("inf")))
    with pytest.raises(NonFiniteActivation) as e:
        evaluate(gpt2, word_tokenizer, [item], k=2, edit=edit, progress=False)
    assert str(e.value) == ("item 0: NaN or inf first appears at blocks.0.hook_resid_pre, in thought 2 as fed back; "
                            "the run's edit of the thoughts put it there (an edit too large for this model)")
    # in float16 the advice is to run in float32
    gpt2.to(torch.float16)
    handle = _inf_at(gpt2, 1, 0)
    try:
        with pytest.raises(NonFiniteActivation, match=r"item 0: NaN or inf .* in thought 2; the model runs in float16, "
                                                       r"which cannot hold these values: run it in float32 "
                                                       r"\(--dtype float32\)$"):
            evaluate(gpt2, word_tokenizer, [item], k=2, progress=False)
    finally:
        handle.remove()


def test_a_lens_reading_that_overflows_names_item_thought_and_layer(gpt2, word_tokenizer, official_items):
    tr = capture_batch(gpt2, word_tokenizer, official_items[:3], k=2, indices=[7, 8, 9],
                       names=["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"])
    lens = TunedLens.for_model(gpt2)
    with torch.no_grad():
        lens.translators[0].weight.mul_(1e30)  # finite, and far too large
    with pytest.raises(NonFiniteActivation) as e:
        read_lens(tr, gpt2, word_tokenizer, official_items[:3], lens=lens)
    assert str(e.value) == ("item 7: NaN or inf first appears at the tuned lens's reading of layer 0, in thought 1; "
                            "its translators overflow on this residual: refit it (probe tuned-lens)")


def test_fits_that_diverge_or_cannot_learn_write_nothing(gpt2, word_tokenizer, official_items):
    tr = capture(gpt2, word_tokenizer, official_items[:4], k=1, progress=False,
                 names=["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"])
    with pytest.raises(LensError, match=r"^the tuned lens being fit: tensor 0\.weight holds \d+ NaN values; its "
                                        r"training diverged \(try a lower learning rate\); nothing is written$"):
        TunedLens.for_model(gpt2).fit(tr, epochs=2, lr=1e30, progress=False)
    with pytest.raises(SAEError, match=r"^the 8 activation rows are all equal \(variance 0\): an SAE has nothing to "
                                       r"reconstruct; train it on more items$"):
        SparseAutoencoder(d_sae=4, k=1, epochs=1, progress=False).fit(torch.ones(8, 32))
    with pytest.raises(SAEError, match=r"^the SAE being trained: tensor \w+ holds .*; its training diverged"):
        SparseAutoencoder(d_sae=4, k=1, epochs=3, lr=1e30, progress=False).fit(torch.randn(64, 32))
