"""`distillery`: one subcommand per DVC stage, plus the tools around them.

Each subcommand imports its stage module only when called, so `distillery losses` does not pay
for onnxruntime and `distillery cache` does not import the loss catalogue.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys

from pipeline.errors import DistilleryError

SUBCOMMANDS = {
    "check-params": (
        "stages.check_params",
        "validate all of params.yaml: every section, and the names they share",
    ),
    "prepare": ("stages.prepare", "split the dataset into train/val/test with stable sample ids"),
    "teacher": ("stages.teacher", "train and export the built-in teacher, or validate yours"),
    "cache": ("stages.cache", "run the teacher once over every split and write the cache"),
    "inspect": ("stages.inspect", "report on a finished cache: accuracy, entropy at T, calibration"),
    "train": ("stages.train", "train one student (all its seeds) from the cache"),
    "evaluate": ("stages.evaluate", "metrics of one student against the labels and the teacher"),
    "export": ("stages.export", "export one student to ONNX and check it against torch"),
    "leaderboard": ("stages.leaderboard", "gather every student's metrics into one table and plots"),
    "sweep": ("stages.sweep", "train many students as Dask tasks (local, Slurm, PBS)"),
    "label-curve": (
        "stages.label_curve",
        "accuracy against the number of labels, CE-only and KD, from one cache",
    ),
    "losses": ("stages.losses", "print the loss catalogue: families, parameters, formulas, sources"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distillery", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).add_arguments(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Build only the chosen subcommand's parser so `--help` of one stage imports one module.
    if argv and argv[0] in SUBCOMMANDS:
        module = importlib.import_module(SUBCOMMANDS[argv[0]][0])
        sub = argparse.ArgumentParser(prog=f"distillery {argv[0]}", description=SUBCOMMANDS[argv[0]][1])
        module.add_arguments(sub)
        args = sub.parse_args(argv[1:])
        try:
            return int(module.run(args) or 0)
        except DistilleryError as error:
            print(f"distillery {argv[0]}: {type(error).__name__}: {error}", file=sys.stderr)
            return 1
        except OSError as error:
            if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            where = f" writing {error.filename}" if error.filename else ""
            print(
                f"distillery {argv[0]}: DiskFullError: {error.strerror}{where}; free space and re-run "
                "the stage (every output is written atomically, so what was already written is intact)",
                file=sys.stderr,
            )
            return 1
    build_parser().parse_args(argv)
    return 2


if __name__ == "__main__":
    sys.exit(main())
