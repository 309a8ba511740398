"""Render ProsQA items to text and to Coconut token sequences for any curriculum stage.

Three text formats:
- "sentences": the official one. Question "Every X is a Y. ... Is Tom a A or B?", steps
  "Every X is a Y.", answer "### Tom is a A.".
- "edges": a compact one with about half the tokens, after "Reasoning by Superposition"
  (Zhu et al. 2025): the question lists "X Y |" per fact, then "Tom ? A B"; a step is "X Y";
  the answer stays "### Tom is a A." so the official evaluation rule still applies.
- "graph": the layout of "Reasoning by Superposition" itself: the facts "X Y |", then the two
  options, then the root ("... X Y | A B ? Tom"); a step is the one node it reaches ("terpus"),
  which is what a thought trained with `supervision: optimal` emits. The answer line is the
  official one.

Token layout (Coconut): question, <|start-latent|>, n x <|latent|>, <|end-latent|>, the
remaining steps, "### " answer, eos. Modes without markers (cot, no_cot, no_thoughts) drop
the start/end tokens, as the official implementation does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from probe.data.prosqa import ProsQAItem, parse_question

DataFormat = Literal["sentences", "edges", "graph"]
DATA_FORMATS: tuple[str, ...] = ("sentences", "edges", "graph")
Mode = Literal["coconut", "pause_as_thought", "cot", "no_cot", "no_thoughts"]
MODES: tuple[str, ...] = ("coconut", "pause_as_thought", "cot", "no_cot", "no_thoughts")
IGNORE_INDEX = -100


def _check_format(fmt: str) -> None:
    if fmt not in DATA_FORMATS:
        raise ValueError(f"unknown data format {fmt!r}; expected one of {DATA_FORMATS}")


def step_prefix(fmt: DataFormat) -> str:
    """The text of a step before its first node name ('Every' in sentences, nothing in edges and graph)."""
    _check_format(fmt)
    return "Every" if fmt == "sentences" else ""


def question_text(item: ProsQAItem, fmt: DataFormat = "sentences") -> str:
    """The question in the given format (the official text for 'sentences')."""
    _check_format(fmt)
    if fmt == "sentences":
        return item.question
    facts, (root, a, b) = parse_question(item.question)
    listed = " ".join(f"{p} {c} |" for p, c in facts)
    return f"{listed} {root} ? {a} {b}" if fmt == "edges" else f"{listed} {a} {b} ? {root}"


def step_texts(item: ProsQAItem, fmt: DataFormat = "sentences") -> list[str]:
    """The reasoning steps in the given format."""
    _check_format(fmt)
    if fmt == "sentences":
        return list(item.steps)
    out = []
    for s in item.steps:
        facts, _ = parse_question(f"{s} Is x a y or z?")
        out.extend(f"{p} {c}" if fmt == "edges" else c for p, c in facts)
    return out


def answer_text(item: ProsQAItem) -> str:
    """The answer line, as the official implementation writes it."""
    return "### " + item.answer


@dataclass(frozen=True)
class TokenizedItem:
    """Token ids of an item's parts; answer ends with eos."""

    question: tuple[int, ...]
    steps: tuple[tuple[int, ...], ...]
    answer: tuple[int, ...]


def tokenize_item(item: ProsQAItem, tokenizer, fmt: DataFormat = "sentences") -> TokenizedItem:
    """Tokenize question + newline, each step + newline, and '### ' answer + eos (the official split)."""
    enc = tokenizer.encode
    return TokenizedItem(
        question=tuple(enc(question_text(item, fmt) + "\n", add_special_tokens=True)),
        steps=tuple(tuple(enc(s + "\n", add_special_tokens=False)) for s in step_texts(item, fmt)),
        answer=tuple(enc(answer_text(item), add_special_tokens=False)) + (tokenizer.eos_token_id,),
    )


@dataclass(frozen=True)
class StageSpec:
    """How a curriculum stage turns steps into thoughts."""

    mode: Mode = "coconut"
    c_thought: int = 1
    max_latent_stage: int = 6
    pad_latent_to_max: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; expected one of {MODES}")

    @property
    def reasons(self) -> bool:
        """Whether the model reasons before it answers, in thoughts (coconut, pause_as_thought) or in language (cot);
        no_cot and no_thoughts answer right after the question."""
        return self.mode not in ("no_cot", "no_thoughts")

    @property
    def markers(self) -> bool:
        """Whether sequences carry <|start-latent|> and <|end-latent|>."""
        return self.mode in ("coconut", "pause_as_thought")

    def layout(self, stage: int, n_steps: int) -> tuple[int, int]:
        """(steps skipped, thoughts) for an item with n_steps steps at a curriculum stage."""
        if self.mode == "no_cot":
            return n_steps, 0
        if self.mode == "cot":
            return 0, 0
        if stage > self.max_latent_stage:
            n_skip = n_steps
            n_latent = self.max_latent_stage if self.pad_latent_to_max else min(n_steps, self.max_latent_stage)
        else:
            n_skip, n_latent = min(stage, n_steps), stage
        c = 0 if self.mode == "no_thoughts" else self.c_thought
        return n_skip, n_latent * c

    def inference_thoughts(self, stage: int, n_steps: int) -> int:
        """Thoughts in an evaluation prompt at a stage (the official get_question_latent_dataset rule)."""
        if not self.markers:
            return 0
        cap = self.max_latent_stage if self.pad_latent_to_max else min(self.max_latent_stage, n_steps)
        return min(cap, stage) * self.c_thought


@dataclass(frozen=True)
class Rendered:
    """One training sequence: input ids, labels (IGNORE_INDEX where no loss), its thought count, and
    thought targets: (position, token ids) pairs whose logits are trained toward that token set
    (`probe.data.supervision`)."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    n_thoughts: int
    targets: tuple[tuple[int, tuple[int, ...]], ...] = ()

    def units(self) -> list[tuple[int, tuple[int, ...]]]:
        """Every supervised (logit position, token ids) pair: each label, read at the position before
        it, and each thought target, in position order."""
        labels = [(p - 1, (t,)) for p, t in enumerate(self.labels) if t != IGNORE_INDEX and p > 0]
        return sorted(labels + list(self.targets))


def render_stage(tok: TokenizedItem, stage: int, spec: StageSpec, special) -> Rendered:
    """The training sequence of an item at a curriculum stage (Coconut's layout)."""
    n_skip, n_latent = spec.layout(stage, len(tok.steps))
    prefix = list(tok.question)
    if spec.markers:
        prefix += [special.start_id] + [special.latent_id] * n_latent + [special.end_id]
    rest = [t for s in tok.steps[n_skip:] for t in s] + list(tok.answer)
    return Rendered(
        input_ids=tuple(prefix + rest),
        labels=tuple([IGNORE_INDEX] * len(prefix) + rest),
        n_thoughts=n_latent,
    )


def render_prompt(tok: TokenizedItem, n_thoughts: int, spec: StageSpec, special) -> list[int]:
    """An inference prompt: the question, then (with markers) n_thoughts latents between start and end."""
    if n_thoughts < 0:
        raise ValueError(f"n_thoughts must be >= 0, got {n_thoughts}")
    if not spec.markers:
        if n_thoughts:
            raise ValueError(f"a {spec.mode} model takes no thoughts, got n_thoughts={n_thoughts}")
        return list(tok.question)
    return list(tok.question) + [special.start_id] + [special.latent_id] * n_thoughts + [special.end_id]


def step_prompt(tok: TokenizedItem, k: int, spec: StageSpec, special) -> list[int] | None:
    """The prompt that reaches reasoning step k: k thoughts, or for a model without latent mode the
    first k gold language steps (the CoT control's counterpart); None where the item has fewer steps."""
    if spec.markers:
        return render_prompt(tok, k, spec, special)
    if k > len(tok.steps):
        return None
    return list(tok.question) + [t for s in tok.steps[:k] for t in s]


def full_text(item: ProsQAItem, fmt: DataFormat = "sentences") -> str:
    """The whole CoT text of an item: question, steps and answer, newline-separated."""
    return "\n".join([question_text(item, fmt), *step_texts(item, fmt), answer_text(item)])
