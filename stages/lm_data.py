"""`distillery lm-data`: the LM scenario's corpus, BPE tokenizer and prepared token dataset
(params `text:`; scenarios/lm, docs/token_distillation.md). Writes --out (corpus/,
tokenizer.json, summary.json) and the prepared dataset at --prepared."""

from __future__ import annotations

import argparse

from pipeline.config import load_section
from pipeline.text.lm_scenario import TextParams, prepare_lm_data


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default="params.yaml", help="params file (section `text`)")
    parser.add_argument("--out", default="data/text", help="corpus, tokenizer and summary directory")
    parser.add_argument("--prepared", default="data/prepared", help="prepared token dataset directory")


def run(args: argparse.Namespace) -> int:
    params = load_section(TextParams, "text", args.params)
    summary = prepare_lm_data(params, args.out, args.prepared)
    counts = ", ".join(
        f"{s} {v['sentences']} sentences / {v['tokens']} tokens" for s, v in summary["splits"].items()
    )
    print(f"lm-data: wrote {args.prepared} (V = {summary['vocab_size']}; {counts}) and {args.out}")
    return 0
