"""`distillery prepare`: load the dataset named in params.yaml, split it, write data/prepared/."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.config import load_section
from pipeline.data.params import PrepareParams
from pipeline.data.prepare import TEACHER_TRAIN_DIR, describe, prepare_dataset
from pipeline.data.prepared import write_prepared


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default="params.yaml", help="params file (section `prepare`)")
    parser.add_argument("--out", default="data/prepared", help="output directory")


def run(args: argparse.Namespace) -> int:
    params = load_section(PrepareParams, "prepare", args.params)
    outputs = prepare_dataset(params)
    out = Path(args.out)
    write_prepared(outputs.dataset, out)
    if outputs.teacher_train is not None:
        write_prepared(outputs.teacher_train, out / TEACHER_TRAIN_DIR)
    print(f"prepare: wrote {out}: {describe(outputs.dataset)}")
    return 0
