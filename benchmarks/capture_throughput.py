"""Capture throughput and hook overhead, measured side by side in one run.

    python benchmarks/capture_throughput.py [--ckpt checkpoints/prosqa-coconut] [--n 64] [--batch 32]
                                            [--size default|gpt2-124m] [--device cpu] [--threads 2] [--repeat 2]
                                            [--vocab 50257]

1. `probe capture` (batched, KV-cached, hooks on every layer) against a batch-1 reference loop written
   the way the official implementation runs: one item at a time, a forward pass per latent over the KV
   cache with output_hidden_states, then greedy generation that recomputes the whole sequence for
   every new token (the official `generate`). Both read every layer's residual at every thought and
   produce the answer, on the same checkpoint and items. Goal: >= 20x on the CPU.
2. Hook overhead: `capture` with every hook against the same `capture` with none registered.
   Goal: <= 1.2x.

--size gpt2-124m replaces the checkpoint by a random GPT-2 of GPT-2-small's shape (12 x 768) with the
default model's tokenizer (--vocab 50257: with GPT-2's 50257-row embedding and unembedding).
Prints items/s of each and the ratios.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "prosqa_valid.json"


@torch.no_grad()
def official_style(model, tok, item, k: int, max_new_tokens: int) -> tuple[list[torch.Tensor], list[int]]:
    """One item as the official Coconut forward + generate run it: every layer's hidden state at the position
    emitting each thought ([k] of [n_layers + 1, d]), and the greedy answer tokens."""
    from probe.data.render import render_prompt, tokenize_item

    cfg = model.config
    base = model.base
    ids = torch.tensor([render_prompt(tokenize_item(item, tok, cfg.data_format), k, cfg.stage_spec, cfg.special)],
                       device=model.device)
    embeds = base.get_input_embeddings()(ids)
    latents = (ids[0] == cfg.latent_id).nonzero().flatten().tolist()
    cache, start, thoughts = None, 0, []
    for j, pos in enumerate(latents + [ids.shape[1]]):
        # a pass over [start, pos): up to (not including) the next latent, or to the end after the last
        out = base(inputs_embeds=embeds[:, start:pos], past_key_values=cache, use_cache=True,
                   output_hidden_states=True, position_ids=torch.arange(start, pos, device=ids.device)[None])
        cache, start = out.past_key_values, pos
        if j < len(latents):
            hidden = torch.stack([h[0, -1] for h in out.hidden_states])  # [n_layers + 1, d] at pos - 1
            thoughts.append(hidden)
            embeds = embeds.clone()
            embeds[0, pos] = hidden[-1]  # the official thought: hidden_states[-1] (GPT-2: after ln_f)
    answer = []
    seq = embeds
    logits = out.logits[0, -1]
    for step in range(max_new_tokens):
        nxt = int(logits.argmax())
        if step > 0 and nxt == cfg.eos_id:
            break
        answer.append(nxt)
        seq = torch.cat([seq, base.get_input_embeddings()(torch.tensor([[nxt]], device=ids.device))], dim=1)
        logits = base(inputs_embeds=seq).logits[0, -1]  # the whole sequence again, no cache (as the official)
    return thoughts, answer


def side_by_side(fns: dict, repeat: int) -> dict:
    """Best seconds of each function over `repeat` rounds, the functions taking turns within each round
    (so that a slow spell of a shared machine falls on all of them, not on one)."""
    best = {name: float("inf") for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", type=Path, default=ROOT / "checkpoints" / "prosqa-coconut")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", choices=("default", "gpt2-124m"), default="default")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=None, help="With --size gpt2-124m: vocabulary rows (50257: GPT-2's).")
    ap.add_argument("--repeat", type=int, default=2, help="Rounds; each measurement is the best of its rounds.")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    from probe.capture.trace import capture
    from probe.model.architecture import architecture
    from probe.model.hook_names import FINAL, RESID, act_name, hook_names
    from probe.data.prosqa import load_items
    from probe.model.checkpoint import load_checkpoint
    from sizes import random_model

    model, tok = load_checkpoint(a.ckpt, device=a.device)
    if a.size == "gpt2-124m":
        model = random_model("gpt2-124m", tok, model.config, a.vocab).to(a.device)
    model.eval()
    items = load_items(DATA)[: a.n]
    k = model.config.default_thoughts
    n_layers = architecture(model).n_layers
    resid = [act_name(RESID, l) for l in range(n_layers)] + [FINAL]

    def ours():  # every layer's residual and the answer, from one batched pass
        capture(model, tok, items, k=k, names=resid, batch_size=a.batch, max_new_tokens=a.max_new_tokens,
                progress=False)

    def reference(max_new_tokens: int = a.max_new_tokens):
        for it in items:
            official_style(model, tok, it, k, max_new_tokens)

    def ours_thoughts_only():
        capture(model, tok, items, k=k, names=resid, batch_size=a.batch, progress=False)

    def all_hooks():
        capture(model, tok, items, k=k, names=hook_names(n_layers), batch_size=a.batch, progress=False)

    def no_hooks():  # the same batched capture, with no hook registered
        capture(model, tok, items, k=k, names=[], batch_size=a.batch, progress=False)

    ours()  # warm-up: allocator, kernels
    # the reference computes what ours does: the same answers and the same last-layer thoughts
    check = items[:4]
    tr = capture(model, tok, check, k=k, names=resid, max_new_tokens=a.max_new_tokens, progress=False)
    same, gap = 0, 0.0
    for b, (it, got) in enumerate(zip(check, tr.answers())):
        thoughts, answer = official_style(model, tok, it, k, a.max_new_tokens)
        ref = torch.stack(thoughts).float().cpu()  # [k, n_layers + 1, d]: embeddings, blocks 0..L-2, final
        ours_ = torch.stack([tr[n][b, :k].float() for n in resid[:-2] + resid[-1:]], dim=1)
        gap = max(gap, float((ref[:, 1:] - ours_).abs().max()))
        same += got == answer
    t = side_by_side({"ref": reference, "ours": ours, "ref_latent": lambda: reference(0),
                      "ours_latent": ours_thoughts_only}, a.repeat)
    t_ref, t_ours, t_ref_latent, t_ours_latent = t["ref"], t["ours"], t["ref_latent"], t["ours_latent"]
    t = side_by_side({"all": all_hooks, "none": no_hooks}, 3 * a.repeat)
    t_all, t_none = t["all"], t["none"]
    n = len(items)
    print(f"reference check on {len(check)} items: hidden states within {gap:.1e} of the capture, "
          f"answers (token for token) agree on {same}/{len(check)}")
    print(f"{a.size} model ({n_layers} layers, d={model.d_model}) on {a.device}, {a.threads} threads, {n} items, "
          f"k={k}, batch {a.batch}, answers up to {a.max_new_tokens} tokens")
    print(f"1. capture of every layer's residual + answer: probe capture {n / t_ours:8.1f} items/s | "
          f"official-style batch-1 loop {n / t_ref:8.1f} items/s | ratio {t_ref / t_ours:6.1f}x (goal >= 20x)")
    ms = lambda t: 1000 * t / n  # noqa: E731
    print(f"   without answers: probe capture {ms(t_ours_latent):.2f} ms/item | batch-1 loop {ms(t_ref_latent):.2f} "
          f"ms/item | ratio {t_ref_latent / t_ours_latent:.1f}x; the batch-1 loop's answers (whole sequence per "
          f"token) add {ms(t_ref - t_ref_latent):.2f} ms/item, probe capture's (KV cache, batched) "
          f"{ms(max(t_ours - t_ours_latent, 0)):.2f}")
    print(f"2. hook overhead: every hook ({len(hook_names(n_layers))}) {n / t_all:8.1f} items/s | no hooks "
          f"{n / t_none:8.1f} items/s | ratio {t_all / t_none:5.2f}x (goal <= 1.2x)")


if __name__ == "__main__":
    main()
