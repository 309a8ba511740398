"""A tokenizer that cannot write the data (issue 31, part 3): every command that runs a model over a data set first
round-trips the data through the model's tokenizer (probe.data.render.check_tokenizer_writes) and refuses, in one
line, a tokenizer that loses a word: unknown words, lowercasing, stripped accents, a vocabulary without byte
fallback, RbS's 40 tokens on other data; GPT-2's byte-level BPE and our word tokenizer pass. --allow-lossy-tokenizer
(allow_lossy_tokenizer in a training config, a sidebar box in the explorer) runs anyway, with a warning.

The tokenizers are built here, small, from the validation split's own words; nothing is downloaded."""

from __future__ import annotations

import json
import re

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import BertTokenizer, GPT2Config, GPT2LMHeadModel, GPT2Tokenizer, PreTrainedTokenizerFast, \
    T5Tokenizer
from typer.testing import CliRunner

from probe.cli import app
from probe.data.generate import CONCEPT_NAMES, PERSON_NAMES
from probe.data.prosqa import item_from_json
from probe.data.render import ROUND_TRIP_ITEMS, LossyTokenizerError, check_tokenizer_writes
from probe.model.checkpoint import save_checkpoint
from probe.model.coconut import CoconutConfig, CoconutModel
from probe.model.tokenizer import add_latent_tokens, build_rbs_tokenizer, build_word_tokenizer, load_tokenizer

runner = CliRunner()
WHY = ("the model would read other words than the data's, and its answers and readings would be garbage; use a "
       "tokenizer that writes the data (the model's own), or pass --allow-lossy-tokenizer")


def words_of(items, fold=lambda w: w) -> list[str]:
    """Every word (and '.', '?', '#', '|') of the items' texts, folded, sorted."""
    return sorted({fold(w) for it in items for t in [it.question, *it.steps, it.answer]
                   for w in t.replace(".", " . ").replace("?", " ? ").split()} | {"#", "|"})


def renamed(item, old: str, new: str):
    """The item with the node name `old` written `new` everywhere (its names, question, steps and answer)."""
    return item_from_json(json.loads(re.sub(rf"\b{old}\b", new, json.dumps(item.to_json(), ensure_ascii=False))))


def gpt2(items):
    """A GPT-2 tokenizer (byte-level BPE) whose 300 tokens are trained on 20 questions: names split into pieces."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator([it.question for it in items[:20]],
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    model = json.loads(bpe.to_str())["model"]
    return GPT2Tokenizer(vocab=model["vocab"], merges=[tuple(m) for m in model["merges"]])


def uncased(items):
    """BERT uncased: a WordPiece vocabulary of every word of the data, lowercased, and a lowercasing normaliser."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words_of(items, str.lower)]
    return BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True, eos_token="[SEP]")


def accent_stripping(items):
    """A word-level tokenizer whose normaliser strips accents (NFD, then the combining marks dropped)."""
    vocab = ["<unk>", "<eos>", *words_of(items, lambda w: w.replace("ë", "e"))]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.StripAccents()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="\x00\x00", cleanup=True)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")


def sentencepiece_without_byte_fallback(items):
    """A sentencepiece (unigram, T5's class) vocabulary of the questions' characters, without byte fallback: a
    character it lacks ('#', which only answers write) is its unknown token."""
    chars = sorted({c for it in items for c in it.question} - {" "})
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -1.0)] + [(c, -2.0) for c in chars] + \
        [("▁" + c, -1.5) for c in chars]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


@pytest.fixture(scope="module")
def data(official_items):
    """The first 41 validation items, item 40's first name after its root written 'Zoë'."""
    items = list(official_items[:41])
    it = items[40]
    items[40] = renamed(it, next(n for v, n in enumerate(it.idx_to_symbol) if v != it.root), "Zoë")
    return items


# (kind, the tokenizer, data format, the refusal's text after "--data F: ")
REFUSED = {
    "word-level for other names": (
        lambda items: build_word_tokenizer(["Ann", "Bob", "zorpus"]), "sentences",
        "the tokenizer (TokenizersBackend: WordLevel) cannot write the word 'shumpus' of item 0 (it reads back "
        "'<|unk|>')"),
    "uncased (BERT)": (
        uncased, "sentences",
        "the tokenizer (BertTokenizer) cannot write the word 'Every' of item 0 (it reads back 'every')"),
    "uncased, edges": (
        uncased, "edges",
        "the tokenizer (BertTokenizer) cannot write the word 'Alex' of item 0 (it reads back 'alex')"),
    "accents stripped": (
        accent_stripping, "sentences",
        "the tokenizer (TokenizersBackend: WordLevel) cannot write the node name 'Zoë' of item 40 (it reads back "
        "'Zoe')"),
    "sentencepiece without byte fallback": (
        sentencepiece_without_byte_fallback, "sentences",
        "the tokenizer (T5Tokenizer) cannot write the word '###' of item 0 (it reads back '<unk>')"),
    "RbS's 40 tokens on official text": (
        lambda items: build_rbs_tokenizer(), "sentences",
        "the tokenizer (TokenizersBackend: WordLevel) cannot write the word 'Every' of item 0 (encoding it fails: "
        "WordLevel error: Missing [UNK] token from the vocabulary)"),
}


@pytest.mark.parametrize("kind", list(REFUSED))
def test_a_tokenizer_that_loses_a_word_is_refused_naming_it(kind, data):
    build, fmt, said = REFUSED[kind]
    tok = build(data)
    with pytest.raises(LossyTokenizerError) as e:
        check_tokenizer_writes(data, tok, fmt, source="--data F")
    assert str(e.value) == f"--data F: {said}: {WHY}"
    warning = check_tokenizer_writes(data, tok, fmt, source="--data F", allow_lossy=True)
    assert warning == (f"--data F: {said}: the model reads other words than the data's, and its answers and readings "
                       "may be garbage (going on: a lossy tokenizer is allowed)")


# (kind, the tokenizer, data formats)
LOSSLESS = {
    "ours, with its own names": (lambda items: build_word_tokenizer([*PERSON_NAMES, *CONCEPT_NAMES, "Zoë"]),
                                 ("sentences", "edges", "graph")),
    "GPT-2 (byte-level BPE)": (gpt2, ("sentences", "edges", "graph")),
    "RbS's, in RbS's layout": (lambda items: build_rbs_tokenizer(), ("rbs",)),
}


@pytest.mark.parametrize("kind", list(LOSSLESS))
def test_a_tokenizer_that_writes_the_data_passes(kind, data, official_items):
    build, formats = LOSSLESS[kind]
    tok = build(data)
    for fmt in formats:
        assert check_tokenizer_writes(data, tok, fmt) is None, fmt
        if kind != "RbS's, in RbS's layout":  # (its layout holds 31 nodes; the split has larger items)
            assert check_tokenizer_writes(official_items, tok, fmt) is None, fmt


def test_a_local_tokenizer_directory_is_checked_as_it_loads(tmp_path, data):
    """A Hugging Face tokenizer directory (save_pretrained, read back by load_tokenizer as --tokenizer DIR and
    --base DIR read one): GPT-2's passes, BERT uncased's is refused as the object itself is."""
    gpt2(data).save_pretrained(tmp_path / "gpt2")
    assert check_tokenizer_writes(data, load_tokenizer(tmp_path / "gpt2"), "sentences") is None
    uncased(data).save_pretrained(tmp_path / "bert")
    with pytest.raises(LossyTokenizerError, match=r"^--data F: the tokenizer \(BertTokenizer\) cannot write the word "
                                                  r"'Every' of item 0 \(it reads back 'every'\)"):
        check_tokenizer_writes(data, load_tokenizer(tmp_path / "bert"), "sentences", source="--data F")


def test_rbs_layout_needs_one_token_per_word_even_when_lossy_is_allowed(data):
    """RbS's layout is written one token per word ('<eos>', node indices, '[Q]'): another tokenizer writes GPT-2's
    pieces, which no override can make that layout. The same rule as tokenize_item's (it raises it)."""
    from probe.data.render import tokenize_item

    small = [it for it in data if it.n_nodes <= 31]
    want = ("--data F: the tokenizer (GPT2Tokenizer) cannot write the word '<eos>' of item 0 as one token of its own "
            "(it writes it as [28, 69, 79, 83, 30]); data format 'rbs' writes RbS's tokens: use RbS's tokenizer "
            "(--tokenizer rbs)")
    for allow in (False, True):
        with pytest.raises(LossyTokenizerError) as e:
            check_tokenizer_writes(small, gpt2(data), "rbs", source="--data F", allow_lossy=allow)
        assert str(e.value) == want
    with pytest.raises(LossyTokenizerError) as e:
        tokenize_item(small[0], gpt2(data), "rbs")
    assert str(e.value) == want.removeprefix("--data F: ").replace(" of item 0", "")


def test_the_check_reads_a_sample_and_every_name(monkeypatch, official_items):
    """Cheap: tokenize_item on the first ROUND_TRIP_ITEMS items only, and each distinct name once (a name of item
    299 alone is still found)."""
    import probe.data.render as render

    calls = []
    real = render.tokenize_item
    monkeypatch.setattr(render, "tokenize_item", lambda item, *a, **kw: calls.append(item) or real(item, *a, **kw))
    tok = build_word_tokenizer([*PERSON_NAMES, *CONCEPT_NAMES])
    items = list(official_items)
    assert check_tokenizer_writes(items, tok) is None and len(calls) == ROUND_TRIP_ITEMS
    last = items[-1]
    items[-1] = renamed(last, next(n for v, n in enumerate(last.idx_to_symbol) if v != last.root), "Qqpus")
    with pytest.raises(LossyTokenizerError, match=r"cannot write the node name 'Qqpus' of item 299 \(it reads back "
                                                  r"'<\|unk\|>'\)"):
        check_tokenizer_writes(items, tok)


# ---------------------------------------------------------------------------- the commands


def tiny_checkpoint(path, tok):
    """A one-layer random GPT-2 of ours with this tokenizer (one thought)."""
    sp = add_latent_tokens(tok)
    torch.manual_seed(0)
    base = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=512, vocab_size=len(tok),
                                      bos_token_id=sp.eos_id, eos_token_id=sp.eos_id, pad_token_id=sp.eos_id))
    return save_checkpoint(CoconutModel(base.eval(), CoconutConfig.from_special(sp, max_latent_stage=1)), tok, path)


@pytest.fixture(scope="module")
def files(tmp_path_factory, official_path):
    """(a checkpoint whose word tokenizer was built for other names, one whose tokenizer writes the data, six
    validation items)."""
    tmp = tmp_path_factory.mktemp("lossy")
    six = tmp / "six.json"
    six.write_text(json.dumps(json.loads(official_path.read_text())[:6]))
    lossy = tiny_checkpoint(tmp / "other-names", build_word_tokenizer(["Ann", "Bob", "zorpus"]))
    ours = tiny_checkpoint(tmp / "ours", build_word_tokenizer([*PERSON_NAMES, *CONCEPT_NAMES]))
    return lossy, ours, six


def refusal(data, item: int = 0, whose: str = "the tokenizer", why: str = WHY) -> str:
    word = {0: "shumpus", 3: "fompus"}[item]
    return (f"error: --data {data}: {whose} (TokenizersBackend: WordLevel) cannot write the word '{word}' of item "
            f"{item} (it reads back '<|unk|>'): {why}")


@pytest.fixture
def no_forward(monkeypatch):
    """Any forward of a GPT-2 fails: the check must come before the first (loading's own self-test is skipped)."""
    from transformers.models.gpt2.modeling_gpt2 import GPT2Model

    def forward(*a, **kw):
        raise AssertionError("a forward ran before the tokenizer was checked")

    monkeypatch.setattr(CoconutModel, "check_computation", lambda self, *a, **kw: None)
    monkeypatch.setattr(GPT2Model, "forward", forward)


def test_every_command_refuses_before_any_forward(files, tmp_path, no_forward):
    lossy, ours, six = files
    m, d, out = ["--ckpt", str(lossy)], ["--data", str(six)], ["--out", str(tmp_path / "out")]
    runs = {
        "eval": ["eval", *m, *d],
        "decode": ["decode", *m, *d, "--index", "3"],
        "capture": ["capture", *m, *d, *out],
        "analyze": ["analyze", *m, *d, *out],
        "tuned-lens": ["tuned-lens", *m, *d, "--out", str(tmp_path / "t.safetensors")],
        "rbs-notebook": ["rbs-notebook", *m, *d],
        "intervene": ["intervene", *m, *d, *out],
        "probes fit": ["probes", "fit", *m, *d, "--folds", "2", *out],
        "probes halt": ["probes", "halt", *m, *d, "--folds", "2", *out],
        "sae train": ["sae", "train", *m, *d, *out],
    }
    for name, args in runs.items():
        r = runner.invoke(app, args)
        assert r.exit_code == 2 and isinstance(r.exception, SystemExit), (name, r.output[-800:])
        assert r.output.strip().splitlines()[-1] == refusal(six, 3 if name == "decode" else 0), name
    # a control is checked before the main model does any work
    for args in (["analyze", "--ckpt", str(ours), "--control", str(lossy), *d, *out],
                 ["probes", "fit", "--ckpt", str(ours), "--control", str(lossy), *d, "--folds", "2", *out],
                 ["intervene", "--ckpt", str(ours), "--control", str(lossy), *d, *out]):
        r = runner.invoke(app, args)
        assert r.output.strip().splitlines()[-1] == refusal(six, whose=f"the tokenizer of --control {lossy}"), args
    assert not (tmp_path / "out").exists()


def test_the_override_runs_with_a_warning(files):
    lossy, _, six = files
    r = runner.invoke(app, ["eval", "--ckpt", str(lossy), "--data", str(six), "--limit", "2", "--k", "0",
                            "--allow-lossy-tokenizer"])
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("accuracy 0.0000 (0/2)")
    warning = refusal(six, why="the model reads other words than the data's, and its answers and readings may be "
                               "garbage (going on: a lossy tokenizer is allowed)").replace("error: ", "warning: ")
    assert warning in r.stderr.splitlines()


def test_training_refuses_unless_the_config_allows(files, tmp_path, official_path, no_forward):
    """A run whose tokenizer (a directory: BERT uncased) cannot write its training data stops before its first
    step, naming the config's option; allow_lossy_tokenizer (or --allow-lossy-tokenizer) lets it start."""
    from probe.data.prosqa import load_items

    _, _, six = files
    uncased(load_items(official_path)).save_pretrained(tmp_path / "bert")
    config = tmp_path / "run.yaml"
    config.write_text(f"name: t\nout_dir: {tmp_path / 'run'}\ntrain_data: {six}\ntrain_size: 6\nbatch_size: 6\n"
                      f"tokenizer: {tmp_path / 'bert'}\nnum_epochs: 1\nmax_latent_stage: 1\n"
                      "model: {model_type: gpt2, n_layer: 1, n_embd: 16, n_head: 2}\n")
    r = runner.invoke(app, ["train", "--config", str(config)])
    assert r.exit_code == 2, r.output
    assert r.output.strip().splitlines()[-1] == (
        f"error: train_data {six}: the tokenizer (BertTokenizer) cannot write the word 'Every' of item 0 (it reads "
        "back 'every'): the model would read other words than the data's, and its answers and readings would be "
        "garbage; use a tokenizer that writes the data (the model's own), or set allow_lossy_tokenizer: true "
        "(probe train --allow-lossy-tokenizer)")
    assert not any((tmp_path / "run").glob("epoch-*"))
    for extra in (["--allow-lossy-tokenizer"], ["--set", "allow_lossy_tokenizer=true"]):
        r = runner.invoke(app, ["train", "--config", str(config), *extra])
        assert "a forward ran before the tokenizer was checked" in str(r.exception), r.output  # it went on
        assert "warning: train_data" in r.stderr
    r = runner.invoke(app, ["train", "--config", str(config), "--set", "allow_lossy_tokenizer='no'"])
    assert r.output.strip().splitlines()[-1] == "error: allow_lossy_tokenizer must be true or false, got 'no'"


def test_release_refuses_before_evaluating(files, tmp_path, monkeypatch, no_forward):
    import probe.release.build

    lossy, _, six = files
    monkeypatch.setattr(probe.release.build, "lineage", lambda ckpt, configs: [])  # no training record to read here
    with pytest.raises(LossyTokenizerError) as e:
        probe.release.build.release(lossy, tmp_path / "rel", six, [])
    assert f"error: {e.value}" == refusal(six)
    assert not (tmp_path / "rel").exists()


def test_the_explorer_shows_the_refusal_and_its_box_lets_it_run(files):
    AppTest = pytest.importorskip("streamlit.testing.v1").AppTest
    from pathlib import Path

    lossy, _, _ = files
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "apps" / "explorer.py"), default_timeout=60)
    at.session_state["ckpt"] = "another path..."
    at.session_state["ckpt_path"] = str(lossy)
    at.session_state["index"] = 3
    at.run()
    assert not at.exception and [e.value for e in at.error] == [
        "prosqa_valid.json: the tokenizer (TokenizersBackend: WordLevel) cannot write the word 'fompus' of item 3 (it "
        "reads back '<|unk|>'): the model would read other words than the data's, and its answers and readings would "
        "be garbage; use a tokenizer that writes the data (the model's own), or tick 'allow a lossy tokenizer' in the "
        "sidebar"]
    at.checkbox(key="allow_lossy").check().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert [w.value for w in at.warning] == [
        "prosqa_valid.json: the tokenizer (TokenizersBackend: WordLevel) cannot write the word 'fompus' of item 3 (it "
        "reads back '<|unk|>'): the model reads other words than the data's, and its answers and readings may be "
        "garbage (going on: a lossy tokenizer is allowed)"]
    assert at.markdown[1].value.startswith("after 1 thoughts the model answers")
