"""Caption tokenizers (model/text.py): word vocabulary, CLIP's BPE, saving, batches."""

from __future__ import annotations

import json
import os

import pytest
import torch

from core.errors import UserError
from model.data.tokenizers import (
    BOS,
    EOS,
    PAD,
    TOKENIZERS,
    UNK,
    BPETokenizer,
    WordTokenizer,
    bpe_clip_ids,
    bpe_path,
    build_tokenizer,
    encode_batch,
    load_tokenizer,
    save_tokenizer,
    tokenizer_from_dict,
)

CAPTIONS = [
    "a handwritten seven",
    "the digit 7, written thickly",
    "a small, slanted 7",
    "a seven, drawn slanted right",
    "an eight, written by hand",
    "grandma’s old rag doll.",
    "a us 5 cent piece ($.05) called a nickel.",
    "tux—the linux mascot!",
    'a wooden toy from germany called a "räuchermännchen".',
    "a peacock (a male peafowl).",
]


@pytest.fixture(scope="module")
def bpe_available():
    """CLIP's merges file; skip where no package ships it, except under CI=true."""
    try:
        return bpe_path()
    except UserError as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and the bpe tokenizer cannot load: {e}")
        pytest.skip(str(e))


@pytest.fixture(params=TOKENIZERS)
def tok(request):
    if request.param == "bpe":
        request.getfixturevalue("bpe_available")
    return build_tokenizer(request.param, CAPTIONS)


def test_round_trip_of_the_training_captions(tok):
    for caption in CAPTIONS:
        ids = tok.encode(caption)
        assert ids and min(ids) > UNK and max(ids) < tok.vocab_size  # all seen: no UNK
        assert tok.decode(ids) == caption
    assert tok.decode(tok.encode("The Digit 7,  WRITTEN thickly")) == "the digit 7, written thickly"


def test_specials_unknowns_and_decoding_stops_at_eos(tok):
    assert tok.to_dict()["tokens"][:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    assert (PAD, BOS, EOS, UNK) == (0, 1, 2, 3)
    ids = tok.encode("a zebra")
    assert ids[-1] == UNK and UNK not in ids[:1]
    assert tok.decode(ids) == "a <unk>"
    seven = tok.encode("a handwritten seven")
    assert tok.decode([BOS, *seven, EOS, *tok.encode("an eight"), PAD]) == "a handwritten seven"
    assert tok.decode([PAD, BOS, *seven, PAD, PAD]) == "a handwritten seven"
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size])


def test_same_captions_give_byte_identical_tokenizers(tok, tmp_path):
    kind = tok.to_dict()["kind"]
    again = build_tokenizer(kind, list(CAPTIONS))
    assert json.dumps(again.to_dict()) == json.dumps(tok.to_dict())
    save_tokenizer(tok, tmp_path / "tok.json")
    save_tokenizer(again, tmp_path / "again.json")
    assert (tmp_path / "tok.json").read_bytes() == (tmp_path / "again.json").read_bytes()
    loaded = load_tokenizer(tmp_path / "tok.json")
    assert type(loaded) is type(tok) and loaded.to_dict() == tok.to_dict()
    for caption in CAPTIONS:
        assert loaded.encode(caption) == tok.encode(caption)


def test_word_vocabulary_order_and_min_count():
    tok = WordTokenizer.from_captions(["b a a", "c b a", "d"])
    assert tok.to_dict() == {
        "kind": "word",
        "min_count": 1,
        "tokens": ["<pad>", "<bos>", "<eos>", "<unk>", "a", "b", "c", "d"],
    }  # by count, ties alphabetically
    assert tok.encode("A, b") == [4, UNK, 5]  # "," was never seen
    rare = WordTokenizer.from_captions(["b a a", "c b a", "d"], min_count=2)
    assert rare.vocab_size == 6 and rare.encode("c d a") == [UNK, UNK, 4]
    assert WordTokenizer.from_captions(["a,b"]).tokens[4:] == [",", "a", "b"]  # "," on its own


def test_bpe_is_clips_bpe_restricted_to_the_training_tokens(bpe_available):
    # known answers from open_clip 3.3.0's SimpleTokenizer().encode
    assert bpe_clip_ids("a handwritten seven, slanted left.") == [
        320, 35192, 5757, 267, 44663, 775, 1823, 269,
    ]  # fmt: skip
    assert bpe_clip_ids("Grandma's old rag doll.") == [10525, 568, 896, 20687, 9286, 269]
    assert bpe_clip_ids("räuchermännchen 1.00") == [
        81, 10896, 84, 3597, 76, 10896, 8947, 8983, 272, 269, 271, 271,
    ]  # fmt: skip
    tok = BPETokenizer.from_captions(CAPTIONS)
    seen = {t for c in CAPTIONS for t in tok.encode(c)}
    assert seen == set(range(4, tok.vocab_size))  # only what the captions use
    d = tok.to_dict()
    assert d["kind"] == "bpe" and d["merges"] == "bpe_simple_vocab_16e6.txt.gz"
    assert tok.decode(tok.encode("a 750 cent piece.")) == "a 750 cent piece."  # digits glued
    with pytest.raises(UserError, match="sha256"):
        tokenizer_from_dict({**d, "merges_sha256": "0" * 64})


def test_encode_batch_pads_and_keeps_eos_when_cut():
    tok = build_tokenizer("word", CAPTIONS)
    out = encode_batch(tok, ["a handwritten seven", "the digit 7, written thickly"], 6)
    assert out.dtype == torch.int64 and out.shape == (2, 6)
    seven = tok.encode("a handwritten seven")
    assert out[0].tolist() == [BOS, *seven, EOS, PAD]
    assert out[1].tolist() == [BOS, *tok.encode("the digit 7, written")[:4], EOS]
    assert tok.decode(out[1]) == "the digit 7,"
    assert encode_batch(tok, ["a"], 2).tolist() == [[BOS, EOS]]
    assert encode_batch(tok, [], 4).shape == (0, 4)
    with pytest.raises(UserError, match=r"max_text_len=1 "):
        encode_batch(tok, ["a"], 1)


def test_bad_kinds_and_files_name_the_value(tmp_path):
    with pytest.raises(UserError, match=r"data.tokenizer='chars'.*allowed: word, bpe"):
        build_tokenizer("chars", CAPTIONS)
    with pytest.raises(UserError, match=r"kind='gpt'.*allowed: word, bpe"):
        tokenizer_from_dict({"kind": "gpt", "tokens": []})
    with pytest.raises(UserError, match="tokens"):
        tokenizer_from_dict({"kind": "word", "tokens": ["a", "b"]})
    with pytest.raises(UserError, match=r"cannot read the tokenizer .*missing.json"):
        load_tokenizer(tmp_path / "missing.json")
    (tmp_path / "torn.json").write_text('{"kind": "wo')
    with pytest.raises(UserError, match="torn.json"):
        load_tokenizer(tmp_path / "torn.json")
    with pytest.raises(UserError, match=r"min_count=0"):
        build_tokenizer("word", CAPTIONS, min_count=0)
