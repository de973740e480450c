"""`distillery cache`: run the teacher once over every prepared row and write data/cache/.

Outputs: data/cache/store (the cache), data/cache/report.json (dvc metrics), data/cache/plots/.
Resumable: a killed run continues from data/.scratch/cache/ (docs/cache_format.md).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

from pipeline.cache.open import open_cache
from pipeline.cache.params import CacheParams
from pipeline.cache.report import cache_report, write_plots
from pipeline.cache.writer import build_cache
from pipeline.config import load_section
from pipeline.data.prepared import load_prepared
from pipeline.io import atomic_write_json, replace_dir
from pipeline.teacher.params import TeacherParams
from pipeline.teacher.session import open_teacher, teacher_sha256


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default="params.yaml", help="params file (sections `cache`, `teacher`)")
    parser.add_argument("--prepared", default="data/prepared", help="prepared dataset directory")
    parser.add_argument("--teacher", default="data/teacher/model.onnx", help="teacher ONNX file")
    parser.add_argument("--out", default="data/cache", help="output directory (store/, report.json, plots/)")
    parser.add_argument("--scratch", default="data/.scratch/cache", help="resumable build directory")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    params = load_section(CacheParams, "cache", args.params)
    teacher_params = load_section(TeacherParams, "teacher", args.params)
    data = load_prepared(args.prepared)
    teacher = open_teacher(args.teacher, teacher_params.input_name, teacher_params.logits_name,
                           teacher_params.tap_names, provider=teacher_params.provider,
                           intra_op_threads=teacher_params.intra_op_threads)
    sha256 = teacher_sha256(args.teacher)
    out = Path(args.out)
    result = build_cache(data, teacher, sha256, data.fingerprint, params, out / "store", args.scratch,
                         progress=False if args.no_progress else None)
    cache = open_cache(result.store_dir, data.fingerprint, sha256, in_memory_max_bytes=params.in_memory_max_mb * 2**20)
    report = cache_report(cache, result.reference_rows, result.reference_logits)
    report["teacher_provider"] = result.provider
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        write_plots(cache, report, Path(tmp) / "plots")
        replace_dir(Path(tmp) / "plots", out / "plots")
    atomic_write_json(out / "report.json", report)
    print(f"cache: wrote {result.store_dir} ({len(cache)} rows, {result.shards_written} shards written, "
          f"{result.shards_resumed} resumed) and {out / 'report.json'}")
    return 0
