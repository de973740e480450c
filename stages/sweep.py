"""`distillery sweep`: train many students at once, one Dask task each, on the `cluster:` engine.

The alternative to the per-student `train@<student>` foreach: DVC runs stages one at a time, so
a grid of students on W workers runs here instead. Each student lands in `<out>/<student>/` (the
layout of `train@<student>`); a student that fails is listed with its traceback in the report and
the others' outputs are kept. Exit status 1 when any student failed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.cache.params import CacheParams
from pipeline.cluster.params import load_cluster_params, load_sweep_params
from pipeline.cluster.sweep import sweep_students, write_sweep_report
from pipeline.config import load_section, read_params_file
from pipeline.io import output_lock
from pipeline.train.params import select_student, validate_students
from stages.cli import seed, student_name


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--params", default="params.yaml", help="params file (sections students, sweep, cluster)"
    )
    parser.add_argument(
        "--students",
        nargs="+",
        type=student_name,
        default=None,
        help="names under `students:`, or `all` (default: `sweep.students` in params)",
    )
    parser.add_argument("--prepared", default="data/prepared", help="prepared dataset directory")
    parser.add_argument("--out", default="data/sweep/train", help="one <student>/ directory each")
    parser.add_argument(
        "--scratch", default="data/.scratch/sweep", help="resumable checkpoints, <student>/ each"
    )
    parser.add_argument("--report", default="data/sweep/report.json", help="per-student outcome (JSON)")
    parser.add_argument("--seeds", type=seed, nargs="+", default=None, help="override every student's seeds")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    students = validate_students(read_params_file(args.params).get("students"))
    chosen = args.students or load_sweep_params(args.params).students
    names = sorted(students) if chosen in ("all", ["all"]) else list(chosen)
    grid = {name: select_student(students, name) for name in names}
    cluster = load_cluster_params(args.params)
    Path(args.out).mkdir(parents=True, exist_ok=True)  # the DVC output exists even when empty
    if grid:
        print(f"sweep: {len(grid)} students on a {cluster.kind} cluster: {', '.join(grid)}")
    else:
        print("sweep: no students selected (sweep.students in params.yaml, or --students); nothing to train")
    results = {}
    if grid:
        _check_caches(grid, args.prepared, args.params)
        with output_lock(args.out, "distillery sweep"):
            results = sweep_students(
                cluster,
                grid,
                args.prepared,
                args.out,
                args.scratch,
                seeds=args.seeds,
                progress=not args.no_progress,
            )
    report = write_sweep_report(results, args.report)
    for name, result in results.items():
        if result.ok:
            accuracy = {
                model or name: figures.get("val_acc_mean")
                for model, figures in result.value["models"].items()
            }
            print(f"sweep: {name}: ok in {result.duration_s:.1f} s, val acc mean {accuracy}")
        else:
            print(f"sweep: {name}: FAILED\n{result.error}", file=sys.stderr)
    print(f"sweep: {len(report['ok'])} ok, {len(report['failed'])} failed; report in {Path(args.report)}")
    return 1 if report["failed"] else 0


def _check_caches(grid: dict, prepared_dir: str, params_path: str) -> None:
    """Every cache the students read that exists, checked here as `distillery train` checks it (the
    prepared data's fingerprint; built with params.yaml's `cache.views`), so a stale cache is one
    line before any task starts rather than one failed task per student. A missing cache fails its
    students' tasks alone, which the report lists."""
    from pipeline.data.dataset import open_prepared
    from pipeline.train.run import open_student_cache

    fingerprint = open_prepared(prepared_dir).fingerprint
    views = load_section(CacheParams, "cache", params_path).views
    for cache in sorted({params.cache for params in grid.values()}):
        if Path(cache).exists():
            open_student_cache(cache, fingerprint, views)
