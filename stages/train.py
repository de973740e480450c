"""`distillery train --student NAME`: train one student (all its seeds) from the teacher cache."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.config import read_params_file
from pipeline.train.params import select_student, validate_students
from pipeline.train.run import train_student


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--student", required=True, help="a name under `students:` in params.yaml")
    parser.add_argument("--params", default="params.yaml", help="params file (section `students`)")
    parser.add_argument("--prepared", default="data/prepared", help="prepared dataset directory")
    parser.add_argument("--out", default=None, help="output directory (default data/train/<student>)")
    parser.add_argument(
        "--scratch", default=None, help="resumable checkpoints (default data/.scratch/train/<student>)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="override the student's seeds")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: the student's torch_threads)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    students = validate_students(read_params_file(args.params).get("students"))
    params = select_student(students, args.student)
    result = train_student(
        args.student,
        params,
        args.prepared,
        out_dir=Path(args.out or f"data/train/{args.student}"),
        scratch_dir=Path(args.scratch or f"data/.scratch/train/{args.student}"),
        seeds=args.seeds,
        progress=not args.no_progress and sys.stderr.isatty(),
        threads=args.threads,
    )
    for model, figures in result["models"].items():
        print(
            f"train: {model}: val acc per seed {json.dumps(figures['val_acc'])}, mean "
            f"{figures['val_acc_mean']}, std {figures['val_acc_std']} ({figures['num_parameters']} "
            f"parameters)"
        )
    print(f"train: wrote {result['out_dir']} in {result['seconds']:.1f} s")
    return 0
