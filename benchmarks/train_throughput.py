"""Training tokens/s by model size: the curriculum's last stage against its stage 0, side by side.

    python benchmarks/train_throughput.py [--config configs/rbs/coconut.yaml] [--sizes tiny,rbs,gpt2-124m]
                                          [--batch 16] [--steps 4] [--device cpu] [--threads 2]
                                          [--precision float32]

Each size (benchmarks/sizes.py) is a random GPT-2 of that shape, trained as `probe train` trains a
config (default: the default model's recipe): batches built by the training stream from the validation
items (the config's format, supervision and stages), `train.sequence_loss` under the config's
precision, backward, AdamW step. Stage 0 has no thought (one pass); the last stage has every step as a
continuous thought (one pass per thought over the KV cache, plus the rest). Tokens are the unpadded
sequence positions, thoughts included. Prints tokens/s of both stages, their ratio (the price of the
sequential thought passes) and the achieved TFLOP/s (6N + 12LdT per token); on cuda, also the peak
GPU memory.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "prosqa_valid.json"


def tokens_per_s(model, batches: list[dict], steps: int, device: str, autocast) -> float:
    """Tokens/s of `steps` training steps (after one warm-up step) cycling over the batches."""
    from probe.train.loop import sequence_loss

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step(batch):
        with autocast():
            loss = sequence_loss(model, {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)})
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return batch["n_tokens"]

    step(batches[0])
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    t, n = time.perf_counter(), 0
    for i in range(steps):
        n += step(batches[i % len(batches)])
    sync()
    return n / (time.perf_counter() - t)


def main() -> None:
    from sizes import SIZES, random_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "rbs" / "coconut.yaml")
    ap.add_argument("--sizes", default="tiny,rbs,gpt2-124m")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", choices=("float32", "bfloat16"), default="float32")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    sizes = a.sizes.split(",")
    if bad := [s for s in sizes if s not in SIZES]:
        ap.error(f"--sizes: unknown {bad}; expected some of {sorted(SIZES)}")

    from functools import partial

    from probe.train.loop import TrainConfig, _autocast, _setup, _stream, flops_per_token

    with tempfile.TemporaryDirectory() as tmp:  # the run's tokenizer and stream; each size's model replaces its own
        cfg = TrainConfig.from_yaml(a.config, train_data=str(DATA), train_size=a.batch * a.steps, batch_size=a.batch,
                                    num_workers=0, val_data=None, out_dir=tmp, precision=a.precision, max_minutes=None,
                                    uniform_prob=0.0, model={"model_type": "gpt2", "n_layer": 1, "n_embd": 8,
                                                             "n_head": 1, "n_positions": 512})
        run = _setup(cfg, False, "cpu")
    stream = _stream(run, run.state.plan)
    last = cfg.num_epochs - 1
    stages = {0: 0, cfg.stage(last): last}  # stage -> an epoch at that stage
    batches = {s: [stream.batch(e, b) for b in range(stream.spec.batches_per_epoch)] for s, e in stages.items()}
    special = run.model.config.special
    k = max(int((b["input_ids"] == special.latent_id).sum(-1).max()) for b in batches[max(stages)])
    print(f"training {a.config.name} ({cfg.data_format} format, supervision {cfg.supervision}) on {a.device}, "
          f"{a.threads} threads, {a.precision}, batch {a.batch}, {a.steps} timed steps; stage 0: no thought; "
          f"stage {max(stages)}: {k} continuous thoughts")
    autocast = partial(_autocast, cfg, a.device)
    for size in sizes:
        model = random_model(size, run.tok, run.model.config).to(a.device)
        n_params = sum(p.numel() for p in model.parameters()) / 1e6
        rate, tflops = {}, {}
        for stage in stages:
            if a.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            rate[stage] = tokens_per_s(model, batches[stage], a.steps, a.device, autocast)
            context = sum(b["n_tokens"] for b in batches[stage]) / sum(len(b["input_ids"]) for b in batches[stage])
            tflops[stage] = flops_per_token(model, context) * rate[stage] / 1e12
        mem = f" | peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" \
            if a.device.startswith("cuda") else ""
        l, d, _h = SIZES[size]
        s0, s1 = min(stages), max(stages)
        print(f"{size:>9} ({l} x {d}, {n_params:6.1f}M params): stage {s0} {rate[s0]:9.0f} tokens/s "
              f"({tflops[s0]:.2f} TFLOP/s) | stage {s1} {rate[s1]:9.0f} tokens/s ({tflops[s1]:.2f} TFLOP/s) | "
              f"ratio {rate[s0] / rate[s1]:4.1f}x{mem}")
        del model


if __name__ == "__main__":
    main()
