"""The curriculum: what each stage feeds the model, that the loss falls, and exact resumption."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from probe.data.prosqa import load_items
from probe.model.evaluate import evaluate
from probe.model.checkpoint import load_checkpoint
from probe.model.coconut import CoconutModel
from probe.train.loop import ConfigError, TrainConfig, train


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


def graph_config(tmp_path, **kw) -> TrainConfig:
    """The default model's recipe (supervision optimal, graph format), tiny."""
    base = dict(data_format="graph", supervision="optimal", uniform_prob=0.1, reset_optimizer=False)
    base.update(kw)
    return tiny_config(tmp_path, **base)


def _optimizer_state(ckpt):
    return load_file(ckpt / "optimizer.safetensors"), json.loads((ckpt / "optimizer.json").read_text())


def test_resume_inside_an_epoch_continues_exactly(tmp_path):
    """Stopped at a checkpoint inside an epoch, in the middle of a stage, with warmup and cosine decay,
    uniform_prob, fresh data every epoch and gradient accumulation: the resumed run ends bit-identical."""
    kw = dict(num_epochs=3, epochs_per_stage=2, train_size=40, batch_size=8, gradient_accumulation_steps=2,
              warmup_steps=2, schedule="cosine", uniform_prob=0.5, fresh_data_every_epoch=True, lr=3e-3)
    straight = train(graph_config(tmp_path, out_dir=str(tmp_path / "a"), **kw), progress=False)
    run_b = graph_config(tmp_path, out_dir=str(tmp_path / "b"), save_every_steps=2, keep_checkpoints=20, **kw)
    train(run_b, progress=False)
    ckpts = sorted((tmp_path / "b").glob("epoch-*"))
    middle = [p for p in ckpts if p.name.startswith("epoch-001-step-")]  # inside epoch 2, stage 0
    assert middle, [p.name for p in ckpts]
    for p in ckpts[ckpts.index(middle[0]) + 1 :]:
        shutil.rmtree(p)
    state = json.loads((middle[0] / "trainer_state.json").read_text())
    assert state["epoch"] == 1 and 0 < state["batch"] < 5 and state["pending"]["batches"] > 0
    resumed = train(run_b, resume=True, progress=False)
    a, b = load_file(straight.last_checkpoint / "model.safetensors"), load_file(resumed.last_checkpoint / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    (ta, ga), (tb, gb) = _optimizer_state(straight.last_checkpoint), _optimizer_state(resumed.last_checkpoint)
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    assert ga == gb  # the learning rate of the last step and every other setting
    untimed = lambda hist: [{k: v for k, v in h.items() if k not in ("seconds", "tokens_per_s", "tflops")}  # noqa: E731
                            for h in hist]
    assert untimed(straight.history) == untimed(resumed.history)  # the same records: losses, steps, stages, lr
    # the first step after the resume used the learning rate the uninterrupted run used there
    resumed_step = state["step"]
    first_after = next(h for h in resumed.history if h["step"] > resumed_step)
    assert first_after["lr"] == next(h for h in straight.history if h["step"] == first_after["step"])["lr"]


def test_the_learning_rate_follows_warmup_and_cosine():
    from probe.train.loop import lr_at

    cfg = TrainConfig(name="x", lr=1.0, warmup_steps=4, schedule="cosine")
    assert [lr_at(s, 20, cfg) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(4, 20, cfg) == pytest.approx(1.0) and lr_at(20, 20, cfg) == pytest.approx(0.1)
    assert lr_at(12, 20, cfg) == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the decay


def test_loss_falls_under_optimal_supervision(tmp_path):
    cfg = graph_config(tmp_path, num_epochs=4, epochs_per_stage=10, train_size=64, lr=1e-2, uniform_prob=0.0)
    losses = [h["train_loss"] for h in train(cfg, progress=False).history]
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.85 * losses[0], losses


def test_a_budget_sizes_the_epochs_from_measured_costs(tmp_path):
    cfg = graph_config(tmp_path, max_minutes=0.3, num_epochs=4, epochs_per_stage=1, train_size=64, batch_size=8,
                       val_data=None)
    result = train(cfg, progress=False)
    cal = result.history[0]["calibration"]
    per_item = {int(k): v for k, v in cal["seconds_per_item"].items()}
    assert sorted(per_item) == [0, 1, 2, 3] and all(v > 0 for v in per_item.values())
    # epoch_items solves: seconds left = sum over epochs of epoch_items x seconds per item of its stage
    cost = sum(per_item[cfg.stage(e)] for e in range(cfg.num_epochs))
    expected = max(cfg.batch_size, int(cal["seconds_left"] / cost) // cfg.batch_size * cfg.batch_size)
    assert result.history[0]["epoch_items"] == expected
    state = json.loads((result.last_checkpoint / "trainer_state.json").read_text())
    assert state["plan"]["epoch_items"] == expected
    last = result.history[-1]
    assert last["epoch"] == 4 or "cut_by_budget" in last
    with pytest.raises(ConfigError, match="fewer than one batch"):
        train(graph_config(tmp_path, out_dir=str(tmp_path / "tiny"), max_minutes=0.001), progress=False)
    with pytest.raises(ConfigError, match="use a fixed pool"):
        graph_config(tmp_path, max_minutes=1, fresh_data_every_epoch=True)


def test_configs_inherit_and_take_overrides(tmp_path):
    from probe.train.config import parse_overrides

    (tmp_path / "base.yaml").write_text("name: base\nlr: 1e-3\nmodel: {model_type: gpt2, n_layer: 2, n_embd: 64}\n")
    (tmp_path / "child.yaml").write_text("inherit: base.yaml\nname: child\nmode: pause_as_thought\n")
    cfg = TrainConfig.from_yaml(tmp_path / "child.yaml", **parse_overrides(["model.n_embd=32", "seed=7"]))
    assert (cfg.name, cfg.mode, cfg.lr, cfg.seed) == ("child", "pause_as_thought", 1e-3, 7)
    assert cfg.model == {"model_type": "gpt2", "n_layer": 2, "n_embd": 32}
    (tmp_path / "a.yaml").write_text("inherit: b.yaml\nname: a\n")
    (tmp_path / "b.yaml").write_text("inherit: a.yaml\nname: b\n")
    with pytest.raises(ConfigError, match="inherits from itself"):
        TrainConfig.from_yaml(tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match=r"--set 'lr': expected OPTION=VALUE"):
        parse_overrides(["lr"])
    with pytest.raises(ConfigError, match="mode cot trains language steps"):
        TrainConfig(name="x", mode="cot", supervision="optimal")
    for name in ("coconut", "coconut_newest", "pause", "no_thoughts"):  # the shipped recipe's configs load
        TrainConfig.from_yaml(Path(__file__).resolve().parents[1] / "configs" / "rbs" / f"{name}.yaml")


def test_the_recipe_learns_its_training_items(tmp_path, official_path):
    """Trained at the last stage on eight items, evaluated as `probe eval` evaluates them (six thoughts, then
    the answer line by the official rule): every one right. Training and inference agree on the layout."""
    data = tmp_path / "eight.json"
    data.write_text(json.dumps(json.loads(official_path.read_text())[:8]))
    cfg = graph_config(tmp_path, model={"model_type": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 4},
                       train_data=str(data), train_size=8, batch_size=8, epochs_per_stage=1, max_latent_stage=6,
                       start_epoch=7, num_epochs=107, uniform_prob=0.0, lr=3e-3, warmup_steps=10, keep_checkpoints=1)
    model, tok = load_checkpoint(train(cfg, progress=False).last_checkpoint)
    res = evaluate(model, tok, load_items(data), progress=False)
    assert [r.n_thoughts for r in res.items] == [6] * 8
    assert res.accuracy == 1.0, [r.text for r in res.items]


def test_the_recipe_learns_its_training_items_in_rbs_layout(tmp_path, official_path):
    """The twin of the test above in RbS's layout, tokenizer and answer rule (the token after "[A]" is the target's
    index): trained at the last stage on eight items (edges and option order drawn anew at every view, node ids
    kept), evaluated as `probe eval` evaluates them, every one right."""
    data = tmp_path / "eight.json"
    data.write_text(json.dumps(json.loads(official_path.read_text())[:8]))
    cfg = graph_config(tmp_path, model={"model_type": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 4},
                       tokenizer="rbs", data_format="rbs", shuffle_nodes=False,
                       train_data=str(data), train_size=8, batch_size=8, epochs_per_stage=1, max_latent_stage=6,
                       start_epoch=7, num_epochs=107, uniform_prob=0.0, lr=3e-3, warmup_steps=10, keep_checkpoints=1)
    model, tok = load_checkpoint(train(cfg, progress=False).last_checkpoint)
    assert model.config.data_format == "rbs"
    res = evaluate(model, tok, load_items(data), progress=False)
    assert [r.n_thoughts for r in res.items] == [6] * 8 and [r.n_generated for r in res.items] == [1] * 8
    assert res.accuracy == 1.0, [r.text for r in res.items]


def test_every_evaluation_logs_the_search_summary_of_the_model_it_evaluated(tmp_path, official_path):
    """search_items: each record that evaluates carries analyze.search_summary of the model at that point (the
    last one equals a summary recomputed on the saved checkpoint); a mode without thoughts logs none."""
    from probe.analyses.analyze import search_summary

    cfg = graph_config(tmp_path, val_data=str(official_path), val_size=6, search_items=3, num_epochs=2)
    result = train(cfg, progress=False, search=search_summary)
    assert all("search" in h for h in result.history)
    last = result.history[-1]["search"]
    assert last["n"] == 3 and last["readout"] == "emitted" and set(last["frontier_mass"]) == {"1", "2"}
    model, tok = load_checkpoint(result.last_checkpoint)
    again = search_summary(model, tok, load_items(official_path)[:3]).as_dict()
    assert again.keys() == last.keys()
    for key in ("frontier_mass", "optimal_mass", "frontier_share"):
        assert again[key] == pytest.approx(last[key], rel=1e-4, abs=1e-6), key
    assert again["attention_gap"]["2"]["0"] == pytest.approx(last["attention_gap"]["2"]["0"], rel=1e-4, abs=1e-7)
    none = train(graph_config(tmp_path, out_dir=str(tmp_path / "nt"), mode="no_thoughts", val_data=str(official_path),
                              val_size=2, search_items=3, num_epochs=1), progress=False, search=search_summary)
    assert "val_accuracy" in none.history[-1] and "search" not in none.history[-1]
    with pytest.raises(ConfigError, match="search_items must be >= 0"):
        graph_config(tmp_path, search_items=-1)


def test_training_imports_no_analysis_and_asks_for_the_search_it_logs(tmp_path):
    """train() takes the search summary as a callback (the CLI passes analyze.search_summary): the training modules
    import no analysis, and a run that asks for the summary without the callback is refused before any work."""
    import subprocess
    import sys

    code = ("import sys, probe.train.loop\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('plotly', 'streamlit') or m == 'probe.analyses.analyze'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout
    assert out.strip() == "[]"
    with pytest.raises(ConfigError, match="search_items=3 logs the search summary"):
        train(tiny_config(tmp_path, search_items=3), progress=False)
    assert not (tmp_path / "run").exists()
