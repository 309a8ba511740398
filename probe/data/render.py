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

- "rbs": "Reasoning by Superposition"'s own layout and vocabulary (github Ber666/reasoning-by-superposition,
  dataset.py; docs/rbs-notes.md, section 3), written with node *indices* for RbS's tokenizer:
  "<eos> s t | s t | ... | s t [Q] a b [R] root", in the item's edge order, no "|" after the last edge, the two
  options in an order drawn per item from a fixed seed (`rbs_target_first`); a step is the index of the node it
  reaches; the answer is the target's index, one token after "[A]" (no eos), and is correct when that token is the
  target (RbS's answer rule, `answer_of`).

Token layout (Coconut): question, <|start-latent|>, n x <|latent|>, <|end-latent|>, the
remaining steps, "### " answer, eos. Modes without markers (cot, no_cot, no_thoughts) drop
the start/end tokens, as the official implementation does. In RbS's layout the thoughts follow the
root directly (thought 1 is the root's last hidden state) and "[A]" follows them: question,
n x <|latent|>, "[A]", the answer; without latent mode, question, "[A]", the answer.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from probe.data.prosqa import ProsQAItem, item_key, parse_question
from probe.data.rbs import RBS_ANSWER, RBS_EDGE, RBS_EOS, RBS_NODES, RBS_QUESTION, RBS_ROOT

DataFormat = Literal["sentences", "edges", "graph", "rbs"]
DATA_FORMATS: tuple[str, ...] = ("sentences", "edges", "graph", "rbs")
RBS_OPTION_SEED = 0  # the seed of RbS-layout option orders at evaluation (rbs_target_first)
Mode = Literal["coconut", "pause_as_thought", "cot", "no_cot", "no_thoughts"]
MODES: tuple[str, ...] = ("coconut", "pause_as_thought", "cot", "no_cot", "no_thoughts")
IGNORE_INDEX = -100


def _check_format(fmt: str) -> None:
    if fmt not in DATA_FORMATS:
        raise ValueError(f"unknown data format {fmt!r}; expected one of {DATA_FORMATS}")


def step_prefix(fmt: DataFormat) -> str:
    """The text of a step before its first node name ('Every' in sentences, nothing in the other formats)."""
    _check_format(fmt)
    return "Every" if fmt == "sentences" else ""


def node_names(item: ProsQAItem, fmt: DataFormat = "sentences") -> tuple[str, ...]:
    """How the format writes each node, by index: its name, or in "rbs" its index ("0", "1", ...)."""
    _check_format(fmt)
    return tuple(str(v) for v in range(item.n_nodes)) if fmt == "rbs" else item.idx_to_symbol


def node_labels(item: ProsQAItem, fmt: DataFormat = "sentences") -> list[str]:
    """Each node as figures and tables show it: its name; in "rbs" its token (the node index, all the model reads)
    and then its name, "16 lempus"."""
    _check_format(fmt)
    return [f"{v} {name}" for v, name in enumerate(item.idx_to_symbol)] if fmt == "rbs" else list(item.idx_to_symbol)


def rbs_target_first(item: ProsQAItem, seed: int = RBS_OPTION_SEED) -> bool:
    """Whether RbS's layout lists the target before the distractor for this item: drawn once per item from the seed
    and the item's content (`item_key`), so that an item is written the same way in any file, batch or order. RbS
    itself draws the order anew at every evaluation (random.random() < 0.5); training views draw theirs per view."""
    return random.Random(f"rbs-options:{seed}:{item_key(item)}").random() < 0.5


def rbs_question(item: ProsQAItem, target_first: bool) -> str:
    """RbS's prompt before the thoughts, "<eos> s t | ... | s t [Q] a b [R] root", the edges in item.edges order.

    Raises ValueError for an item with more nodes than RbS's node tokens (0..30)."""
    if item.n_nodes > RBS_NODES:
        raise ValueError(f"an item of {item.n_nodes} nodes cannot be written in RbS's layout (node tokens "
                         f"0..{RBS_NODES - 1})")
    edges = f" {RBS_EDGE} ".join(f"{s} {t}" for s, t in item.edges)
    a, b = (item.target, item.neg_target) if target_first else (item.neg_target, item.target)
    return f"{RBS_EOS} {edges} {RBS_QUESTION} {a} {b} {RBS_ROOT} {item.root}"


def question_text(item: ProsQAItem, fmt: DataFormat = "sentences") -> str:
    """The question in the given format (the official text for 'sentences'; for 'rbs' the option order of
    `rbs_target_first`)."""
    _check_format(fmt)
    if fmt == "sentences":
        return item.question
    if fmt == "rbs":
        return rbs_question(item, rbs_target_first(item))
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
        out.extend(f"{p} {c}" if fmt == "edges" else str(item.index(c)) if fmt == "rbs" else c for p, c in facts)
    return out


def answer_text(item: ProsQAItem, fmt: DataFormat = "sentences") -> str:
    """The answer line, as the official implementation writes it; in "rbs" the target's index (after "[A]")."""
    _check_format(fmt)
    return str(item.target) if fmt == "rbs" else "### " + item.answer


def answer_of(text: str, fmt: DataFormat = "sentences") -> str:
    """The prediction in decoded text (prompt and continuation), by the format's own rule: the official one, the
    text after the last '#'; RbS's, the text after the last "[A]" (run.py); then commas removed, stripped."""
    _check_format(fmt)
    return text.split(RBS_ANSWER if fmt == "rbs" else "#")[-1].replace(",", "").strip()


def gold_answer(item: ProsQAItem, fmt: DataFormat = "sentences") -> str:
    """What a correct prediction equals (`answer_of`): the answer sentence, or in "rbs" the target's index."""
    _check_format(fmt)
    return str(item.target) if fmt == "rbs" else item.answer.replace(",", "").strip()


def answer_length(fmt: DataFormat) -> int | None:
    """Tokens an answer may hold: RbS's evaluation writes exactly one after "[A]" (its answer is one token, with no
    eos after it); None for the other formats (their answers end with eos)."""
    _check_format(fmt)
    return 1 if fmt == "rbs" else None


@dataclass(frozen=True)
class TokenizedItem:
    """Token ids of an item's parts. answer ends with eos, except in RbS's layout, where it is one token written
    after the cue "[A]" and the thoughts are not marked (they follow the root; `thought_origin`)."""

    question: tuple[int, ...]
    steps: tuple[tuple[int, ...], ...]
    answer: tuple[int, ...]
    cue: tuple[int, ...] = ()  # written before the answer in every mode: RbS's "[A]"
    marked: bool = True  # the thoughts sit between <|start-latent|> and <|end-latent|>

    @property
    def thought_origin(self) -> int:
        """The position whose last hidden state becomes thought 1 (thought j: thought_origin + j - 1): the
        <|start-latent|> token after the question, or in RbS's layout the root, the question's last token."""
        return len(self.question) if self.marked else len(self.question) - 1


def _one_token(tokenizer, word: str) -> int:
    ids = tokenizer.encode(word, add_special_tokens=False)
    if len(ids) != 1 or ids[0] == getattr(tokenizer, "unk_token_id", None):
        raise ValueError(f"data format 'rbs' writes RbS's tokens, but this tokenizer writes {word!r} as {ids}, not "
                         "as one token of its own; use RbS's tokenizer (--tokenizer rbs)")
    return ids[0]


def _one_token_each(tokenizer, words: list[str]) -> tuple[int, ...]:
    """The token of each word (`_one_token`), in one call of the tokenizer when its tokens are the words themselves
    (RbS's: a training view is tokenized per view, so this is the stream's cost); otherwise word by word, which
    raises ValueError naming the first word that is not one token of its own."""
    ids = tokenizer.encode(" ".join(words), add_special_tokens=False)
    if tokenizer.convert_ids_to_tokens(ids) == words:
        return tuple(ids)
    return tuple(_one_token(tokenizer, w) for w in words)


def tokenize_item(item: ProsQAItem, tokenizer, fmt: DataFormat = "sentences", *, question: str | None = None,
                  ) -> TokenizedItem:
    """Tokenize question + newline, each step + newline, and '### ' answer + eos (the official split); in "rbs",
    RbS's words, one token each, with no newline, no eos and "[A]" as the cue.

    question, if given, replaces question_text(item, fmt) (a training view's). Raises ValueError when the format is
    "rbs" and the tokenizer is not RbS's (a word of the layout is not one token of its own)."""
    enc = tokenizer.encode
    if fmt == "rbs":
        words = (question or question_text(item, fmt)).split()
        steps = step_texts(item, fmt)
        ids = _one_token_each(tokenizer, [*words, *steps, answer_text(item, fmt), RBS_ANSWER])
        return TokenizedItem(question=ids[: len(words)], steps=tuple((t,) for t in ids[len(words) : -2]),
                             answer=ids[-2:-1], cue=ids[-1:], marked=False)
    return TokenizedItem(
        question=tuple(enc((question or question_text(item, fmt)) + "\n", add_special_tokens=True)),
        steps=tuple(tuple(enc(s + "\n", add_special_tokens=False)) for s in step_texts(item, fmt)),
        answer=tuple(enc(answer_text(item, fmt), add_special_tokens=False)) + (tokenizer.eos_token_id,),
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


def thought_span(tok: TokenizedItem, n_thoughts: int, spec: StageSpec, special, *, closed: bool = True) -> list[int]:
    """The tokens between the question and what follows the thoughts: <|start-latent|>, n_thoughts x <|latent|>
    and (closed) <|end-latent|>; in RbS's layout the latents alone; nothing in a mode without latent mode."""
    if not spec.markers:
        return []
    latents = [special.latent_id] * n_thoughts
    if not tok.marked:
        return latents
    return [special.start_id] + latents + ([special.end_id] if closed else [])


def render_stage(tok: TokenizedItem, stage: int, spec: StageSpec, special) -> Rendered:
    """The training sequence of an item at a curriculum stage (Coconut's layout). Raises ValueError for RbS's layout,
    which has no language steps to train (it trains under `supervision: optimal`, probe.data.supervision)."""
    if not tok.marked:
        raise ValueError("RbS's layout has no language steps: train it with supervision: optimal")
    n_skip, n_latent = spec.layout(stage, len(tok.steps))
    prefix = list(tok.question) + thought_span(tok, n_latent, spec, special)
    rest = [t for s in tok.steps[n_skip:] for t in s] + list(tok.answer)
    return Rendered(
        input_ids=tuple(prefix + rest),
        labels=tuple([IGNORE_INDEX] * len(prefix) + rest),
        n_thoughts=n_latent,
    )


def render_prompt(tok: TokenizedItem, n_thoughts: int, spec: StageSpec, special) -> list[int]:
    """An inference prompt: the question, then (with markers) n_thoughts latents between start and end; in RbS's
    layout the question, n_thoughts latents and "[A]"."""
    if n_thoughts < 0:
        raise ValueError(f"n_thoughts must be >= 0, got {n_thoughts}")
    if not spec.markers and n_thoughts:
        raise ValueError(f"a {spec.mode} model takes no thoughts, got n_thoughts={n_thoughts}")
    return list(tok.question) + thought_span(tok, n_thoughts, spec, special) + list(tok.cue)


def step_prompt(tok: TokenizedItem, k: int, spec: StageSpec, special) -> list[int] | None:
    """The prompt that reaches reasoning step k: k thoughts, or for a model without latent mode the
    first k gold language steps (the CoT control's counterpart); None where the item has fewer steps."""
    if spec.markers:
        return render_prompt(tok, k, spec, special)
    if k > len(tok.steps):
        return None
    return list(tok.question) + [t for s in tok.steps[:k] for t in s]


def full_text(item: ProsQAItem, fmt: DataFormat = "sentences") -> str:
    """The whole CoT text of an item: question, steps and answer, newline-separated (in "rbs", RbS's tokens:
    the steps' nodes, then "[A]" and the answer)."""
    if fmt == "rbs":
        return " ".join([question_text(item, fmt), *step_texts(item, fmt), RBS_ANSWER, answer_text(item, fmt)])
    return "\n".join([question_text(item, fmt), *step_texts(item, fmt), answer_text(item)])
