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
from dataclasses import dataclass, replace
from typing import Literal, Sequence

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


OVERRIDE = "pass --allow-lossy-tokenizer"  # how a refusal says to run anyway (the CLI's; train and the app say theirs)


def tokenizer_name(tokenizer) -> str:
    """A tokenizer's class; for transformers' generic class (a tokenizer built from a tokenizers object, as ours are),
    with its model's kind: "TokenizersBackend: WordLevel"."""
    name = type(tokenizer).__name__
    model = getattr(getattr(tokenizer, "backend_tokenizer", None), "model", None)
    return f"{name}: {type(model).__name__}" if name in ("TokenizersBackend", "PreTrainedTokenizerFast") and model \
        is not None else name


class LossyTokenizerError(ValueError):
    """A tokenizer that cannot write a data set: `lost` is the first word it loses (`LostWord`)."""

    def __init__(self, message: str, lost: "LostWord") -> None:
        super().__init__(message)
        self.lost = lost


@dataclass(frozen=True)
class LostWord:
    """The first word of a data set that a tokenizer cannot write: `reads_back` is what decoding what it wrote gives
    back there; `error` where encoding fails; `ids` where a layout that needs one token per word (RbS's) gets
    several or the unknown token (no override can help: the layout cannot be built)."""

    word: str
    item: int | None = None  # the item's index in the data set (None: the data set is one item, named by the source)
    kind: str = "word"  # "word", or "node name" (a name checked as a reasoning step writes it)
    reads_back: str = ""
    error: str | None = None
    ids: tuple[int, ...] | None = None

    @property
    def layout(self) -> bool:
        """Whether the format's layout itself cannot be written (refused even with the override)."""
        return self.ids is not None

    def message(self, tokenizer, source: str | None = None, *, override: str = OVERRIDE, whose: str = "the tokenizer",
                allowed: bool = False) -> str:
        """The one-line refusal: the source, the tokenizer's class, the word, what it becomes, and what to do (the
        override: how to run anyway); with allowed, the warning of a run that goes on."""
        where = f"{source}: " if source else ""
        of = f" of item {self.item}" if self.item is not None else ""
        head = f"{where}{whose} ({tokenizer_name(tokenizer)}) cannot write the {self.kind} {self.word!r}{of}"
        if self.layout:
            return (f"{head} as one token of its own (it writes it as {list(self.ids)}); data format 'rbs' writes "
                    "RbS's tokens: use RbS's tokenizer (--tokenizer rbs)")
        back = f"encoding it fails: {self.error}" if self.error is not None else f"it reads back {self.reads_back!r}"
        if allowed:
            return (f"{head} ({back}): the model reads other words than the data's, and its answers and readings may "
                    "be garbage (going on: a lossy tokenizer is allowed)")
        return (f"{head} ({back}): the model would read other words than the data's, and its answers and readings "
                f"would be garbage; use a tokenizer that writes the data (the model's own), or {override}")


def _one_token(tokenizer, word: str) -> int:
    ids = tokenizer.encode(word, add_special_tokens=False)
    if len(ids) != 1 or ids[0] == getattr(tokenizer, "unk_token_id", None):
        lost = LostWord(word, ids=tuple(ids))
        raise LossyTokenizerError(lost.message(tokenizer), lost)
    return ids[0]


def _one_token_each(tokenizer, words: list[str]) -> tuple[int, ...]:
    """The token of each word (`_one_token`), in one call of the tokenizer when its tokens are the words themselves
    (RbS's: a training view is tokenized per view, so this is the stream's cost); otherwise word by word, which
    raises LossyTokenizerError naming the first word that is not one token of its own."""
    ids = tokenizer.encode(" ".join(words), add_special_tokens=False)
    if tokenizer.convert_ids_to_tokens(ids) == words:
        return tuple(ids)
    return tuple(_one_token(tokenizer, w) for w in words)


def tokenize_item(item: ProsQAItem, tokenizer, fmt: DataFormat = "sentences", *, question: str | None = None,
                  ) -> TokenizedItem:
    """Tokenize question + newline, each step + newline, and '### ' answer + eos (the official split); in "rbs",
    RbS's words, one token each, with no newline, no eos and "[A]" as the cue.

    question, if given, replaces question_text(item, fmt) (a training view's). Raises LossyTokenizerError (a
    ValueError) when the format is "rbs" and a word of the layout is not one token of its own: the rule
    `check_tokenizer_writes` applies to a whole data set."""
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


ROUND_TRIP_ITEMS = 16  # items whose whole text check_tokenizer_writes round-trips (every item's names are checked)


def read_back(tokenizer, ids: Sequence[int]) -> str:
    """Token ids decoded as the model reads them: special tokens (a BOS, BERT's [CLS]) dropped, except the unknown
    token, which stays in the text."""
    unk = getattr(tokenizer, "unk_token_id", None)
    special = set(tokenizer.all_special_ids) - {unk}
    return tokenizer.decode([t for t in ids if t not in special], skip_special_tokens=False)


def _offsets(text: str) -> list[tuple[str, int]]:
    """Each whitespace-separated word of text with its offset in text with the whitespace removed."""
    out, n = [], 0
    for w in text.split():
        out.append((w, n))
        n += len(w)
    return out


def _first_loss(text: str, back: str) -> tuple[str, str] | None:
    """The first word of text that its round trip `back` does not give back, compared up to whitespace, with what
    back holds from where that word starts to the end of back's word there; None when they agree."""
    a, b = "".join(text.split()), "".join(back.split())
    if a == b:
        return None
    p = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    word, start = next((w, o) for w, o in reversed(_offsets(text)) if o <= min(p, len(a) - 1))
    there = next((w[start - o :] for w, o in _offsets(back) if o <= start < o + len(w)), "")
    # the punctuation both keep after it ('yumpus.' and '<|unk|>.') is not what is lost
    while len(word) > 1 and there and word[-1] == there[-1] and not word[-1].isalnum():
        word, there = word[:-1], there[:-1]
    return word, there if len(there) <= len(word) + 16 else there[: len(word) + 16] + "..."


def _unencodable(tokenizer, texts: Sequence[str], error: Exception) -> "LostWord":
    """The first word of texts whose encoding fails (a tokenizer without an unknown token, RbS's, raises on a word
    outside its vocabulary); the error itself when every word encodes alone."""
    for text in texts:
        for word in text.split():
            try:
                tokenizer.encode(word, add_special_tokens=False)
            except Exception as e:  # noqa: BLE001 - tokenizers raise a bare Exception
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                return LostWord(word, error=first)
    raise error


def _lost_in_item(item: ProsQAItem, tokenizer, fmt: DataFormat) -> "LostWord | None":
    """The first word of an item's text (question, steps, answer) that tokenize_item's tokens do not give back."""
    texts = [question_text(item, fmt), *step_texts(item, fmt), answer_text(item, fmt)]
    try:
        tok = tokenize_item(item, tokenizer, fmt)
    except LossyTokenizerError as e:
        return e.lost
    except Exception as e:  # noqa: BLE001 - a tokenizer that cannot encode a word raises (RbS's, on other data)
        return _unencodable(tokenizer, texts, e)
    if fmt == "rbs":  # RbS's words are its tokens, specials ("<eos>") included
        backs = [tokenizer.decode(list(ids), skip_special_tokens=False) for ids in (tok.question, *tok.steps,
                                                                                    tok.answer)]
    else:  # the answer's last token is eos
        backs = [read_back(tokenizer, ids) for ids in (tok.question, *tok.steps, tok.answer[:-1])]
    for text, back in zip(texts, backs):
        loss = _first_loss(text, back)
        if loss is not None:
            return LostWord(loss[0], reads_back=loss[1])
    return None


def _lost_name(items: Sequence[ProsQAItem], tokenizer, fmt: DataFormat) -> tuple[int, "LostWord"] | None:
    """The first node name of the data set (by the first item naming it) that the tokenizer cannot write as a
    reasoning step writes it ("Every X" in sentences): (that item's position in items, the word lost)."""
    first: dict[str, int] = {}
    for i, it in enumerate(items):
        for name in node_names(it, fmt):
            first.setdefault(name, i)
    if fmt == "rbs":
        for name, i in first.items():
            try:
                _one_token(tokenizer, name)
            except LossyTokenizerError as e:
                return i, replace(e.lost, kind="node name")
        return None
    prefix = step_prefix(fmt)
    texts = [f"{prefix} {name}" if prefix else name for name in first]
    try:
        encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    except Exception as e:  # noqa: BLE001 - as in _lost_in_item
        for text, (name, i) in zip(texts, first.items()):
            try:
                tokenizer.encode(text, add_special_tokens=False)
            except Exception:  # noqa: BLE001
                return i, _unencodable(tokenizer, [text], e)
        raise
    for text, ids, (name, i) in zip(texts, encoded, first.items()):
        loss = _first_loss(text, read_back(tokenizer, ids))
        if loss is not None:
            return i, LostWord(loss[0], kind="node name" if loss[0] == name else "word", reads_back=loss[1])
    return None


def lost_word(items: Sequence[ProsQAItem], tokenizer, fmt: DataFormat = "sentences", *, first_index: int | None = 0,
              sample: int = ROUND_TRIP_ITEMS) -> LostWord | None:
    """The first word of a data set that the tokenizer cannot write, or None.

    The first `sample` items are tokenized as every command tokenizes them (`tokenize_item`), and each part
    (question, steps, answer) decoded back (special tokens dropped but the unknown token) and compared with its text
    up to whitespace; every distinct node name of every item is round-tripped as a reasoning step writes it. In
    RbS's layout each word must also be one token of its own (`_one_token`). The word's item is its index in the
    data set: first_index + its position in items (None: not named). Raises only what the format raises for an
    item it cannot write (RbS's layout holds 31 nodes) and a tokenizer's own error where no single word fails."""
    def at(i: int) -> int | None:
        return None if first_index is None else first_index + i

    found = None
    for i, item in enumerate(items[:sample]):
        lost = _lost_in_item(item, tokenizer, fmt)
        if lost is not None:
            found = (i, replace(lost, item=at(i)))
            break
    name = _lost_name(items, tokenizer, fmt)
    if name is not None and (found is None or name[0] < found[0]):
        found = (name[0], replace(name[1], item=at(name[0])))
    return None if found is None else found[1]


def check_tokenizer_writes(items: Sequence[ProsQAItem], tokenizer, fmt: DataFormat = "sentences", *,
                           source: str | None = None, allow_lossy: bool = False, override: str = OVERRIDE,
                           whose: str = "the tokenizer", first_index: int | None = 0) -> str | None:
    """The one check, before a model runs over a data set, that its tokenizer writes the data (`lost_word`): every
    command that tokenizes items for a model calls it once per data set, before any forward.

    Returns None when it does; with allow_lossy, a warning line for the caller to show (the run goes on). source
    names the data in the line ("--data FILE"), override how to run anyway ("pass --allow-lossy-tokenizer"), whose
    the tokenizer ("the tokenizer of --control DIR"), first_index the index of items[0] in its file (None: name no
    item). Raises LossyTokenizerError (a ValueError) in one line naming the first word lost, its item, what the
    tokenizer reads back, the tokenizer's class and the override; in RbS's layout a word that is not one token of its
    own is refused even with allow_lossy (the layout cannot be built)."""
    lost = lost_word(items, tokenizer, fmt, first_index=first_index)
    if lost is None:
        return None
    if lost.layout or not allow_lossy:
        raise LossyTokenizerError(lost.message(tokenizer, source, override=override, whose=whose), lost)
    return lost.message(tokenizer, source, override=override, whose=whose, allowed=True)


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
