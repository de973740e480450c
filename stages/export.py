"""`distillery export --student NAME`: each trained model of a student to ONNX, checked against torch."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.config import load_section
from pipeline.export.params import ExportParams
from pipeline.export.run import export_student_dir
from pipeline.io import output_lock
from pipeline.names import child_path
from stages.cli import student_name


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--student", required=True, type=student_name, help="a name under `students:` in params.yaml"
    )
    parser.add_argument("--params", default="params.yaml", help="params file (section `export`)")
    parser.add_argument("--train-dir", default="data/train", help="where the train stage wrote the student")
    parser.add_argument("--prepared", default="data/prepared", help="prepared dataset (test rows for int8)")
    parser.add_argument("--out", default="data/export", help="export root; models go to <out>/<model>/")


def run(args: argparse.Namespace) -> int:
    params = load_section(ExportParams, "export", args.params)
    int8_data = None
    if params.int8:
        from pipeline.data.prepared import load_prepared

        prepared = load_prepared(args.prepared)
        rows = prepared.rows("test", labelled_only=True)
        int8_data = (prepared.inputs[rows], prepared.label[rows])
    student_dir = child_path(args.train_dir, args.student, "student")
    with output_lock(
        child_path(args.out, args.student, "student"), f"distillery export --student {args.student}"
    ):
        reports = export_student_dir(student_dir, args.out, params, int8_data)
    for model, report in reports.items():
        worst = max(stats["max_abs_diff"] for stats in report["parity"]["outputs"].values())
        line = (
            f"export: {model} (seed {report['seed']}) -> {Path(args.out) / model / 'model.onnx'}: "
            f"parity passed at "
            f"batches {report['parity']['batch_sizes']}, max abs diff {worst:.2e}"
        )
        if "int8" in report:
            line += f"; int8 accuracy change {report['int8']['accuracy_change']:+.4f}"
        print(line)
    return 0
