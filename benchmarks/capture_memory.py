"""Peak memory of capturing N items to disk (streamed) and in memory, in a fresh process each.

    python benchmarks/capture_memory.py [--n 64] [--factor 4]

Prints the peak resident set of each run and the ratios: streaming should stay flat as the
data set grows, an in-memory capture should grow with it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

RUN = r"""
import json, resource, sys, tempfile, torch
from transformers import GPT2Config, GPT2LMHeadModel
from probe.capture.trace import capture, capture_to_disk
from probe.data.generate import CONCEPT_NAMES, PERSON_NAMES, generate_items
from probe.model.coconut import CoconutConfig, CoconutModel
from probe.model.tokenizer import add_latent_tokens, build_word_tokenizer
n, streamed, shard = int(sys.argv[1]), sys.argv[2] == "disk", int(sys.argv[3])
torch.manual_seed(0)
tok = build_word_tokenizer([*PERSON_NAMES, *CONCEPT_NAMES]); sp = add_latent_tokens(tok)
base = GPT2LMHeadModel(GPT2Config(n_layer=4, n_embd=256, n_head=4, vocab_size=len(tok), n_positions=512)).eval()
model = CoconutModel(base, CoconutConfig.from_special(sp, data_format="edges"))
items = generate_items(n, seed=0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if streamed:
    with tempfile.TemporaryDirectory() as d:
        store = capture_to_disk(model, tok, items, d + "/t", k=6, batch_size=8, shard_size=shard, progress=False)
        stored = sum(f.stat().st_size for f in store.path.iterdir())
else:
    tr = capture(model, tok, items, k=6, batch_size=8, progress=False)
    stored = sum(t.numel() * t.element_size() for t in tr.to_tensors().values())
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"before_mb": before / 1024, "peak_mb": after / 1024, "stored_mb": stored / 2**20}))
"""


def peaks(runs: list[tuple[int, str, int]]) -> list[dict]:
    """Peak memory of each (n, "disk" | "memory", shard) run, each in its own process, all at once.

    Every process has one thread: running them side by side changes their times, not their peaks.
    """
    # Large blocks straight from mmap, so that freed tensors leave the resident set and the peak
    # measures live memory rather than the allocator's free lists.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", RUN, str(n), how, str(shard)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for n, how, shard in runs]
    results = []
    for (n, how, _), p in zip(runs, procs):
        out, err = p.communicate()
        if p.returncode:
            raise RuntimeError(f"the {how} capture of {n} items failed:\n{err[-2000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=96)
    ap.add_argument("--factor", type=int, default=4)
    ap.add_argument("--shard", type=int, default=32)
    a = ap.parse_args()
    runs = [(n, how, a.shard) for how in ("disk", "memory") for n in (a.n, a.n * a.factor)]
    rows = {}
    for (n, how, _), r in zip(runs, peaks(runs)):
        rows[(how, n)] = r
        print(f"{how:6s} n={n:5d}: peak {r['peak_mb']:7.1f} MB (after imports and model {r['before_mb']:7.1f} MB), "
              f"trace {r['stored_mb']:.1f} MB")
    for how in ("disk", "memory"):
        small, big = rows[(how, a.n)], rows[(how, a.n * a.factor)]
        grow_small, grow_big = small["peak_mb"] - small["before_mb"], big["peak_mb"] - big["before_mb"]
        print(f"{how}: capture growth {grow_small:.1f} MB -> {grow_big:.1f} MB for {a.factor}x the items "
              f"(ratio {grow_big / max(grow_small, 1e-9):.2f})")


if __name__ == "__main__":
    main()
