"""`distillery evaluate --student NAME`: metrics of every seed of a student on the test split."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.cache.open import open_cache
from pipeline.config import load_section, read_params_file
from pipeline.data.prepared import load_prepared
from pipeline.evaluate.evaluation import join_split
from pipeline.evaluate.params import EvaluateParams
from pipeline.evaluate.run import evaluate_student_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--student", required=True, help="a name under `students:` in params.yaml")
    parser.add_argument("--params", default="params.yaml", help="params file (sections `evaluate`, `students`)")
    parser.add_argument("--train-dir", default="data/train", help="where the train stage wrote the student")
    parser.add_argument("--prepared", default="data/prepared", help="prepared dataset directory")
    parser.add_argument("--cache", default=None, help="teacher cache (default: the student's `cache`)")
    parser.add_argument("--export-dir", default="data/export", help="export root (ONNX for latency)")
    parser.add_argument("--out", default=None, help="output directory (default data/evaluate/<student>)")


def run(args: argparse.Namespace) -> int:
    params = load_section(EvaluateParams, "evaluate", args.params)
    recipe = (read_params_file(args.params).get("students") or {}).get(args.student) or {}
    prepared = load_prepared(args.prepared)
    cache = open_cache(args.cache or recipe.get("cache", "data/cache/store"), dataset_fingerprint=prepared.fingerprint)
    data = join_split(prepared, cache, params.split)
    out = Path(args.out or f"data/evaluate/{args.student}")
    reports = evaluate_student_dir(Path(args.train_dir) / args.student, data, params, recipe, args.export_dir, out)
    for model, report in reports.items():
        accuracy, latency = report["accuracy"], report["latency_ms"].get("cpu_b1")
        latency = f"{latency:.3f}" if isinstance(latency, float) else latency
        print(f"evaluate: {model}: {data.name} accuracy {accuracy['mean']:.4f} ± {accuracy['std']:.4f} over "
              f"{report['seeds']} seeds, agreement {report['agreement']['mean']:.4f}, "
              f"CPU latency b1 {latency} ms -> {out / 'metrics.json'}")
    return 0
