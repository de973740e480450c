"""`distillery label-curve`: CE-only and KD students at several label budgets from one cache ->
data/label_curve/. Every run (student, budget, seed) is a Dask task on the `cluster:` engine."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.cluster.params import load_cluster_params
from pipeline.config import load_section, read_params_file
from pipeline.data.prepared import open_for_training
from pipeline.train.label_curve import (
    LabelCurveParams,
    clear_scratch,
    run_label_curve_on_cluster,
    summarise,
    write_curve,
)
from pipeline.train.params import validate_students
from pipeline.train.run import open_student_cache


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--params", default="params.yaml", help="params file (sections `label_curve`, `students`, `cluster`)"
    )
    parser.add_argument("--prepared", default="data/prepared", help="prepared dataset directory")
    parser.add_argument("--cache", default="data/cache/store", help="the one teacher cache every point reads")
    parser.add_argument("--out", default="data/label_curve", help="output directory")
    parser.add_argument(
        "--scratch", default="data/.scratch/label_curve", help="models trained on the way (removed after)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    curve = load_section(LabelCurveParams, "label_curve", args.params)
    students = validate_students(read_params_file(args.params).get("students"))
    cluster = load_cluster_params(args.params)
    prepared, _ = open_for_training(args.prepared)  # the content checked; large data left on disk
    # a stale or missing cache is one line here, before any worker starts
    open_student_cache(args.cache, prepared.fingerprint)
    rows = run_label_curve_on_cluster(
        cluster,
        curve,
        students,
        args.prepared,
        args.cache,
        args.scratch,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    write_curve(rows, args.out)
    clear_scratch(args.scratch)
    for student, points in summarise(rows).items():
        cells = ", ".join(
            f"{n} labels {p['mean']:.4f} ± {p['std']:.4f}"
            + (f" (clipped: {', '.join(p['clipped_classes'])})" if p["clipped"] else "")
            for n, p in sorted(points.items(), key=lambda item: int(item[0]))
        )
        print(f"label-curve: {student}: {cells}")
    print(f"label-curve: wrote {Path(args.out) / 'curve.csv'}, curve.json, plot.csv, curve.png")
    return 0
