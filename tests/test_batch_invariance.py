"""Batch invariance: every result is the same whatever the batch size and whatever else shares the batch.

Each entry point runs on items of mixed prompt lengths (validation items 0..11: 82 to 160 tokens at k = 6)
at batch sizes 1, 3 and its default, and its results are compared item by item. The model's position limit
is set just past the longest prompt, so that the longest item has room for 4 new tokens and every other item
for more: a continuation budget shared by a batch (the longest row's room) cuts the other rows' answers.
Tokens and answers must be equal; numbers equal up to float rounding (different padding widths).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from probe.data.render import render_prompt, tokenize_item

SIZES = (1, 3, None)  # None: the entry point's default batch size
ITEMS = 12
ROOM = 3  # positions past the longest k = 6 prompt
SOME = 6  # items for the entry points that run many evaluations (interventions, release): 0..5, 97 to 136 tokens


@pytest.fixture(scope="module")
def limited(answering_checkpoint, official_items):
    """(model, tokenizer, items): the answering model with its position limit just past the longest prompt."""
    from probe.model.checkpoint import load_checkpoint

    model, tok = load_checkpoint(answering_checkpoint)
    items = official_items[:ITEMS]
    cfg = model.config
    lengths = [len(render_prompt(tokenize_item(it, tok, cfg.data_format), 6, cfg.stage_spec, cfg.special))
               for it in items]
    assert len(set(lengths)) > 6, "the items must differ in length"
    model.base.config.n_positions = max(lengths) + ROOM
    return model, tok, items


def _runs(fn):
    """fn(batch_size=...) at every size of SIZES (the default where None)."""
    return [fn() if b is None else fn(batch_size=b) for b in SIZES]


def _close(a, b, path: str = "") -> None:
    """Equal structures: equal strings, ints and bools; floats and arrays equal up to float rounding."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            _close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-5), (path, a, b)
    elif isinstance(a, (np.ndarray, torch.Tensor)):
        np.testing.assert_allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), rtol=1e-4, atol=1e-5,
                                   equal_nan=True, err_msg=path)
    else:
        assert a == b, (path, a, b)


def test_generate_gives_each_row_its_own_budget(limited):
    """The core property: a batch of short prompts and one at the limit generates, row by row, what each
    prompt generates alone; the short rows are not cut to the long row's room."""
    model, tok, items = limited
    cfg = model.config
    prompts = [render_prompt(tokenize_item(it, tok, cfg.data_format), 6, cfg.stage_spec, cfg.special)
               for it in items]
    longest = max(range(len(items)), key=lambda i: len(prompts[i]))
    batch = [0, 1, longest]
    together = model.generate([prompts[i] for i in batch]).tokens
    alone = [model.generate([prompts[i]]).tokens[0] for i in batch]
    assert together == alone
    assert len(alone[2]) <= ROOM + 1 < max(len(alone[0]), len(alone[1])), "the test needs short rows that go further"


@pytest.mark.parametrize("k", [6, "gold"])
def test_evaluate(limited, k):
    from probe.model.evaluate import evaluate

    model, tok, items = limited
    runs = _runs(lambda **b: evaluate(model, tok, items, k=k, progress=False, **b))
    one = [(r.prediction, r.correct, r.n_generated, r.text) for r in runs[0].items]
    assert len({r.n_generated for r in runs[0].items}) > 2, "the answers must differ in length"
    for res in runs[1:]:
        assert [(r.prediction, r.correct, r.n_generated, r.text) for r in res.items] == one
        for a, b in zip(runs[0].items, res.items):
            _close(a.thoughts, b.thoughts)


def test_capture_with_answers(limited):
    from probe.capture.trace import capture

    model, tok, items = limited
    runs = _runs(lambda **b: capture(model, tok, items, k=6, max_new_tokens=128, progress=False, **b))
    for tr in runs[1:]:
        assert tr.answers() == runs[0].answers()
        _close(runs[0].to_tensors(), tr.to_tensors())


def test_decode_matches_the_batched_evaluation(limited):
    """decode (and the explorer, which calls it) runs one item alone; its answer is the batched one's."""
    from probe.analyses.decode import decode_item
    from probe.model.evaluate import evaluate

    model, tok, items = limited
    batched = evaluate(model, tok, items, k=6, progress=False).items
    for i in (0, 9):
        assert decode_item(model, tok, items[i], index=i, k=6).prediction == batched[i].prediction


def test_values(limited):
    from probe.readouts.values import values_by_k

    model, tok, items = limited
    runs = _runs(lambda **b: values_by_k(model, tok, items, 3, progress=False, **b))
    for v in runs[1:]:
        _close(runs[0], v)


def test_analyze(limited):
    from probe.analyses.analyze import analyze

    model, tok, items = limited
    runs = _runs(lambda **b: analyze(model, tok, items, k_max=2, progress=False, **b).report())
    for rep in runs[1:]:
        _close(runs[0], rep)


def test_interventions(limited):
    from probe.analyses.interventions import run_interventions

    model, tok, items = limited
    runs = _runs(lambda **b: run_interventions(model, tok, items[:SOME], k=2, sites=(None, 1), kinds=("mean",),
                                               alphas=(1.0,), parts=("k", "ablate", "steer"), progress=False,
                                               **b).as_dict())
    for rep in runs[1:]:
        _close(runs[0], rep)


def test_probes(limited):
    from probe.readouts.probes import fit_probes

    model, tok, items = limited
    runs = _runs(lambda **b: fit_probes(model, tok, items, "frontier", k_max=2, folds=3, progress=False,
                                        **b).as_dict())
    for rep in runs[1:]:
        _close(runs[0], rep)


def test_release_evaluation(limited):
    from probe.release.build import evaluate_by_k

    model, tok, items = limited
    runs = _runs(lambda **b: evaluate_by_k(model, tok, items[:SOME], data="valid", progress=False, **b))
    assert len(set(runs[0].correct_by_k.values())) > 1 or runs[0].gold_correct != runs[0].correct_by_k[6]
    for ev in runs[1:]:
        assert ev == runs[0]


def test_emitted_readout_and_rotary_positions(tiny_model, word_tokenizer, official_items):
    """The emitted readout (a graph-format model trained toward optimal nodes) and the search summary, on a
    random GPT-2 and a random Llama (rotary positions: each row's own position ids), batch 1, 3 and default."""
    from dataclasses import asdict, replace

    from probe.analyses.analyze import search_summary
    from probe.readouts.values import values_by_k

    tiny_model.config = replace(tiny_model.config, data_format="graph", supervision="optimal")
    items = official_items[:7]
    runs = _runs(lambda **b: values_by_k(tiny_model, word_tokenizer, items, 3, progress=False, **b))
    assert not np.isnan(runs[0][:, :, :3]).any()
    for v in runs[1:]:
        _close(runs[0], v)
    runs = _runs(lambda **b: asdict(search_summary(tiny_model, word_tokenizer, items, k_max=2, **b)))
    for s in runs[1:]:
        _close(runs[0], s)
