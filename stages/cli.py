"""`distillery`: one subcommand per DVC stage, plus the tools around them.

Each subcommand imports its stage module only when called, so `distillery losses` does not pay
for onnxruntime and `distillery cache` does not import the loss catalogue.

Whatever goes wrong is one line on stderr, never a traceback: `distillery <stage>: <Error>: <message>`
and exit 1 for bad input or state (a `DistilleryError`, or the file system refusing a write), exit 2
for a bad command line (`UsageError`), exit 130 for Ctrl-C. Set DISTILLERY_TRACEBACK=1 to get the
traceback of a file-system error instead.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys

from pipeline.errors import DistilleryError

SUBCOMMANDS = {
    "check-params": (
        "stages.check_params",
        "validate all of params.yaml: every section, and the names they share",
    ),
    "prepare": ("stages.prepare", "split the dataset into train/val/test with stable sample ids"),
    "lm-data": ("stages.lm_data", "the LM scenario: offline corpus, BPE tokenizer, prepared token dataset"),
    "lm-teacher": ("stages.lm_teacher", "the LM scenario: train the causal LM teacher and export it to ONNX"),
    "teacher": ("stages.teacher", "train and export the built-in teacher, or validate yours"),
    "export-teacher": (
        "stages.export_teacher",
        "export any torch module (factory, timm, Hugging Face) as the ONNX teacher, taps as outputs",
    ),
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

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


# --- argument types: a bad value is refused by argparse, before the stage does anything --------------


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (threads, rows, sizes)."""
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def seed(text: str) -> int:
    """argparse type: a random seed, 0 .. 2**32-1 (as `pipeline.config.Seed`)."""
    value = _integer(text)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"seed {value} is outside 0 .. 2**32-1")
    return value


def _name_of(what: str, text: str) -> str:
    from pipeline.names import InvalidNameError, check_name

    try:
        return check_name(text, what)
    except InvalidNameError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def student_name(text: str) -> str:
    """argparse type: a student name, held to `pipeline.names` (it becomes a directory)."""
    return _name_of("student", text)


def chain_name(text: str) -> str:
    """argparse type: a chain name (a key of `chains:`), held to `pipeline.names`."""
    return _name_of("chain", text)


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error: `distillery <stage>: UsageError: <what>`, exit 2."""

    def error(self, message: str):
        print(f"{self.prog}: UsageError: {message}; see `{self.prog} --help`", file=sys.stderr)
        sys.exit(2)


# --- the file system refusing a write, as one line -----------------------------------------------------

_OS_ERRORS = {
    errno.ENOSPC: ("DiskFullError", "free space and re-run the stage"),
    errno.EDQUOT: ("DiskFullError", "free space and re-run the stage"),
    errno.EROFS: ("ReadOnlyFileSystemError", "make it writable (or write elsewhere) and re-run the stage"),
    errno.EACCES: ("PermissionError", "fix the permissions (or write elsewhere) and re-run the stage"),
    errno.EPERM: ("PermissionError", "fix the permissions (or write elsewhere) and re-run the stage"),
}
_WRITE_ONLY = ("DiskFullError", "ReadOnlyFileSystemError")
_INTACT = "every output is written atomically, so what was already written is intact"


def os_error_line(error: OSError) -> str:
    """`<Error>: <what> writing <file>; <fix> (<intact>)` for an OSError a stage did not expect."""
    kind, fix = _OS_ERRORS.get(error.errno, ("FileSystemError", "fix the path and re-run the stage"))
    where = ""
    if error.filename:  # disk full and read-only happen only on writes; the others on reads too
        where = f" writing {error.filename}" if kind in _WRITE_ONLY else f": {error.filename}"
    return f"{kind}: {error.strerror or error}{where}; {fix} ({_INTACT})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distillery", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).add_arguments(sub)
    return parser


def _run_stage(stage: str, argv: list[str]) -> int:
    # Build only the chosen subcommand's parser so `--help` of one stage imports one module.
    module = importlib.import_module(SUBCOMMANDS[stage][0])
    sub = _Parser(prog=f"distillery {stage}", description=SUBCOMMANDS[stage][1])
    module.add_arguments(sub)
    args = sub.parse_args(argv)
    return int(module.run(args) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not (argv and argv[0] in SUBCOMMANDS):
        build_parser().parse_args(argv)
        return 2
    stage = argv[0]
    try:
        return _run_stage(stage, argv[1:])
    except DistilleryError as error:
        print(f"distillery {stage}: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        if os.environ.get("DISTILLERY_TRACEBACK"):
            raise
        print(f"distillery {stage}: {os_error_line(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"distillery {stage}: interrupted; re-run to resume ({_INTACT})", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
