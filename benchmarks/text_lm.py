"""The text building blocks of issues 17 and 18, measured once end to end (minutes, not part of
`make bench`): the offline corpus, the BPE tokenizer (trained twice: identical files), the MiniLM
tokenizer's view of the same splits, the LM teacher (training time, held-out perplexity against
the unigram baseline), its ONNX export and parity, and a student of the same family trained from
scratch on the same stream (its perplexity, top-1 agreement and KL to the teacher).

    python benchmarks/text_lm.py --out data/text_lm            # figures in docs/text.md

Prints one JSON summary and writes it to <out>/summary.json beside corpus/, tokenizer.json,
teacher/, teacher.onnx and student/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.io import atomic_write_json
from pipeline.text.corpus import SPLIT_NAMES, build_corpus, write_corpus
from pipeline.text.lm import parameter_count, student_config, teacher_config
from pipeline.text.lm_export import check_lm_parity, export_lm_onnx
from pipeline.text.lm_train import (
    LMTrainParams,
    compare_to_teacher,
    evaluate_lm,
    save_lm,
    train_lm,
    unigram_baseline,
)
from pipeline.text.tokenizer import minilm_tokenizer_path, save_tokenizer, tokenize, train_bpe


def _timed(function, *args, **kwargs):
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args, **kwargs)
    return result, {
        "wall_s": round(time.perf_counter() - wall, 1),
        "cpu_s": round(time.process_time() - cpu, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/text_lm"))
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--student-steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"python": platform.python_version(), "load_average_start": os.getloadavg()[0]}

    corpus, summary["corpus_time"] = _timed(build_corpus)
    write_corpus(corpus, out / "corpus")
    summary["corpus"] = {"fingerprint": corpus.fingerprint, "stats": corpus.stats, "counts": corpus.counts()}

    train_texts = corpus.texts_of("train")
    tokenizer, summary["tokenizer_time"] = _timed(train_bpe, train_texts, args.vocab_size)
    save_tokenizer(tokenizer, out / "tokenizer.json")
    save_tokenizer(train_bpe(train_texts, args.vocab_size), out / "tokenizer.again.json")
    same = (out / "tokenizer.json").read_bytes() == (out / "tokenizer.again.json").read_bytes()
    summary["tokenizer"] = {"vocab_size": tokenizer.get_vocab_size(), "trained_twice_identical": same}

    config = teacher_config(tokenizer.get_vocab_size())
    tokens = {s: tokenize(tokenizer, corpus.texts_of(s), config.context) for s in SPLIT_NAMES}
    minilm = {s: tokenize(minilm_tokenizer_path(), corpus.texts_of(s), 128) for s in SPLIT_NAMES}
    summary["tokens"] = {
        name: {
            s: {"tokens": int(t.offsets[-1]), "truncated": t.truncated, "max_length": t.max_length}
            for s, t in table.items()
        }
        for name, table in (("bpe", tokens), ("minilm", minilm))
    }
    summary["unigram"] = {
        s: unigram_baseline(tokens["train"], tokens[s], config.vocab_size) for s in ("val", "test")
    }

    params = LMTrainParams(
        steps=args.steps,
        batch_size=args.batch_size,
        threads=args.threads,
        warmup_steps=max(1, args.steps // 10),
    )
    (teacher, report), timing = _timed(train_lm, config, tokens["train"].values, params, log_every=25)
    save_lm(teacher, out / "teacher")
    summary["teacher"] = {
        "config": config.model_dump(),
        "parameters": parameter_count(teacher),
        "train": params.model_dump(),
        "time": timing,
        "tokens_seen": report["tokens_seen"],
        "final_train_loss": report["final_loss"],
        **{s: evaluate_lm(teacher, tokens[s]) for s in ("val", "test")},
    }

    (_, export_time) = _timed(export_lm_onnx, teacher, out / "teacher.onnx")
    test = tokens["test"]
    order = np.argsort(test.lengths, kind="stable")
    batches = [
        test.padded(order[:1]),
        test.padded(order[-16:]),
        test.padded(order[100:116]),
        test.padded(order[-1:]),
    ]
    summary["parity"] = {
        "export_time": export_time,
        **check_lm_parity(teacher, out / "teacher.onnx", batches),
    }

    if args.student_steps:
        student_cfg = student_config(tokenizer.get_vocab_size())
        student_params = params.model_copy(
            update={"steps": args.student_steps, "warmup_steps": max(1, args.student_steps // 10)}
        )
        (student, report), timing = _timed(train_lm, student_cfg, tokens["train"].values, student_params, 25)
        save_lm(student, out / "student")
        summary["student_from_scratch"] = {
            "config": student_cfg.model_dump(),
            "parameters": parameter_count(student),
            "time": timing,
            **{s: evaluate_lm(student, tokens[s]) for s in ("val", "test")},
            "vs_teacher_test": compare_to_teacher(teacher, student, tokens["test"]),
        }
    summary["load_average_end"] = os.getloadavg()[0]
    summary["torch_threads"] = args.threads
    summary["torch"] = torch.__version__
    atomic_write_json(out / "summary.json", summary)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
