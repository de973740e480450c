"""`distillery teacher`: train + export the built-in teacher, or validate and copy yours
(params `teacher.onnx`), then write data/teacher/model.onnx and data/teacher/metrics.json."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pipeline.config import load_section
from pipeline.data.prepared import load_prepared, open_for_reading
from pipeline.io import atomic_write_json
from pipeline.teacher.build import adopt_user_teacher, build_builtin_teacher, teacher_training_data
from pipeline.teacher.params import TeacherParams


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default="params.yaml", help="params file (section `teacher`)")
    parser.add_argument("--prepared", default="data/prepared", help="prepared data directory")
    parser.add_argument("--out", default="data/teacher", help="output directory")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    params = load_section(TeacherParams, "teacher", args.params)
    # your ONNX reads fields by name (several, ragged): the data in blocks when it is not one input
    data = load_prepared(args.prepared) if params.onnx is None else open_for_reading(args.prepared)
    out = Path(args.out)
    if params.onnx is None:
        teacher_train = teacher_training_data(args.prepared, data, params.builtin.train_on)
        metrics = build_builtin_teacher(
            data, teacher_train, params, out / "model.onnx", progress=sys.stderr.isatty()
        )
    else:
        metrics = adopt_user_teacher(params.onnx, data, params, out / "model.onnx")
    atomic_write_json(out / "metrics.json", metrics)
    print(
        f"teacher: wrote {out}/model.onnx ({metrics['source']}, {metrics['provider']}): "
        f"accuracy {metrics['accuracy']}"
    )
    return 0
