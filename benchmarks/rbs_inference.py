"""Batched latent inference on a model in RbS's format against our own format, and batched against one at a time,
measured side by side in one run.

    python benchmarks/rbs_inference.py [--size rbs-768] [--n 300] [--batch 32] [--k gold] [--threads 2] [--repeat 2]

Two random GPT-2s of the same shape (default: "Reasoning by Superposition"'s, 2 layers, d768, 8 heads): one in
RbS's format (its 40-token vocabulary, data format "rbs": "<eos> s t | ... [Q] a b [R] root", thoughts from the
root, one answer token after "[A]"), one in ours (the word tokenizer, data format "graph", answers up to the
official 128 tokens, here capped at --max-new-tokens; and again at one token, so that only the latent loop and
the prompts differ). Both run `probe.model.evaluate.evaluate` on the same
validation items at the same k. Prints items/s and latent positions/s of each and the ratio (goal: RbS's format at
least as fast as ours, ratio >= 1.0 within the machine's noise), then evaluates RbS's model one item at a time and
says whether every prediction and every thought is the same as batched (they must be: the batch never changes an
answer).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from capture_throughput import DATA, side_by_side  # noqa: E402
from sizes import random_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="rbs-768")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--k", default="gold", help="Thoughts: a number, or 'gold' (each item's hop count).")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    from probe.data.prosqa import load_items, persons_and_concepts
    from probe.model.evaluate import evaluate
    from probe.model.coconut import CoconutConfig
    from probe.model.tokenizer import build_rbs_tokenizer, build_word_tokenizer, special_tokens

    items = load_items(DATA)[: a.n]
    k = a.k if a.k == "gold" else int(a.k)
    rbs_tok = build_rbs_tokenizer()
    rbs = random_model(a.size, rbs_tok, CoconutConfig.from_special(
        special_tokens(rbs_tok), data_format="rbs", supervision="optimal", max_latent_stage=4))
    words = build_word_tokenizer([n for group in persons_and_concepts(items) for n in group])
    ours = random_model(a.size, words, CoconutConfig.from_special(
        special_tokens(words), data_format="graph", supervision="optimal"))

    def run(model, tok, batch: int = a.batch, max_new_tokens: int = a.max_new_tokens):
        return evaluate(model, tok, items, k=k, batch_size=batch, max_new_tokens=max_new_tokens, progress=False)

    run(rbs, rbs_tok), run(ours, words)  # warm-up
    t = side_by_side({"rbs": lambda: run(rbs, rbs_tok), "ours": lambda: run(ours, words),
                      "ours_one": lambda: run(ours, words, max_new_tokens=1)}, a.repeat)
    r_rbs, r_ours = run(rbs, rbs_tok), run(ours, words)
    n = len(items)
    thoughts = sum(r.n_thoughts for r in r_rbs.items)
    print(f"{a.size} ({rbs.base.config.n_layer} layers, d={rbs.d_model}), {a.threads} threads, {n} items, k={k}, "
          f"batch {a.batch}")
    print(f"RbS's format: {n / t['rbs']:7.1f} items/s ({thoughts / t['rbs']:7.1f} thoughts/s, "
          f"{r_rbs.mean_generated_tokens:.1f} answer tokens/item) | ours (graph): {n / t['ours']:7.1f} items/s "
          f"({r_ours.mean_generated_tokens:.1f} answer tokens/item) | ratio {t['ours'] / t['rbs']:.2f}x "
          f"(goal >= 1.0)")
    print(f"  the same with one answer token for ours too (the latent loop alone): ours {n / t['ours_one']:7.1f} "
          f"items/s | ratio {t['ours_one'] / t['rbs']:.2f}x (goal >= 1.0)")
    one = run(rbs, rbs_tok, batch=1)
    same = sum(x.prediction == y.prediction for x, y in zip(one.items, r_rbs.items))
    gap = max(float((x.thoughts - y.thoughts).abs().max()) if x.n_thoughts else 0.0
              for x, y in zip(one.items, r_rbs.items))
    print(f"one at a time vs batch {a.batch}: predictions identical on {same}/{n} items, thoughts within {gap:.1e}")


if __name__ == "__main__":
    main()
