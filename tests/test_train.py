"""The curriculum: what each stage feeds the model, that the loss falls, and exact resumption."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from probe.model.coconut import CoconutModel
from probe.train import ConfigError, TrainConfig, train


def tiny_config(tmp_path, **kw) -> TrainConfig:
    base = dict(
        name="t", out_dir=str(tmp_path / "run"), model={"model_type": "gpt2", "n_layer": 1, "n_embd": 32, "n_head": 2},
        train_size=48, batch_size=16, epochs_per_stage=1, max_latent_stage=2, num_epochs=3, lr=3e-3, seed=1,
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture
def spy(monkeypatch):
    """Record, for every training forward pass, each row's latent positions relative to its markers."""
    calls = []
    original = CoconutModel.forward

    def forward(self, input_ids, attention_mask=None, position_ids=None, labels=None, **kw):
        if self.training and torch.is_grad_enabled():
            c = self.config
            for row in input_ids.tolist():
                lat = [i for i, t in enumerate(row) if t == c.latent_id]
                start = row.index(c.start_id) if c.start_id in row else None
                end = row.index(c.end_id) if c.end_id in row else None
                calls.append({"n": len(lat), "start": start, "end": end, "lat": lat})
        return original(self, input_ids, attention_mask, position_ids, labels, **kw)

    monkeypatch.setattr(CoconutModel, "forward", forward)
    return calls


def test_thoughts_follow_the_stage_schedule(tmp_path, spy):
    cfg = tiny_config(tmp_path)  # epochs 1..3 are stages 0, 1, 2
    result = train(cfg, progress=False)
    per_epoch = len(spy) // 3
    for epoch, stage in enumerate((0, 1, 2)):
        rows = spy[epoch * per_epoch : (epoch + 1) * per_epoch]
        assert {r["n"] for r in rows} == {stage}
        for r in rows:  # latents sit right after <|start-latent|>, then <|end-latent|>
            assert r["lat"] == list(range(r["start"] + 1, r["start"] + 1 + stage)) and r["end"] == r["start"] + 1 + stage
    assert [h["stage"] for h in result.history] == [0, 1, 2]


def test_loss_falls(tmp_path):
    cfg = tiny_config(tmp_path, mode="cot", num_epochs=4, lr=1e-2)
    history = train(cfg, progress=False).history
    losses = [h["train_loss"] for h in history]
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.7 * losses[0], losses


def test_uniform_prob_mixes_stages_and_past_max_stage_pads(tmp_path, spy):
    cfg = tiny_config(tmp_path, uniform_prob=1.0, num_epochs=1, train_size=64, batch_size=64)
    train(cfg, progress=False)
    assert len({r["n"] for r in spy}) >= 3  # stages 0..n_steps drawn at random
    spy.clear()
    cfg = tiny_config(tmp_path, out_dir=str(tmp_path / "run2"), epochs_per_stage=1, max_latent_stage=2,
                      num_epochs=4, train_size=16, batch_size=16)
    train(cfg, progress=False)
    assert {r["n"] for r in spy[-16:]} == {2}  # stage 3 > max_latent_stage: max thoughts, every step removed


@pytest.mark.parametrize("mode,thoughts,markers", [("cot", 0, False), ("no_cot", 0, False),
                                                   ("no_thoughts", 0, False), ("pause_as_thought", 1, True)])
def test_baselines_train_with_their_own_layout(tmp_path, spy, mode, thoughts, markers):
    cfg = tiny_config(tmp_path, mode=mode, num_epochs=2, train_size=16, batch_size=16)
    result = train(cfg, progress=False)
    last_epoch = spy[-16:]
    assert {r["n"] for r in last_epoch} == {thoughts}
    assert all((r["start"] is not None) == markers for r in last_epoch)
    meta = json.loads((result.last_checkpoint / "coconut.json").read_text())
    assert meta["mode"] == mode


def test_resume_continues_exactly(tmp_path):
    straight = train(tiny_config(tmp_path, out_dir=str(tmp_path / "a"), num_epochs=3), progress=False)
    train(tiny_config(tmp_path, out_dir=str(tmp_path / "b"), num_epochs=2), progress=False)
    resumed = train(tiny_config(tmp_path, out_dir=str(tmp_path / "b"), num_epochs=3), resume=True, progress=False)
    a = load_file(straight.last_checkpoint / "model.safetensors")
    b = load_file(resumed.last_checkpoint / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [h["train_loss"] for h in straight.history] == [h["train_loss"] for h in resumed.history]


def test_run_dir_guards(tmp_path):
    cfg = tiny_config(tmp_path, num_epochs=1, train_size=16)
    with pytest.raises(ConfigError, match="nothing to resume"):
        train(cfg, resume=True, progress=False)
    train(cfg, progress=False)
    with pytest.raises(ConfigError, match="holds checkpoints already"):
        train(cfg, progress=False)


def test_config_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nepochs: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown option\(s\) \['epochs'\]"):
        TrainConfig.from_yaml(bad)
    bad.write_text("name: x\nlr: fast\n")
    with pytest.raises(ConfigError, match=r"lr must be a number, got 'fast'"):
        TrainConfig.from_yaml(bad)
    bad.write_text("name: x\nmode: [\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML"):
        TrainConfig.from_yaml(bad)
    good = tmp_path / "good.yaml"
    good.write_text("name: x\nlr: 1e-4\nmode: cot\n")
    assert TrainConfig.from_yaml(good).lr == pytest.approx(1e-4)


def test_load_model_path_continues_a_checkpoint_in_another_mode(tmp_path, spy):
    parent = train(tiny_config(tmp_path, out_dir=str(tmp_path / "cot"), mode="cot", num_epochs=1), progress=False)
    n_parent = len(spy)
    cfg = tiny_config(tmp_path, out_dir=str(tmp_path / "pause"), mode="pause_as_thought",
                      load_model_path=str(parent.last_checkpoint), start_epoch=1, num_epochs=3)
    child = train(cfg, progress=False)
    # The curriculum starts at stage 1 (the official `resume`), from the parent's weights.
    assert [h["stage"] for h in child.history] == [1, 2]
    assert [h["epoch"] for h in child.history] == [2, 3]
    assert {r["n"] for r in spy[n_parent:]} == {1, 2}
    state = json.loads((child.last_checkpoint / "trainer_state.json").read_text())
    assert state["init"]["path"] == str(parent.last_checkpoint)
    assert [h["train_loss"] for h in state["init"]["history"]] == [h["train_loss"] for h in parent.history]
    meta = json.loads((child.last_checkpoint / "coconut.json").read_text())
    assert meta["mode"] == "pause_as_thought" and meta["metadata"]["seconds"] > 0
    # Its first epoch started from the parent's weights, not from a fresh initialisation.
    fresh = train(tiny_config(tmp_path, out_dir=str(tmp_path / "fresh"), mode="pause_as_thought",
                              start_epoch=1, num_epochs=2), progress=False)
    assert child.history[0]["train_loss"] < fresh.history[0]["train_loss"]


def test_start_epoch_and_starting_models_are_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"start_epoch must be in \[0, num_epochs=3\), got 3"):
        tiny_config(tmp_path, start_epoch=3)
    with pytest.raises(ConfigError, match="load_model_path and base both"):
        tiny_config(tmp_path, load_model_path="a", base="b")
    with pytest.raises(ValueError, match="no such checkpoint"):
        train(tiny_config(tmp_path, load_model_path=str(tmp_path / "missing")), progress=False)
