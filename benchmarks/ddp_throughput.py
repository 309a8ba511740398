"""Training throughput in 1 process and under torchrun with N, measured side by side in one run.

    python benchmarks/ddp_throughput.py [--procs 2] [--distributed ddp|fsdp] [--device cpu|cuda] [--threads 1]
                                        [--items 512] [--batch 32] [--layers 2] [--width 128]

The same run (a random GPT-2 of the given shape, the Coconut curriculum's first stage on generated items,
no evaluation) is trained once by one process and once by `torchrun --nproc_per_node N -m probe.cli train`
(DistributedDataParallel, or FSDP with --distributed fsdp: each rank takes its block of every batch). On the CPU every process gets --threads
threads, so N processes use N times the cores: the ratio shows how far data parallelism scales on this
machine, not a gain at fixed cores. With --device cuda each rank uses its own GPU (N GPUs needed). Prints the
training tokens/s of each (from the runs' own records, setup and evaluation excluded) and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str], threads: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if out.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{out.stderr[-2000:]}")


def tokens_per_s(run_dir: Path) -> float:
    state = json.loads(next(run_dir.glob("epoch-*/trainer_state.json")).read_text())
    tokens = sum(h["tokens_per_s"] * h["seconds"] for h in state["history"])
    return tokens / sum(h["seconds"] for h in state["history"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--distributed", default="ddp", choices=["ddp", "fsdp"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="threads per process (CPU)")
    ap.add_argument("--items", type=int, default=512)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--width", type=int, default=128)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "bench.yaml"
        cfg.write_text(yaml.safe_dump(dict(
            name="bench", model={"model_type": "gpt2", "n_layer": a.layers, "n_embd": a.width, "n_head": 4},
            train_size=a.items, batch_size=a.batch, epochs_per_stage=1, max_latent_stage=1, num_epochs=1, seed=0)))
        train = ["-m", "probe.cli", "train", "--config", str(cfg), "--device", a.device]
        run([sys.executable, *train, "--out-dir", f"{tmp}/one"], a.threads)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        run([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={a.procs}", f"--master_port={port}",
             *train, "--out-dir", f"{tmp}/many", "--set", f"distributed={a.distributed}"], a.threads)
        one, many = tokens_per_s(Path(tmp) / "one"), tokens_per_s(Path(tmp) / "many")
    print(f"training tokens/s on {a.device} ({a.items} items, batch {a.batch}, {a.layers} x {a.width} GPT-2, "
          f"{a.threads} thread(s) per process): 1 process {one:9.0f} | {a.procs} processes ({a.distributed}) {many:9.0f} | "
          f"ratio {many / one:.2f}x")


if __name__ == "__main__":
    main()
