"""`distillery export --student NAME` (or `--params-students`, `--chain CHAIN`, `--all`): each trained
model of a student to ONNX, checked against torch on rows of the prepared data."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.config import load_section
from pipeline.export.params import ExportParams
from pipeline.export.run import ExportError, export_student_dir, int8_rows, trained_models
from pipeline.io import output_lock
from pipeline.names import child_path
from stages.cli import chain_name, student_name


def add_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--student", type=student_name, help="a name under `students:` in params.yaml")
    which.add_argument(
        "--all",
        action="store_true",
        help="every student directory under --train-dir (the `sweep` students: data/sweep/train)",
    )
    which.add_argument(
        "--params-students",
        action="store_true",
        help="every student under `students:` in params.yaml, in one process (the pipeline's `export` "
        "stage: one process start instead of one per student)",
    )
    which.add_argument(
        "--chain",
        type=chain_name,
        help="the teacher student of `chains.<CHAIN>` (the chain_teacher@<CHAIN> stage: its cache's teacher)",
    )
    parser.add_argument("--params", default="params.yaml", help="params file (section `export`)")
    parser.add_argument("--train-dir", default="data/train", help="where the train stage wrote the student")
    parser.add_argument(
        "--prepared", default="data/prepared", help="prepared dataset (parity rows; test rows for int8)"
    )
    parser.add_argument("--out", default="data/export", help="export root; models go to <out>/<model>/")


def _params_students(args: argparse.Namespace) -> list[str]:
    """The students `--params-students` or `--chain` names: every one under `students:`, or the
    student whose model teaches the chain (`<cohort>/<member>`: the cohort, every member exported)."""
    from pipeline.config import read_params_file
    from pipeline.evaluate.lineage import validate_chains

    raw = read_params_file(args.params)
    if args.params_students:
        return list(raw.get("students") or {})
    chains = validate_chains(raw.get("chains"))
    if args.chain not in chains:
        raise ExportError(f"{args.params}: no chain named {args.chain!r} under `chains:`")
    return [chains[args.chain].teacher.partition("/")[0]]


def run(args: argparse.Namespace) -> int:
    from pipeline.data.prepared import open_for_reading, open_prepared
    from pipeline.students.trained import trained_student_dirs
    from pipeline.teacher.export import worst_output

    params = load_section(ExportParams, "export", args.params)
    train_dir = Path(args.train_dir)
    if args.all:
        students = trained_student_dirs(train_dir)
    else:
        names = [args.student] if args.student else _params_students(args)
        students = [child_path(train_dir, name, "student") for name in names]
    for student_dir in students:
        trained_models(student_dir)  # nothing trained: say so before reading the data
    Path(args.out).mkdir(parents=True, exist_ok=True)  # the DVC output exists even when nothing is trained
    if not students:
        print(f"export: no trained students under {train_dir}; nothing to export")
        return 0
    fields = open_prepared(args.prepared)  # what a student of named inputs reads, per batch
    # the single input: whole when small (digits), else a view reading only the parity rows drawn
    prepared = open_for_reading(args.prepared) if fields.input_field is not None else None
    int8_data = None
    if params.int8 and prepared is not None:
        int8_data = int8_rows(prepared)
    out = Path(args.out)
    for student_dir in students:
        student = student_dir.name
        with output_lock(child_path(out, student, "student"), f"distillery export --student {student}"):
            reports = export_student_dir(
                student_dir, out, params, int8_data, None if prepared is None else prepared.inputs, fields
            )
        for model, report in reports.items():
            parity = report["parity"]
            name, worst = worst_output(parity)
            line = (
                f"export: {model} (seed {report['seed']}) -> {out / model / 'model.onnx'}: parity passed on "
                f"{parity['inputs']['source']}, batches {parity['batch_sizes']}; closest output {name!r}: "
                f"max |onnx - torch| {worst['max_abs_diff']:.2e} against tolerance {worst['tolerance']:.2e}"
            )
            if "int8" in report:
                line += f"; int8 accuracy change {report['int8']['accuracy_change']:+.4f}"
            print(line)
    return 0
