"""The checkpoints shipped in checkpoints/: each loads, is small, and reproduces its model card."""

from __future__ import annotations

from pathlib import Path

import pytest

from probe.data.prosqa import load_items
from probe.model.evaluate import evaluate
from probe.readouts.lens import TunedLens
from probe.model.checkpoint import DEFAULT_CHECKPOINT, default_checkpoint, load_checkpoint
from probe.release.build import MARGIN_ITEMS, read_evaluation

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"
SHIPPED = {"prosqa-coconut": "coconut", "prosqa-coconut-mixed": "coconut", "prosqa-cot": "cot",
           "prosqa-pause": "pause_as_thought"}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_checkpoint_reproduces_its_card(name, official_path):
    path = CHECKPOINTS / name
    # small enough to ship in the repository and to come back from one GPU run: no file over 16 MiB (the
    # device's limit per file), the whole checkpoint with its lens, probe and SAE under 32 MiB
    files = [f for f in path.rglob("*") if f.is_file()]
    assert max(f.stat().st_size for f in files) <= 16 * 2**20
    assert sum(f.stat().st_size for f in files) < 32 * 2**20
    assert [f.name for f in files if f.suffix in (".bin", ".pt", ".pth", ".pkl")] == []
    assert not (path / "optimizer.safetensors").exists()
    ev = read_evaluation(path)
    assert ev.data == official_path.name and ev.n == 300 and ev.first_n == 50
    card = (path / "README.md").read_text()
    k = ev.default_k
    assert f"| {k} (default) | {ev.accuracy_by_k[k]:.1%} | {ev.correct_by_k[k]}/300 |" in card
    model, tok = load_checkpoint(path)
    assert model.config.mode == SHIPPED[name]
    res = evaluate(model, tok, load_items(official_path, limit=ev.first_n), progress=False)
    correct = sum(r.correct for r in res.items)
    assert abs(correct - ev.first_n_correct) <= MARGIN_ITEMS, (name, correct, ev.first_n_correct)


def test_the_default_checkpoint_is_the_shipped_coconut_model_with_its_tuned_lens():
    assert default_checkpoint() == DEFAULT_CHECKPOINT == CHECKPOINTS / "prosqa-coconut"
    model, _ = load_checkpoint(DEFAULT_CHECKPOINT)
    lens = TunedLens.load(DEFAULT_CHECKPOINT / "tuned_lens.safetensors", model)
    assert len(lens.translators) == 4


def test_the_shipped_planted_checkpoint_is_the_construction_and_says_so(official_path):
    """checkpoints/prosqa-planted: small, its weights the construction's (stored in bfloat16), its card saying it is
    planted and holding the readings table, right on every item it is asked, and the same through RbS's files."""
    import torch

    from probe.model.planted import planted_model

    path = CHECKPOINTS / "prosqa-planted"
    files = [f for f in path.rglob("*") if f.is_file()]
    assert max(f.stat().st_size for f in files) <= 16 * 2**20 and sum(f.stat().st_size for f in files) < 32 * 2**20
    card = (path / "README.md").read_text()
    assert "**planted, not learned**" in card and "| construction |" in card and "| 0 | 1.000 | 1.000 |" in card
    model, tok = load_checkpoint(path)
    built, _ = planted_model()
    stored = {k: v for k, v in model.base.state_dict().items()}
    assert all(torch.equal(stored[k], v.to(torch.bfloat16).float()) for k, v in built.base.state_dict().items())
    items = load_items(official_path, limit=50)
    res = evaluate(model, tok, items, k=6, progress=False)
    assert res.accuracy == 1.0
    theirs, their_tok = load_checkpoint(path / "rbs" / "checkpoint", base=path / "rbs" / "config.json", tokenizer="rbs")
    again = evaluate(theirs, their_tok, items, k="gold", progress=False)
    assert again.accuracy == 1.0
