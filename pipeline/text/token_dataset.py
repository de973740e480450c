"""The corpus as a prepared dataset of token sequences: what `distillery cache` feeds a text teacher.

One row per sentence, in corpus order: `sample_id` its position in the corpus (int64), `split` the
sentence's document split (train/val/test), `label` -1 (sentences have no class), and two ragged
int64 fields, `input_ids` (the teacher's own tokenizer, special tokens included, cut to
`max_length`) and `attention_mask` (ones, the same length), so `teacher.inputs: {input_ids:
input_ids, attention_mask: attention_mask}` feeds an encoder with both (the cache pads each batch to
its longest row and stores per-token outputs ragged, docs/cache_format.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from pipeline.data.fields import Ragged
from pipeline.data.prepared import split_codes
from pipeline.data.writer import write_arrays
from pipeline.text.corpus import Corpus
from pipeline.text.tokenizer import TokenizedText, tokenize

FIELDS = ("input_ids", "attention_mask")
NUM_CLASSES = 1
"""The prepared format asks for a class count; sentences carry none (every label is -1)."""


def token_fields(tokenized: TokenizedText) -> dict[str, Ragged]:
    """{"input_ids", "attention_mask"}: Ragged int64 rows of `tokenized` (mask all ones)."""
    offsets = np.asarray(tokenized.offsets, np.int64)
    return {
        "input_ids": Ragged(np.asarray(tokenized.values, np.int64), offsets),
        "attention_mask": Ragged(np.ones(len(tokenized.values), np.int64), offsets.copy()),
    }


def write_token_dataset(
    corpus: Corpus,
    directory: str | Path,
    tokenizer: Tokenizer | str | Path,
    max_length: int,
    rows: Sequence[int] | np.ndarray | None = None,
    num_classes: int = NUM_CLASSES,
) -> str:
    """Tokenise the sentences of `corpus` (all, or the corpus positions `rows`, in that order) with
    `tokenizer` (cut to `max_length` tokens) and write them as a prepared dataset (format 2) at
    `directory`, atomically. `num_classes`: the class count recorded (an LM teacher's per-token
    logits have one class per vocabulary entry: pass V). Returns its fingerprint."""
    rows = np.arange(len(corpus.texts)) if rows is None else np.asarray(rows, np.int64)
    tokenized = tokenize(tokenizer, [corpus.texts[i] for i in rows], max_length)
    return write_arrays(
        directory,
        rows.astype(np.int64),
        split_codes(np.asarray([corpus.splits[i] for i in rows])),
        np.full(len(rows), -1, np.int64),
        num_classes,
        token_fields(tokenized),
    )
