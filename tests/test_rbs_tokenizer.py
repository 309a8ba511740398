"""RbS's tokenizer, built in: STokenizer's ids exactly (written here from its description, not from our table)."""

from __future__ import annotations

import pytest

from probe.model.tokenizer import (add_latent_tokens, build_rbs_tokenizer, is_rbs_tokenizer, load_tokenizer,
                                   special_tokens)

# STokenizer (github Ber666/reasoning-by-superposition, stokenizer.py): "0".."30", then these, in this order.
SPECIALS_BY_HAND = {"<|start-latent|>": 31, "<|end-latent|>": 32, "<|latent|>": 33, "|": 34, "[Q]": 35, "[R]": 36,
                    "[A]": 37, "<eos>": 38, "<|no-answer|>": 39}


def test_the_ids_are_stokenizers_and_survive_a_save():
    tok = build_rbs_tokenizer()
    assert len(tok) == 40
    for node in range(31):
        assert tok.convert_tokens_to_ids(str(node)) == node
    for word, i in SPECIALS_BY_HAND.items():
        assert tok.convert_tokens_to_ids(word) == i
    text = "<eos> 0 2 | 1 3 [Q] 16 13 [R] 1 <|latent|> <|latent|> [A] 16"
    ids = tok.encode(text, add_special_tokens=False)
    assert ids == [38, 0, 2, 34, 1, 3, 35, 16, 13, 36, 1, 33, 33, 37, 16]
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_special_tokens=True) == text.removeprefix("<eos> ")  # [A] stays: the answer rule
    assert special_tokens(tok) == add_latent_tokens(tok)  # the latent tokens are its own: nothing is added
    assert (special_tokens(tok).latent_id, special_tokens(tok).eos_id, special_tokens(tok).pad_id) == (33, 38, 38)
    assert len(tok) == 40 and is_rbs_tokenizer(tok)


def test_saved_and_loaded_like_our_other_tokenizers(tmp_path):
    build_rbs_tokenizer().save_pretrained(tmp_path)
    tok = load_tokenizer(tmp_path)
    assert is_rbs_tokenizer(tok) and tok.encode("[A] 30", add_special_tokens=False) == [37, 30]


def test_a_word_outside_the_vocabulary_cannot_be_written():
    tok = build_rbs_tokenizer()
    with pytest.raises(Exception):
        tok.encode("31", add_special_tokens=False)  # a node index past RbS's 31 nodes
    assert not is_rbs_tokenizer(load_tokenizer_like_gpt2())


def load_tokenizer_like_gpt2():
    """A 40-word tokenizer in another order: not RbS's."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = [*SPECIALS_BY_HAND, *(str(i) for i in range(31))]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")
