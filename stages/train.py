"""`distillery train --student NAME`: train one student (all its seeds) from the teacher cache.

With `--nproc N` (or the student's `nproc`) the stage launches N copies of itself through torch's
launcher (pipeline/train/distributed.py) and waits for them; each copy trains its slice of every
batch with PyTorch DDP, and rank 0 writes the outputs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.cache.params import CacheParams
from pipeline.config import load_section, read_params_file
from pipeline.io import output_lock
from pipeline.names import child_path
from pipeline.train import distributed
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
    parser.add_argument(
        "--nproc",
        type=positive_int,
        default=None,
        help="processes training the student with PyTorch DDP, launched by torchrun (default: its nproc)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _worker_arguments(args: argparse.Namespace, out: Path, scratch: Path, nproc: int) -> list[str]:
    """This stage's command line for the launched processes."""
    arguments = ["train", "--student", args.student, "--params", args.params, "--prepared", args.prepared]
    arguments += ["--out", str(out), "--scratch", str(scratch), "--nproc", str(nproc)]
    if args.seeds is not None:
        arguments += ["--seeds", *map(str, args.seeds)]
    if args.threads is not None:
        arguments += ["--threads", str(args.threads)]
    if args.no_progress:
        arguments.append("--no-progress")
    return arguments


def _train(args: argparse.Namespace, params, out: Path, scratch: Path, ranks: distributed.Ranks) -> dict:
    return train_student(
        args.student,
        params,
        args.prepared,
        out_dir=out,
        scratch_dir=scratch,
        seeds=args.seeds,
        progress=not args.no_progress and sys.stderr.isatty(),
        threads=args.threads,
        ranks=ranks,
        cache_views=load_section(CacheParams, "cache", args.params).views,
    )


def run(args: argparse.Namespace) -> int:
    students = validate_students(read_params_file(args.params).get("students"))
    params = select_student(students, args.student)
    nproc = params.nproc if args.nproc is None else args.nproc
    if nproc != params.nproc:
        distributed.check_split(params, nproc)
        params = params.model_copy(update={"nproc": nproc})
    out = Path(args.out) if args.out else child_path("data/train", args.student, "student")
    scratch = (
        Path(args.scratch) if args.scratch else child_path("data/.scratch/train", args.student, "student")
    )
    if distributed.in_worker():  # one of the processes the launcher below started: it holds the lock
        ranks = distributed.Ranks.from_environment()
        distributed.die_with_launcher()
        result = _train(args, params, out, scratch, ranks)
        if not ranks.writes:
            return 0
    else:
        with output_lock(out, f"distillery train --student {args.student}"):
            if nproc > 1:
                distributed.launch(nproc, "stages.cli", _worker_arguments(args, out, scratch, nproc))
                print(f"train: {nproc} processes trained {args.student} into {out}")
                return 0
            result = _train(args, params, out, scratch, distributed.SINGLE)
    for model, figures in result["models"].items():
        print(
            f"train: {model}: val acc per seed {json.dumps(figures['val_acc'])}, mean "
            f"{figures['val_acc_mean']}, std {figures['val_acc_std']} ({figures['num_parameters']} "
            f"parameters)"
        )
    print(f"train: wrote {result['out_dir']} in {result['seconds']:.1f} s")
    return 0
