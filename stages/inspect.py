"""`distillery inspect CACHE`: what a finished cache says about its teacher and its own fidelity.

Prints teacher accuracy and ECE per split, soft-label entropy at T in {1, 2, 4, 8}, the top-5 mass
and (with --teacher and --prepared) the stored dtype's KL error against fp32 logits recomputed on
a sample of rows; --out writes report.json and plots/.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from pipeline.cache.build import CacheBuild
from pipeline.cache.open import check_fingerprints, open_cache
from pipeline.cache.reference import reference_rows, shard_reference_logits
from pipeline.cache.report import cache_report, write_plots
from pipeline.io import atomic_write_json
from stages.cli import positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("cache", help="cache store directory, e.g. data/cache/store")
    parser.add_argument("--out", help="write report.json and plots/ here")
    parser.add_argument(
        "--teacher", help="teacher ONNX: re-run it on a sample to measure the stored KL error"
    )
    parser.add_argument("--prepared", help="prepared dataset directory (needed with --teacher)")
    parser.add_argument("--sample-rows", type=positive_int, default=4096, help="rows re-run with --teacher")


def _reference(cache, args):
    if not (args.teacher and args.prepared):
        return None, None
    from pipeline.data.prepared import open_for_reading
    from pipeline.teacher.session import open_teacher, teacher_sha256

    data = open_for_reading(args.prepared)  # whole when small (digits); else the sampled rows read per batch
    meta = cache.metadata
    check_fingerprints(
        args.cache, meta, data.fingerprint, teacher_sha256(args.teacher)
    )  # refuses a stale cache
    teacher = open_teacher(
        args.teacher,
        meta.teacher["input_name"],
        meta.teacher["logits_name"],
        meta.teacher["tap_names"] or None,
        inputs=meta.teacher.get("inputs"),
    )
    build = CacheBuild(Path(args.cache), meta, data)
    rows = reference_rows(len(cache), args.sample_rows, meta.layout.num_classes)
    logits = [shard_reference_logits(build, k, teacher, rows) for k in range(meta.layout.num_shards)]
    return rows, np.concatenate(logits)


def run(args: argparse.Namespace) -> int:
    if args.out:  # refused before the work, not after it (one line from stages/cli.py)
        Path(args.out).mkdir(parents=True, exist_ok=True)
    cache = open_cache(args.cache)
    rows, logits = _reference(cache, args)
    report = cache_report(cache, rows, logits)
    print(json.dumps(report, indent=2))
    if args.out:
        out = Path(args.out)
        atomic_write_json(out / "report.json", report)
        write_plots(cache, report, out / "plots")
    return 0
