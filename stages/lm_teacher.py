"""`distillery lm-teacher`: train the LM scenario's causal LM teacher on the corpus's train split and
export it to ONNX with a parity check (params `lm_teacher:`, `text:`). Writes --out/model.onnx,
--out/torch/ and --out/metrics.json; `distillery teacher` then adopts model.onnx (`teacher.onnx`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.config import load_section
from pipeline.io import atomic_write_json
from pipeline.text.lm_scenario import LMTeacherParams, TextParams, build_lm_teacher


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default="params.yaml", help="params file (sections `lm_teacher`, `text`)")
    parser.add_argument("--data", default="data/text", help="what `distillery lm-data` wrote (--out)")
    parser.add_argument("--out", default="data/lm_teacher", help="output directory")


def run(args: argparse.Namespace) -> int:
    params = load_section(LMTeacherParams, "lm_teacher", args.params)
    text = load_section(TextParams, "text", args.params)
    metrics = build_lm_teacher(params, text, args.data, args.out)
    atomic_write_json(Path(args.out) / "metrics.json", metrics)
    print(
        f"lm-teacher: wrote {args.out}/model.onnx ({metrics['parameters']:,} parameters, "
        f"{metrics['train']['wall_s']:.0f} s): test perplexity {metrics['test']['perplexity']:.2f} "
        f"(unigram {metrics['unigram']['test']['perplexity']:.1f}), parity passed"
    )
    return 0
