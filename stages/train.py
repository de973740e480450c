"""`distillery train --student NAME`: train one student (all its seeds) from the teacher cache."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.cache.params import CacheParams
from pipeline.config import load_section, read_params_file
from pipeline.io import output_lock
from pipeline.names import child_path
from pipeline.train.params import select_student, validate_students
from pipeline.train.run import train_student
from stages.cli import positive_int, seed, student_name


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--student", required=True, type=student_name, help="a name under `students:` in params.yaml"
    )
    parser.add_argument("--params", default="params.yaml", help="params file (sections `students`, `cache`)")
    parser.add_argument("--prepared", default="data/prepared", help="prepared dataset directory")
    parser.add_argument("--out", default=None, help="output directory (default data/train/<student>)")
    parser.add_argument(
        "--scratch", default=None, help="resumable checkpoints (default data/.scratch/train/<student>)"
    )
    parser.add_argument("--seeds", type=seed, nargs="+", default=None, help="override the student's seeds")
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch intra-op threads (default: the student's torch_threads)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    students = validate_students(read_params_file(args.params).get("students"))
    params = select_student(students, args.student)
    out_dir = Path(args.out) if args.out else child_path("data/train", args.student, "student")
    scratch_dir = (
        Path(args.scratch) if args.scratch else child_path("data/.scratch/train", args.student, "student")
    )
    with output_lock(out_dir, f"distillery train --student {args.student}"):
        result = train_student(
            args.student,
            params,
            args.prepared,
            out_dir=out_dir,
            scratch_dir=scratch_dir,
            seeds=args.seeds,
            progress=not args.no_progress and sys.stderr.isatty(),
            threads=args.threads,
            cache_views=load_section(CacheParams, "cache", args.params).views,
        )
    for model, figures in result["models"].items():
        print(
            f"train: {model}: val acc per seed {json.dumps(figures['val_acc'])}, mean "
            f"{figures['val_acc_mean']}, std {figures['val_acc_std']} ({figures['num_parameters']} "
            f"parameters)"
        )
    print(f"train: wrote {result['out_dir']} in {result['seconds']:.1f} s")
    return 0
