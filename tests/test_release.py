"""Releasing a checkpoint: evaluation at every forced k, lineage of phases, the model card, and its errors."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from typer.testing import CliRunner

from probe.cli import app
from probe.data.prosqa import load_items
from probe.model.evaluate import evaluate
from probe.model.checkpoint import CheckpointError, load_checkpoint
from probe.release.build import lineage, read_evaluation, release
from probe.train.loop import TrainConfig, train

TINY = {"model": {"model_type": "gpt2", "n_layer": 1, "n_embd": 32, "n_head": 2}, "train_size": 32,
        "batch_size": 16, "max_latent_stage": 2, "lr": 3e-3}


@pytest.fixture(scope="module")
def two_phases(tmp_path_factory):
    """A stage-0 run, then a Coconut run continued from it at stage 1: two phases, two config files."""
    tmp = tmp_path_factory.mktemp("release")
    c1 = tmp / "stage0.yaml"
    c1.write_text(yaml.safe_dump({"name": "s0", "out_dir": str(tmp / "s0"), "epochs_per_stage": 5, "num_epochs": 2, **TINY}))
    first = train(TrainConfig.from_yaml(c1), progress=False)
    c2 = tmp / "coconut.yaml"
    c2.write_text(yaml.safe_dump({"name": "c", "out_dir": str(tmp / "c"), "load_model_path": str(first.last_checkpoint),
                                  "start_epoch": 1, "epochs_per_stage": 1, "num_epochs": 3, **TINY}))
    second = train(TrainConfig.from_yaml(c2), progress=False)
    return tmp, [c1, c2], first, second


def test_release_evaluates_every_k_and_writes_the_card(two_phases, official_path):
    tmp, configs, first, second = two_phases
    data = tmp / "valid12.json"
    data.write_text(json.dumps(json.loads(official_path.read_text())[:12]))
    rel = release(second.last_checkpoint, tmp / "shipped", data, configs, summary="A tiny test model.", progress=False)
    out = rel.path
    # No optimizer or trainer state, only safetensors weights.
    names = sorted(p.name for p in out.iterdir())
    assert "optimizer.safetensors" not in names and "trainer_state.json" not in names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth"))]
    ev = read_evaluation(out)
    assert sorted(ev.accuracy_by_k) == [0, 1, 2] and ev.default_k == 2 and ev.n == 12
    # Each k's count is what an independent evaluation of the released model gives.
    model, tok = load_checkpoint(out)
    items = load_items(data)
    for k in (0, 2):
        res = evaluate(model, tok, items, k=k, progress=False)
        assert ev.correct_by_k[k] == sum(r.correct for r in res.items)
    # The lineage: phase 1's two epochs, then phase 2's epochs 2..3 at stages 1..2.
    assert [len(p.history) for p in rel.phases] == [2, 2]
    assert [h["stage"] for h in rel.phases[1].history] == [1, 2]
    card = (out / "README.md").read_text()
    assert card.startswith("# shipped\n\nA tiny test model.")
    assert f"| 2 (default) | {ev.accuracy_by_k[2]:.1%} | {ev.correct_by_k[2]}/12 |" in card
    assert f"probe train --config {configs[0]}\nprobe train --config {configs[1]}\n" in card
    for phase, epoch, stage in [(1, 1, 0), (1, 2, 0), (2, 2, 1), (2, 3, 2)]:  # the learning curve's rows
        assert re.search(rf"\n\| {phase} \| {epoch} \| \d+ \| {stage} \| ", card), (phase, epoch, stage)
    # Accuracy at each item's gold number of steps, against an independent evaluation.
    gold = evaluate(model, tok, items, k="gold", progress=False)
    assert [r.n_thoughts for r in gold.items] == [len(it.steps) for it in items]
    assert ev.gold_correct == sum(r.correct for r in gold.items)
    assert f"| gold depth (each item's number of steps, as RbS evaluates) | {ev.gold_accuracy:.1%} | " in card
    assert "cpu (" in card and "training time" in card


def test_a_phase_continued_from_a_released_checkpoint_keeps_its_lineage(two_phases, official_path):
    tmp, configs, first, second = two_phases
    data = tmp / "valid4.json"
    data.write_text(json.dumps(json.loads(official_path.read_text())[:4]))
    rel = release(second.last_checkpoint, tmp / "released", data, configs, progress=False)
    c3 = tmp / "mixed.yaml"
    c3.write_text(yaml.safe_dump({"name": "m", "out_dir": str(tmp / "m"), "load_model_path": str(rel.path),
                                  "start_epoch": 3, "epochs_per_stage": 1, "num_epochs": 4, "uniform_prob": 0.3,
                                  **TINY}))
    third = train(TrainConfig.from_yaml(c3), progress=False)
    with pytest.raises(CheckpointError, match=r"trained in 3 phase\(s\) but 2 config file\(s\)"):
        lineage(third.last_checkpoint, configs)
    phases = lineage(third.last_checkpoint, [*configs, c3])
    assert [len(p.history) for p in phases] == [2, 2, 1]
    assert [p.history for p in phases[:2]] == [p.history for p in rel.phases]
    assert phases[2].history[0]["epoch"] == 4


def test_release_errors(two_phases, official_path, tmp_path):
    tmp, configs, first, second = two_phases
    with pytest.raises(CheckpointError, match=r"trained in 2 phase\(s\) but 1 config file\(s\) were given"):
        lineage(second.last_checkpoint, configs[:1])
    with pytest.raises(CheckpointError, match=r"missing.yaml: no such config file"):
        lineage(second.last_checkpoint, [configs[0], tmp / "missing.yaml"])
    with pytest.raises(CheckpointError, match="records no evaluation"):
        read_evaluation(first.last_checkpoint)
    r = CliRunner().invoke(app, ["release", "--ckpt", str(tmp_path), "--out", str(tmp_path / "o"),
                                 "--data", str(official_path), "--config", str(configs[0])])
    assert r.exit_code == 2 and "no trainer_state.json" in r.output and not (tmp_path / "o").exists()


def test_eval_without_ckpt_uses_the_default(monkeypatch, tmp_path, official_path):
    import probe.model.checkpoint as ck

    monkeypatch.setattr(ck, "DEFAULT_CHECKPOINT", tmp_path / "nowhere")
    r = CliRunner().invoke(app, ["eval", "--data", str(official_path), "--limit", "2"])
    assert r.exit_code == 2 and "nowhere: the default checkpoint is not there" in r.output


def test_release_counts_what_evaluate_counts_on_a_model_that_answers(answering_checkpoint, official_path, tmp_path):
    """On a model right on some items and wrong on others after every k (conftest.answering_checkpoint), so
    that the card's counts can disagree with evaluate's; they do not, at any k nor at the gold depth."""
    config = tmp_path / "answering.yaml"
    config.write_text(yaml.safe_dump(json.loads((answering_checkpoint / "trainer_state.json").read_text())["config"]))
    data = tmp_path / "valid12.json"
    data.write_text(json.dumps(json.loads(official_path.read_text())[:12]))
    rel = release(answering_checkpoint, tmp_path / "released", data, [config], progress=False)
    ev = read_evaluation(rel.path)
    model, tok = load_checkpoint(rel.path)
    items = load_items(data)
    for k in range(7):
        res = evaluate(model, tok, items, k=k, progress=False)
        assert 0 < ev.correct_by_k[k] < 12 and ev.correct_by_k[k] == sum(r.correct for r in res.items), k
    gold = evaluate(model, tok, items, k="gold", progress=False)
    assert ev.gold_correct == sum(r.correct for r in gold.items)


def test_the_card_tabulates_the_search_summary_each_evaluation_logged():
    from probe.release.card import search_table
    from probe.release.build import Phase

    def search(scale: float) -> dict:
        by_k = lambda f: {str(k): f(k) for k in (1, 2, 3, 4)}  # noqa: E731
        return {"n": 5, "readout": "emitted", "frontier_mass": by_k(lambda k: scale * k / 10),
                "optimal_mass": by_k(lambda k: scale / 10), "parallelism": by_k(lambda k: {"top1": scale / 5}),
                "inner_product": by_k(lambda k: {"optimal": 1.0, "frontier": 0.5 * k, "reachable": 0.0,
                                                 "unreachable": None if k == 3 else 0.25}),
                "frontier_share": by_k(lambda k: 0.3), "attention_gap": by_k(lambda k: {"0": -1.0, "1": 0.01 * k})}

    hist = [{"epoch": 1, "step": 10, "stage": 0, "train_loss": 1.0},
            {"epoch": 2, "step": 20, "stage": 1, "train_loss": 0.5, "val_accuracy": 0.5, "search": search(1.0)},
            {"epoch": 3, "step": 30, "stage": 2, "train_loss": 0.4, "val_accuracy": 0.75, "search": search(2.0)}]
    lines = search_table([Phase("c.yaml", {}, hist)])
    assert lines[1] == "## Emergence of the search" and "first 5 validation items" in lines[3]
    rows = [line for line in lines if line.startswith("| 1 |")]
    assert rows == [
        "| 1 | 20 | 1 | 50% | 0.10 / 0.20 / 0.30 | 0.10 / 0.10 / 0.10 | 0.20 / 0.20 / 0.20 | 0.25 / 0.75 / - "
        "| 0.30 / 0.30 / 0.30 | 0.01 / 0.02 / 0.03 |",
        "| 1 | 30 | 2 | 75% | 0.20 / 0.40 / 0.60 | 0.20 / 0.20 / 0.20 | 0.40 / 0.40 / 0.40 | 0.25 / 0.75 / - "
        "| 0.30 / 0.30 / 0.30 | 0.01 / 0.02 / 0.03 |"]
    assert search_table([Phase("c.yaml", {}, hist[:1])]) == []
