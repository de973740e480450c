"""all-MiniLM-L6-v2 as a Distillery teacher, measured once end to end through the real commands
(minutes, not part of `make bench`): the offline corpus, `distillery export-teacher
--sentence-transformer` (parity against torch and sentence-transformers' encode on the test
split's sentences), the chosen splits as a prepared token dataset, `distillery cache` without
logits, the cached sentence embedding against `encode` (fp16 storage error), and the teacher's
encode throughput (ONNX Runtime, CPU, one thread, batch 1 and 64).

    python benchmarks/minilm_teacher.py --out data/minilm --splits test   # figures in docs/text.md

Prints one JSON summary and writes it to <out>/summary.json beside corpus/, export/, prepared/, cache/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from pipeline.cache.open import open_cache
from pipeline.evaluate.embedding import encode_throughput
from pipeline.io import atomic_write_json
from pipeline.teacher.sentence_encoder import load_sentence_transformer
from pipeline.text.corpus import build_corpus, write_corpus
from pipeline.text.token_dataset import write_token_dataset
from pipeline.text.tokenizer import minilm_tokenizer_path, tokenize
from stages.cli import main

MAX_LENGTH = 256  # the model's max_seq_length
PARAMS = """teacher:
  inputs: {input_ids: input_ids, attention_mask: attention_mask}
  logits_name: null
cache:
  batch_size: 64
"""


def _run(argv: list[str]) -> float:
    start = time.perf_counter()
    code = main(argv)
    if code != 0:
        raise SystemExit(f"distillery {argv[0]} failed ({code})")
    return time.perf_counter() - start


def main_benchmark(out: Path, splits: list[str], encode_sentences: int) -> dict:
    corpus = build_corpus()
    write_corpus(corpus, out / "corpus")
    export = out / "export" / "model.onnx"
    export_s = _run(
        ["export-teacher", "--sentence-transformer", "--corpus", str(out / "corpus"), "--out", str(export)]
    )
    parity = json.loads((export.parent / "parity.json").read_text())["parity"]
    rows = np.flatnonzero(np.isin(np.asarray(corpus.splits), splits))
    write_token_dataset(corpus, out / "prepared", minilm_tokenizer_path(), MAX_LENGTH, rows)
    (out / "params.yaml").write_text(PARAMS)
    cache_s = _run(
        [
            "cache",
            "--params",
            str(out / "params.yaml"),
            "--prepared",
            str(out / "prepared"),
            "--teacher",
            str(export),
            "--out",
            str(out / "cache"),
            "--scratch",
            str(out / "scratch"),
            "--no-progress",
        ]  # fmt: skip
    )
    report = json.loads((out / "cache" / "report.json").read_text())
    cache = open_cache(out / "cache" / "store", mode="memory")
    order = np.argsort(cache.sample_id)
    cached = np.asarray(cache.features["sentence_embedding"], np.float64)[order]
    texts = [corpus.texts[i] for i in np.sort(cache.sample_id)]
    start = time.perf_counter()
    want = load_sentence_transformer().encode(texts, batch_size=64, convert_to_numpy=True).astype(np.float64)
    encode_s = time.perf_counter() - start
    cosines = np.sum(cached * want, 1) / np.linalg.norm(cached, axis=1) / np.linalg.norm(want, axis=1)
    tokenized = tokenize(minilm_tokenizer_path(), texts[:encode_sentences], MAX_LENGTH)
    summary = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "corpus_fingerprint": corpus.fingerprint,
        "export_s": round(export_s, 1),
        "parity_batch_sizes": parity["batch_sizes"],
        "parity_padded_rows": parity["padded_rows"],
        "parity_torch_max_relative_error": max(
            o["relative_error"] for o in parity["torch"]["outputs"].values()
        ),
        "parity_encode_min_cosine": parity["sentence_transformers"]["min_cosine"],
        "parity_encode_max_abs_diff": parity["sentence_transformers"]["max_abs_diff"],
        "cached_splits": splits,
        "cached_rows": report["rows"],
        "cached_tokens": report["tokens"],
        "cache_s": round(cache_s, 1),
        "cache_bytes_per_sample": report["bytes_per_sample"],
        "cache_vs_encode_max_abs_diff": float(np.abs(cached - want).max()),
        "cache_vs_encode_min_cosine": float(cosines.min()),
        "fp16_bound": float(2.0**-11 * np.abs(want).max()),
        "sentence_transformers_encode_s": round(encode_s, 1),
        "teacher_encode_one_thread": encode_throughput(
            export, tokenized, (1, 64), encode_sentences, intra_op_threads=1
        ),
    }
    atomic_write_json(out / "summary.json", summary)
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="data/minilm", type=Path)
    parser.add_argument("--splits", nargs="+", default=["test"], choices=["train", "val", "test"])
    parser.add_argument("--encode-sentences", type=int, default=256)
    args = parser.parse_args()
    print(json.dumps(main_benchmark(args.out, args.splits, args.encode_sentences), indent=2))
