"""Training tokens/s by model size: the curriculum's last stage against its stage 0, side by side.

    python benchmarks/train_throughput.py [--sizes tiny,default,gpt2-124m] [--batch 16] [--steps 4]
                                          [--device cpu] [--threads 2]

Each size (benchmarks/sizes.py) is a random GPT-2 of that shape with the default model's tokenizer and
Coconut config, trained as `probe train` trains (forward with labels, backward, AdamW step) on the
validation items rendered by the training code at stage 0 (every language step, one pass) and at the
last stage (every step a continuous thought: one pass per thought over the KV cache, plus the rest).
Tokens are the unpadded sequence tokens. Prints tokens/s of both stages and their ratio, the price of
the sequential thought passes; on cuda, also the peak GPU memory.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "prosqa_valid.json"


def tokens_per_s(model, batches: list[dict[str, torch.Tensor]], steps: int, device: str) -> float:
    """Tokens/s of `steps` training steps (after one warm-up step) cycling over the batches."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step(batch):
        out = model(**batch)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return int(batch["attention_mask"].sum())

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
    ap.add_argument("--ckpt", type=Path, default=ROOT / "checkpoints" / "prosqa-coconut")
    ap.add_argument("--sizes", default="tiny,default,gpt2-124m")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    sizes = a.sizes.split(",")
    if bad := [s for s in sizes if s not in SIZES]:
        ap.error(f"--sizes: unknown {bad}; expected some of {sorted(SIZES)}")

    from probe.data.prosqa import load_items
    from probe.data.render import tokenize_item
    from probe.model.checkpoint import load_checkpoint
    from probe.train import TrainConfig, collate, epoch_sequences

    shipped, tok = load_checkpoint(a.ckpt)
    config = shipped.config
    del shipped
    cfg = TrainConfig(name="bench", data_format=config.data_format, max_latent_stage=config.max_latent_stage,
                      c_thought=config.c_thought, pad_latent_to_max=config.pad_latent_to_max)
    tokenized = [tokenize_item(it, tok, cfg.data_format) for it in load_items(DATA)[: a.batch * a.steps]]
    special = config.special
    stages = (0, cfg.max_latent_stage)
    batches = {}
    for stage in stages:
        seqs = epoch_sequences(tokenized, stage, cfg, special, random.Random(0))
        batches[stage] = [{k: v.to(a.device) for k, v in collate(seqs[i : i + a.batch], special.pad_id,
                                                                  special.latent_id).items()}
                          for i in range(0, len(seqs), a.batch)]
    k = max(int((b["input_ids"] == special.latent_id).sum(-1).max()) for b in batches[stages[1]])
    print(f"training on {a.device}, {a.threads} threads, batch {a.batch}, {a.steps} timed steps; stage 0: every "
          f"language step; stage {stages[1]}: {k} continuous thoughts")
    for size in sizes:
        model = random_model(size, tok, config).to(a.device)
        n_params = sum(p.numel() for p in model.parameters()) / 1e6
        rate = {}
        for stage in stages:
            if a.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            rate[stage] = tokens_per_s(model, batches[stage], a.steps, a.device)
        mem = f" | peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" \
            if a.device.startswith("cuda") else ""
        l, d, _h = SIZES[size]
        print(f"{size:>9} ({l} x {d}, {n_params:6.1f}M params): stage 0 {rate[0]:9.0f} tokens/s | stage {stages[1]} "
              f"{rate[stages[1]]:9.0f} tokens/s | ratio {rate[0] / rate[stages[1]]:4.1f}x{mem}")
        del model


if __name__ == "__main__":
    main()
