"""`distillery leaderboard`: every evaluated student in one table (Markdown, CSV) and plots, under the
teacher."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.config import load_section
from pipeline.evaluate.latency import onnx_latency_ms
from pipeline.evaluate.leaderboard import build_leaderboard
from pipeline.evaluate.params import EvaluateParams
from pipeline.evaluate.reference import teacher_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default="params.yaml", help="params file (section `evaluate`)")
    parser.add_argument("--evaluate-dir", default="data/evaluate", help="the evaluate stage's output root")
    parser.add_argument(
        "--train-dir", default="data/train", help="the train stage's outputs (dvclive curves)"
    )
    parser.add_argument(
        "--cache", default="data/cache/store", help="teacher cache (the teacher's test logits)"
    )
    parser.add_argument(
        "--teacher", default="data/teacher/model.onnx", help="teacher ONNX (size and latency)"
    )
    parser.add_argument(
        "--sweep-dir",
        default="data/sweep",
        help="the sweep stage's root: its students (<dir>/evaluate, <dir>/train) are ranked as sweep/<model>",
    )
    parser.add_argument("--no-teacher", action="store_true", help="leave out the teacher reference row")
    parser.add_argument("--out", default="data/leaderboard", help="output directory")


def run(args: argparse.Namespace) -> int:
    params = load_section(EvaluateParams, "evaluate", args.params)
    teacher, teacher_bins = None, None
    if not args.no_teacher:
        from pipeline.cache.open import open_cache
        from pipeline.teacher.session import onnx_parameter_count, teacher_sha256

        # the row puts the file's size and latency beside the cache's accuracy: refuse a cache of
        # another teacher
        cache = open_cache(args.cache, teacher_sha256=teacher_sha256(args.teacher))
        if cache.schema.logits == "token":  # an LM: the teacher's perplexity on the students' test tokens
            from pipeline.evaluate.leaderboard import collect_metrics
            from pipeline.evaluate.lm_columns import lm_teacher_row

            reports = collect_metrics(args.evaluate_dir, required=False)
            teacher = lm_teacher_row(reports, onnx_parameter_count(args.teacher))
            args.no_teacher = True
        elif cache.schema.logits != "row":  # nothing to score a teacher without logits per row on
            print(f"leaderboard: no teacher row ({args.cache} holds no per-row teacher logits)")
            args.no_teacher = True
    if not args.no_teacher:
        latency = onnx_latency_ms(
            args.teacher,
            params.latency.batch_sizes,
            params.latency.providers,
            params.latency.warmup,
            params.latency.repeats,
            params.latency.intra_op_threads,
        )
        teacher, teacher_bins = teacher_report(
            cache, params.split, params.ece_bins, params.top_k, onnx_parameter_count(args.teacher), latency
        )
    rows = build_leaderboard(
        args.evaluate_dir, args.out, teacher, teacher_bins, args.train_dir, sweep_root=args.sweep_dir
    )
    print(f"leaderboard: {len(rows)} rows -> {Path(args.out) / 'leaderboard.md'}")
    return 0
