"""Tokenizers: a word-level ProsQA tokenizer, and the three Coconut latent tokens for any tokenizer."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from probe.artifacts import (
    GPT2_VOCAB, HF_CONFIG, SLOW_VOCABULARIES, SPECIAL_TOKENS_MAP, TOKENIZER_CONFIG, TOKENIZER_FILE,
)
from probe.data.rbs import RBS_ANSWER, RBS_EDGE, RBS_EOS, RBS_NODES, RBS_QUESTION, RBS_ROOT

# The official repository adds them in this order, as ordinary (not special) tokens.
START_LATENT, END_LATENT, LATENT = "<|start-latent|>", "<|end-latent|>", "<|latent|>"
LATENT_TOKENS = (START_LATENT, END_LATENT, LATENT)
EOS, UNK = "<|endoftext|>", "<|unk|>"

# Words of the ProsQA templates in both data formats (see probe.data.render).
TEMPLATE_WORDS = ("Every", "is", "a", "Is", "or", ".", "?", "\n", "###", "|")

# A token is a newline, a run of '#', a word, or one of . ? |
_PIECES = Regex(r"\n|#+|[^\s.?|#]+|[.?|]")


class TokenizerError(ValueError):
    """A tokenizer that cannot serve a Coconut model."""


@dataclass(frozen=True)
class SpecialTokens:
    """Token ids a Coconut model needs: the three latent markers, end of sequence and padding."""

    start_id: int
    end_id: int
    latent_id: int
    eos_id: int
    pad_id: int


def build_word_tokenizer(names: Iterable[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer in which every ProsQA name and template word is one token."""
    words = [UNK, EOS, *TEMPLATE_WORDS]
    words += sorted(set(names) - set(words))
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(_PIECES, behavior="isolated", invert=True),
            pre_tokenizers.Split(Regex(r"[ \t]+"), behavior="removed"),
        ]
    )
    # Words are joined by spaces; cleanup glues '.' and '?' to the word before; newlines lose their space.
    tok.decoder = decoders.Sequence(
        [decoders.WordPiece(prefix="\x00\x00", cleanup=True), decoders.Replace(" \n", "\n")]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token=UNK, eos_token=EOS, pad_token=EOS, bos_token=EOS,
        clean_up_tokenization_spaces=False, model_max_length=4096,
    )
    add_latent_tokens(fast)
    return fast


# "Reasoning by Superposition"'s STokenizer (github Ber666/reasoning-by-superposition, stokenizer.py), id for id:
# node indices 0..30 as the words "0".."30", then its nine specials in its order. A checkpoint's embedding rows
# mean these tokens, so the order is the format.
RBS_SPECIALS = (START_LATENT, END_LATENT, LATENT, RBS_EDGE, RBS_QUESTION, RBS_ROOT, RBS_ANSWER, RBS_EOS,
                "<|no-answer|>")
RBS_VOCABULARY = (*(str(i) for i in range(RBS_NODES)), *RBS_SPECIALS)


def build_rbs_tokenizer() -> PreTrainedTokenizerFast:
    """RbS's 40-token vocabulary (`RBS_VOCABULARY`: ids 0..30 the node indices, 31..39 its specials) as a Hugging
    Face tokenizer: text is split on whitespace, a word outside the vocabulary cannot be written (encoding raises),
    decoding joins words with spaces. pad = eos = bos = `<eos>` (id 38), as STokenizer sets them; no other token is
    special, so `[A]` stays in decoded text (RbS's answer rule splits on it)."""
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(RBS_VOCABULARY)}, unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="\x00\x00", cleanup=False)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=RBS_EOS, pad_token=RBS_EOS, bos_token=RBS_EOS,
                                   clean_up_tokenization_spaces=False, model_max_length=4096)
    fast.padding_side = "right"
    return fast


def is_rbs_tokenizer(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether a tokenizer holds exactly RbS's vocabulary, id for id (as build_rbs_tokenizer builds it)."""
    vocab = tokenizer.get_vocab()
    return len(vocab) == len(RBS_VOCABULARY) and all(vocab.get(w) == i for i, w in enumerate(RBS_VOCABULARY))


def add_latent_tokens(tokenizer: PreTrainedTokenizerBase) -> SpecialTokens:
    """Add the three latent tokens (when absent) in the official order and set pad = eos; return the ids."""
    if tokenizer.eos_token_id is None:
        raise TokenizerError("the tokenizer has no eos token; Coconut needs one to end answers")
    for t in LATENT_TOKENS:
        if t not in tokenizer.get_vocab():
            tokenizer.add_tokens(t)
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return special_tokens(tokenizer)


def special_tokens(tokenizer: PreTrainedTokenizerBase) -> SpecialTokens:
    """The latent, eos and pad ids of a tokenizer that already holds the latent tokens."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in LATENT_TOKENS if t not in vocab]
    if missing:
        raise TokenizerError(f"the tokenizer lacks the latent token(s) {missing}")
    return SpecialTokens(
        start_id=vocab[START_LATENT], end_id=vocab[END_LATENT], latent_id=vocab[LATENT],
        eos_id=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )


def check_json_files(directory: Path, names: Iterable[str], error: type[ValueError]) -> None:
    """The one rule for the JSON files of a model or tokenizer directory: each of `names` that exists must parse.

    Raises `error` naming the first file that does not: "{file}: not valid JSON (...); the file is damaged:
    copy it again from where it came from"."""
    import json

    for name in names:
        file = Path(directory) / name
        if file.is_file():
            try:
                json.loads(file.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise error(f"{file}: not valid JSON ({e}); the file is damaged: copy it again from where it "
                            "came from") from None


def load_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerBase:
    """Load a Hugging Face tokenizer from a local directory (never from a hub).

    The directory must hold tokenizer_config.json and the vocabulary (tokenizer.json, or a slow tokenizer's
    vocabulary file), each JSON file valid: without its config, transformers silently builds another tokenizer
    from config.json's model type, and without its vocabulary it asks for sentencepiece. Raises TokenizerError
    naming the directory or the file and what to do.
    """
    path = Path(path)
    if not path.is_dir():
        raise TokenizerError(f"{path}: no such tokenizer directory")
    missing = [] if (path / TOKENIZER_CONFIG).is_file() else [TOKENIZER_CONFIG]
    if not (path / TOKENIZER_FILE).is_file() and not any((path / f).is_file() for f in SLOW_VOCABULARIES):
        missing.append(TOKENIZER_FILE)
    if missing:
        raise TokenizerError(f"{path}: the tokenizer is incomplete: no {' and no '.join(missing)} (transformers' "
                             f"save_pretrained writes {TOKENIZER_FILE} and {TOKENIZER_CONFIG}); copy the "
                             "tokenizer's files into it from where the model came from")
    check_json_files(path, (TOKENIZER_CONFIG, TOKENIZER_FILE, SPECIAL_TOKENS_MAP, HF_CONFIG, GPT2_VOCAB),
                     TokenizerError)
    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as e:  # transformers raises many types for an unreadable tokenizer
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise TokenizerError(f"{path}: cannot load a tokenizer ({type(e).__name__}: {first})") from None
    tok.padding_side = "right"
    return tok
