"""The built-in language-model scenario's two builders (scenarios/lm, docs/token_distillation.md):

1. `prepare_lm_data`: the offline corpus (pipeline/text/corpus.py), a byte-level BPE trained on its
   train split, and a seeded sample of each split's sentences written as the prepared token dataset
   that `distillery cache` feeds the LM teacher and the students read (`input_ids`, `attention_mask`).
2. `build_lm_teacher`: the GPT-style teacher trained on the whole train split's token stream (more
   text than the students' transfer set), exported to ONNX (`logits` (B, L, V) per token, `hidden`),
   checked against torch, with its held-out perplexity and the unigram baseline.

Params: the `text:` and `lm_teacher:` sections of scenarios/lm/params.yaml (below).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from pydantic import Field

from pipeline.config import StrictModel
from pipeline.io import atomic_write_json
from pipeline.text.corpus import SPLIT_NAMES, Corpus, CorpusParams, build_corpus, load_corpus, write_corpus
from pipeline.text.lm import LMConfig, parameter_count
from pipeline.text.lm_export import check_lm_parity, export_lm_onnx
from pipeline.text.lm_train import LMTrainParams, evaluate_lm, save_lm, train_lm, unigram_baseline
from pipeline.text.token_dataset import write_token_dataset
from pipeline.text.tokenizer import load_tokenizer, save_tokenizer, tokenize, train_bpe


class SentenceCounts(StrictModel):
    """Sentences of each split written to the prepared dataset (a seeded sample in corpus order;
    null: all of them). The teacher always trains on the whole train split."""

    train: int | None = Field(None, ge=1)
    val: int | None = Field(None, ge=1)
    test: int | None = Field(None, ge=1)


class TextParams(StrictModel):
    """`text:`: the corpus, the BPE vocabulary, the longest sequence (tokens, special ones
    included: the teacher's and students' context) and the sentences of each split written."""

    corpus: CorpusParams = CorpusParams()
    vocab_size: int = Field(1024, ge=300, description="BPE entries: 4 special + 256 bytes + merges")
    max_length: int = Field(64, ge=4)
    sentences: SentenceCounts = SentenceCounts()


class LMTeacherParams(StrictModel):
    """`lm_teacher:`: the teacher's size (its context is `text.max_length`), its training, and the
    ONNX parity tolerance (max |onnx - torch| <= rtol max |torch| per output)."""

    layers: int = Field(4, ge=1)
    width: int = Field(192, ge=8)
    heads: int = Field(4, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    train: LMTrainParams = LMTrainParams(steps=400, batch_size=16, warmup_steps=40)
    parity_rtol: float = Field(1e-4, gt=0)


def sample_rows(corpus: Corpus, counts: SentenceCounts, seed: int) -> np.ndarray:
    """Corpus positions (int64, ascending) of `counts` sentences of each split drawn without
    replacement by numpy's PCG64 seeded with (seed, split index); every sentence of a split whose
    count is null or at least its size."""
    splits = np.asarray(corpus.splits)
    chosen = []
    for index, split in enumerate(SPLIT_NAMES):
        rows = np.flatnonzero(splits == split)
        count = getattr(counts, split)
        if count is not None and count < len(rows):
            rows = np.random.default_rng([seed, index]).choice(rows, size=count, replace=False)
        chosen.append(rows)
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def prepare_lm_data(params: TextParams, out: str | Path, prepared: str | Path) -> dict:
    """Build the corpus and the BPE, write `out`/corpus, `out`/tokenizer.json and the prepared token
    dataset at `prepared`. Returns the summary written to `out`/summary.json (counts, tokens,
    truncated sentences, fingerprints)."""
    out = Path(out)
    corpus = build_corpus(params.corpus)
    write_corpus(corpus, out / "corpus")
    tokenizer = train_bpe(corpus.texts_of("train"), params.vocab_size)
    save_tokenizer(tokenizer, out / "tokenizer.json")
    rows = sample_rows(corpus, params.sentences, params.corpus.seed)
    fingerprint = write_token_dataset(
        corpus, prepared, tokenizer, params.max_length, rows, num_classes=tokenizer.get_vocab_size()
    )
    tokenized = tokenize(tokenizer, [corpus.texts[i] for i in rows], params.max_length)
    splits = np.asarray(corpus.splits)[rows]
    summary = {
        "corpus_fingerprint": corpus.fingerprint,
        "python_version": corpus.python_version,
        "vocab_size": tokenizer.get_vocab_size(),
        "max_length": params.max_length,
        "prepared_fingerprint": fingerprint,
        "splits": {
            split: {
                "corpus_sentences": int(np.sum(np.asarray(corpus.splits) == split)),
                "sentences": int(np.sum(splits == split)),
                "tokens": int(tokenized.lengths[splits == split].sum()),
            }
            for split in SPLIT_NAMES
        },
        "truncated": tokenized.truncated,
    }
    atomic_write_json(out / "summary.json", summary)
    return summary


def build_lm_teacher(params: LMTeacherParams, text: TextParams, data: str | Path, out: str | Path) -> dict:
    """Train the teacher on the train split of `data`/corpus (tokenised by `data`/tokenizer.json),
    write `out`/model.onnx (parity-checked), `out`/torch (safetensors) and return its metrics
    {parameters, train: {...}, val/test: {nll, perplexity, tokens}, unigram: {...}, parity}."""
    data, out = Path(data), Path(out)
    corpus = load_corpus(data / "corpus")
    tokenizer = load_tokenizer(data / "tokenizer.json")
    config = LMConfig(
        vocab_size=tokenizer.get_vocab_size(),
        context=text.max_length,
        layers=params.layers,
        width=params.width,
        heads=params.heads,
        dropout=params.dropout,
    )
    tokens = {split: tokenize(tokenizer, corpus.texts_of(split), config.context) for split in SPLIT_NAMES}
    start = time.perf_counter()
    model, report = train_lm(config, tokens["train"].values, params.train, log_every=50)
    save_lm(model, out / "torch")
    export_lm_onnx(model, out / "model.onnx")
    test = tokens["test"]
    order = np.argsort(test.lengths, kind="stable")
    batches = [test.padded(order[:1]), test.padded(order[-7:]), test.padded(order[: min(64, len(order))])]
    parity = check_lm_parity(model, out / "model.onnx", batches, rtol=params.parity_rtol)
    return {
        "parameters": parameter_count(model),
        "config": config.model_dump(),
        "train": {k: v for k, v in report.items() if k != "losses"} | {"wall_s": time.perf_counter() - start},
        **{split: evaluate_lm(model, tokens[split]) for split in ("val", "test")},
        "unigram": {
            s: unigram_baseline(tokens["train"], tokens[s], config.vocab_size) for s in ("val", "test")
        },
        "parity": parity,
    }
