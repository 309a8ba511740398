"""Training under torchrun on the CPU (gloo, 2 processes): DistributedDataParallel gives the single-process step,
resumes exactly, and a failing rank stops the run without a half-written checkpoint."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from probe.analyses.analyze import search_summary
from probe.train.loop import train
from probe.train.config import TrainConfig

pytestmark = pytest.mark.xdist_group("torchrun")  # pytest -n 2: one torchrun job at a time

HERE = Path(__file__).parent


def config(tmp_path: Path, official_path: Path, **kw) -> Path:
    """A tiny run without dropout (each rank would draw its own masks), as a YAML file."""
    cfg = dict(name="ddp", model={"model_type": "gpt2", "n_layer": 1, "n_embd": 32, "n_head": 2, "resid_pdrop": 0.0,
                                  "embd_pdrop": 0.0, "attn_pdrop": 0.0},
               train_size=8, batch_size=8, epochs_per_stage=1, max_latent_stage=1, num_epochs=1, lr=1e-4, seed=1,
               val_data=str(official_path), val_size=5)
    cfg.update(kw)
    path = tmp_path / "cfg.yaml"
    import yaml

    path.write_text(yaml.safe_dump(cfg))
    return path


def torchrun(args: list[str], n: int = 2, module: str = "probe.cli", timeout: int = 300,
             **env: str) -> subprocess.CompletedProcess:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}", f"--master_port={port}",
           "-m", module, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{HERE}{os.pathsep}{HERE.parent}", **env}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=HERE.parent)


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt / "model.safetensors"))


@pytest.mark.parametrize("mode,accumulation", [("ddp", 1), ("fsdp", 1), ("ddp", 2), ("fsdp", 2)])
def test_one_ddp_step_is_the_single_process_step(tmp_path, official_path, mode, accumulation):
    """One optimizer step on one global batch of 8 rows: 2 ranks of 4 rows each, gradients averaged, give the
    gradient norm and the weights of one process on all 8 rows (AdamW's first step is sign-like, so the weight
    gap scales with lr: at the default 1e-4 it is about 2e-7, and the norm pins the gradient's scale, which
    AdamW would not show), the same loss, and the same validation accuracy from a split evaluation. With FSDP
    (parameters sharded over the ranks) the checkpoint, gathered on rank 0, holds the same weights and optimizer
    state as the single process's. With two micro-batches per step the ranks average their gradients once. The
    search summary logged at the evaluation is the single process's."""
    cfg = config(tmp_path, official_path, distributed=mode, gradient_accumulation_steps=accumulation,
                 train_size=8 * accumulation, search_items=3)
    single = train(TrainConfig.from_yaml(cfg, out_dir=str(tmp_path / "one"), distributed="ddp"), progress=False,
                   search=search_summary)
    r = torchrun(["train", "--config", str(cfg), "--out-dir", str(tmp_path / "two")])
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("last checkpoint:") == 1  # rank 0 reports
    a, b = weights(single.last_checkpoint), weights(tmp_path / "two" / "epoch-001")
    assert a.keys() == b.keys()
    gap = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert gap < 1e-6, gap
    two = json.loads((tmp_path / "two" / "epoch-001" / "trainer_state.json").read_text())["history"][0]
    one = single.history[0]
    assert two["train_loss"] == pytest.approx(one["train_loss"], abs=1e-6)
    assert two["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-6)  # the averaged gradient is the same
    assert two["val_accuracy"] == one["val_accuracy"] and two["val_mean_thoughts"] == one["val_mean_thoughts"]
    assert two["step"] == one["step"] == 1
    # the search summary, run by every rank on the gathered model (FSDP gathers each layer inside the forwards)
    assert two["search"]["frontier_mass"] == pytest.approx(one["search"]["frontier_mass"], abs=1e-6)
    assert two["search"]["attention_gap"]["1"]["0"] == pytest.approx(one["search"]["attention_gap"]["1"]["0"],
                                                                    abs=1e-6)
    from probe.train.state import read_optimizer

    oa, ob = read_optimizer(single.last_checkpoint), read_optimizer(tmp_path / "two" / "epoch-001")
    assert sorted(oa["state"]) == sorted(ob["state"]) and oa["param_groups"] == ob["param_groups"]
    for i, st in oa["state"].items():
        for k, v in st.items():
            torch.testing.assert_close(ob["state"][i][k], v, atol=1e-6, rtol=0)


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_a_resumed_ddp_run_continues_exactly(tmp_path, official_path, mode):
    cfg = config(tmp_path, official_path, train_size=16, num_epochs=2, lr=3e-3, distributed=mode)
    r = torchrun(["train", "--config", str(cfg), "--out-dir", str(tmp_path / "straight")])
    assert r.returncode == 0, r.stderr[-3000:]
    r = torchrun(["train", "--config", str(cfg), "--out-dir", str(tmp_path / "cut"), "--set", "num_epochs=1"])
    assert r.returncode == 0, r.stderr[-3000:]
    r = torchrun(["train", "--config", str(cfg), "--out-dir", str(tmp_path / "cut"), "--resume"])
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = weights(tmp_path / "straight" / "epoch-002"), weights(tmp_path / "cut" / "epoch-002")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    hist = lambda run: [h["train_loss"] for h in json.loads(  # noqa: E731
        (tmp_path / run / "epoch-002" / "trainer_state.json").read_text())["history"]]
    assert hist("straight") == hist("cut")


def test_a_failing_rank_stops_the_run_with_one_error(tmp_path, official_path):
    """Rank 1 raises in its second step: the run stops (torchrun stops rank 0, which was waiting for it), one
    error line names the rank and the error, the traceback is kept in the run directory, and rank 0's broken
    collective adds no second error. Then rank 0 is stopped by SIGTERM while it writes a checkpoint (as torchrun
    stops the ranks of a failed run): nothing half-written is left."""
    cfg = config(tmp_path, official_path, train_size=32)
    out = tmp_path / "fail"
    r = torchrun(["train", "--config", str(cfg), "--out-dir", str(out)], module="torchrun_faults", FAULT="step")
    assert r.returncode != 0
    errors = [line for line in r.stderr.splitlines() if "error: rank" in line]
    assert len(errors) == 1 and errors[0].split("error: ", 1)[1].startswith(
        "rank 1 of 2: RuntimeError: injected failure on rank 1; the run stops"), r.stderr[-3000:]
    assert "last complete checkpoint: none" in errors[0]
    assert r.stderr.count("injected failure on rank 1") == 1  # no rank printed its traceback
    assert "injected failure on rank 1" in (out / "error-rank1.txt").read_text()
    assert not list(out.glob("epoch-*"))
    stopped = tmp_path / "stopped"
    r = torchrun(["train", "--config", str(cfg), "--out-dir", str(stopped)], module="torchrun_faults", FAULT="save")
    assert r.returncode != 0
    assert sorted(p.name for p in stopped.iterdir() if "epoch" in p.name) == [], sorted(stopped.iterdir())
