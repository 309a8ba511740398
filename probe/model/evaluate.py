"""Accuracy by the official rule: greedy decoding after k thoughts, answer after the last '#'."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Sequence

import torch
from tqdm.auto import tqdm

from probe.data.prosqa import ProsQAItem
from probe.data.render import DataFormat, answer_of, gold_answer, node_names, render_prompt, tokenize_item
from probe.model.coconut import CoconutModel, ThoughtEdit
from probe.model.rows import rows_are

MAX_NEW_TOKENS = 128  # the official ProsQA setting


def extract_answer(text: str, fmt: DataFormat = "sentences") -> str:
    """The official prediction: the text after the last '#' (RbS's layout: after the last "[A]"), commas removed,
    stripped (`probe.data.render.answer_of`)."""
    return answer_of(text, fmt)


def prediction(tokenizer, prompt: Sequence[int], new: Sequence[int], fmt: DataFormat = "sentences") -> str:
    """The official prediction of a continuation: prompt and new tokens decoded together, then extract_answer
    (the format's rule: RbS's reads the one token after "[A]").

    A token the tokenizer does not know (its unk token) stays in the text as that token rather than being
    skipped with the other special tokens, so an answer that holds one can never match a gold answer.
    """
    ids = list(prompt) + list(new)
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None and unk in new:
        special = set(tokenizer.all_special_ids) - {unk}
        return extract_answer(tokenizer.decode([t for t in ids if t not in special], skip_special_tokens=False), fmt)
    return extract_answer(tokenizer.decode(ids, skip_special_tokens=True), fmt)


def _unwritable(names, tokenizer) -> set[str]:
    """The names (each encoded once) that the tokenizer writes with its unk token."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None:
        return set()
    return {n for n in set(names) if unk in tokenizer.encode(n, add_special_tokens=False)}


def unknown_names(item: ProsQAItem, tokenizer, fmt: DataFormat = "sentences") -> list[str]:
    """The item's node names (as the format writes them) that the tokenizer cannot write (they map to its unk
    token): readings of those nodes cannot tell them apart."""
    names = node_names(item, fmt)
    bad = _unwritable(names, tokenizer)
    return [n for n in names if n in bad]


def is_correct(pred: str, item: ProsQAItem, fmt: DataFormat = "sentences") -> bool:
    """Whether a prediction is the item's answer by the format's rule: the official answer sentence (commas
    removed, stripped), or in RbS's layout the target's index (`probe.data.render.gold_answer`)."""
    return pred == gold_answer(item, fmt)


@dataclass(frozen=True)
class ItemResult:
    index: int
    prediction: str
    correct: bool
    n_thoughts: int
    n_generated: int
    text: str  # the generated continuation, special tokens skipped
    prompt: str  # the prompt fed, as the tokenizer's tokens (special tokens kept): "<eos> 0 1 | ... <|latent|> [A]"
    prompt_ids: tuple[int, ...] = field(repr=False)  # [prompt_len] its token ids
    thoughts: torch.Tensor = field(repr=False)  # [n_thoughts, d_model] the thoughts fed back
    unknown_names: tuple[str, ...] = ()  # node names the tokenizer cannot write (unknown_names)


@dataclass(frozen=True)
class EvalResult:
    accuracy: float
    n: int
    mean_generated_tokens: float
    items: list[ItemResult] = field(repr=False)

    def to_json(self) -> dict:
        """The `probe eval --json` report: accuracy, and per item the prompt fed (its tokens' text), the prediction
        and whether it is correct."""
        return {
            "accuracy": self.accuracy,
            "n": self.n,
            "mean_generated_tokens": self.mean_generated_tokens,
            "items": [{"index": r.index, "prompt": r.prompt, "prediction": r.prediction, "correct": r.correct,
                       **({"unknown_names": list(r.unknown_names)} if r.unknown_names else {})} for r in self.items],
        }


GOLD = "gold"  # k: as many thoughts as the item has reasoning steps (RbS evaluates this way)


def thoughts_for(model: CoconutModel, item: ProsQAItem, k: int | str | None, stage: int | None = None) -> int:
    """Thoughts to force for an item: k, the item's gold number of steps (k="gold", times c_thought),
    or the official rule at a stage (k None; default: the last stage)."""
    spec = model.config.stage_spec
    if k is None:
        return spec.inference_thoughts(spec.max_latent_stage if stage is None else stage, len(item.steps))
    if k == GOLD:
        if not spec.markers:
            raise ValueError(f"a {spec.mode} checkpoint has no latent mode; k='gold' needs thoughts")
        return len(item.steps) * spec.c_thought
    if isinstance(k, str):
        raise ValueError(f"k must be an integer or 'gold', got {k!r}")
    k = model.config.thought_count(k)
    if not spec.markers and k:
        raise ValueError(f"a {spec.mode} checkpoint has no latent mode; k must be 0, got {k}")
    return k


def evaluate(
    model: CoconutModel,
    tokenizer,
    items: Sequence[ProsQAItem],
    *, k: int | str | None = None,
    stage: int | None = None,
    batch_size: int = 32,
    max_new_tokens: int = MAX_NEW_TOKENS,
    progress: bool = True,
    prompts: Sequence[Sequence[int]] | None = None,
    edit: ThoughtEdit | None = None,
) -> EvalResult:
    """Greedy-decode every item after its thoughts and score it by the official rule.

    k: thoughts forced for every item, "gold" for each item's number of steps, or None for the
    official rule at `stage`. prompts, if given, replace the rendered ones (one per item; k and stage are then ignored);
    edit (rows indexed like items) intervenes on the thoughts.
    """
    if not items:
        raise ValueError("evaluate needs at least one item")
    cfg = model.config
    if prompts is not None:
        if len(prompts) != len(items):
            raise ValueError(f"got {len(prompts)} prompts for {len(items)} items")
        prompts = [list(p) for p in prompts]
        ks = [p.count(cfg.latent_id) for p in prompts]
    else:
        prompts, ks = [], []
        for it in items:
            ks.append(thoughts_for(model, it, k, stage))
            prompts.append(render_prompt(tokenize_item(it, tokenizer, cfg.data_format), ks[-1], cfg.stage_spec,
                                         cfg.special))
    model.check_positions([len(p) for p in prompts], ks)
    # Batch items of equal thought count and similar length together.
    groups: dict[int, list[int]] = defaultdict(list)
    for i in sorted(range(len(items)), key=lambda i: len(prompts[i])):
        groups[ks[i]].append(i)
    batches = [g[j : j + batch_size] for g in groups.values() for j in range(0, len(g), batch_size)]
    results: dict[int, ItemResult] = {}
    names = [node_names(it, cfg.data_format) for it in items]
    unwritable = _unwritable((n for ns in names for n in ns), tokenizer)  # each name once, not per item
    model.eval()
    for batch in tqdm(batches, desc="eval", unit="batch", disable=not progress):
        with rows_are(batch):
            gen = model.generate([prompts[i] for i in batch], max_new_tokens=max_new_tokens,
                                 edit=None if edit is None else edit.rows(batch))
        for row, (i, new) in enumerate(zip(batch, gen.tokens)):
            pred = prediction(tokenizer, prompts[i], new, cfg.data_format)
            results[i] = ItemResult(
                index=i, prediction=pred, correct=is_correct(pred, items[i], cfg.data_format),
                n_thoughts=ks[i], n_generated=len(new), text=tokenizer.decode(new, skip_special_tokens=True),
                prompt=tokenizer.decode(prompts[i], skip_special_tokens=False), prompt_ids=tuple(prompts[i]),
                thoughts=gen.thoughts[row, : ks[i]].float().cpu(),
                unknown_names=tuple(n for n in names[i] if n in unwritable),
            )
    ordered = [results[i] for i in range(len(items))]
    return EvalResult(
        accuracy=sum(r.correct for r in ordered) / len(ordered),
        n=len(ordered),
        mean_generated_tokens=sum(r.n_generated for r in ordered) / len(ordered),
        items=ordered,
    )
