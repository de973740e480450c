"""`distillery prepare`: load the dataset named in params.yaml, split it, write data/prepared/."""

from __future__ import annotations

import argparse

from pipeline.config import load_section
from pipeline.data.params import PrepareParams
from pipeline.data.prepare import write_prepared_outputs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default="params.yaml", help="params file (section `prepare`)")
    parser.add_argument("--out", default="data/prepared", help="output directory")


def run(args: argparse.Namespace) -> int:
    params = load_section(PrepareParams, "prepare", args.params)
    summary = write_prepared_outputs(params, args.out)
    print(f"prepare: wrote {args.out}: {summary}")
    return 0
