"""`distillery cache`: run a teacher once over every prepared row and write its cache.

Outputs (under --out, default data/cache): store/ (the cache), report.json (dvc metrics), plots/.
Resumable: a killed run continues from --scratch (docs/cache_format.md). The teacher is any ONNX
file with the `teacher:` section's input/logits names: the built-in teacher, yours, or an exported
student (`data/chains/<chain>/teacher/<student>/model.onnx`), which makes a chain cache (docs/pipeline.md).
With `cluster.shard_cache: true` the shards are computed by Dask workers (docs/cluster.md); the
store is byte-identical to the single-process build.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

from pipeline.cache.open import open_cache
from pipeline.cache.params import CacheParams, validate_cache_variants
from pipeline.cache.report import cache_report, write_plots
from pipeline.cache.writer import BuildResult, build_cache
from pipeline.config import load_section, read_params_file
from pipeline.data.prepared import PreparedData, open_for_reading
from pipeline.errors import DistilleryError
from pipeline.io import atomic_write_json, output_lock, replace_dir
from pipeline.teacher.params import TeacherParams
from pipeline.teacher.session import open_teacher, teacher_sha256


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--params", default="params.yaml", help="params file (sections `cache`, `teacher`, `cluster`)"
    )
    parser.add_argument(
        "--variant",
        default=None,
        help="read the cache settings from `caches.<VARIANT>` instead of `cache` (another form of the same "
        "teacher's cache, e.g. sampled or top-k token logits: scenarios/lm)",
    )
    parser.add_argument("--prepared", default="data/prepared", help="prepared dataset directory")
    parser.add_argument(
        "--teacher",
        default="data/teacher/model.onnx",
        help="teacher ONNX file (an exported student makes a chain cache)",
    )
    parser.add_argument("--out", default="data/cache", help="output directory (store/, report.json, plots/)")
    parser.add_argument("--scratch", default="data/.scratch/cache", help="resumable build directory")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _build(
    args: argparse.Namespace,
    data: PreparedData,
    sha256: str,
    params: CacheParams,
    teacher_params: TeacherParams,
    store_dir: Path,
) -> BuildResult:
    """The cache build, on the `cluster:` engine where `cluster.shard_cache` is true, else here."""
    from pipeline.cluster.params import load_cluster_params

    cluster = load_cluster_params(args.params)
    names = teacher_params.session_options()
    if cluster.shard_cache:
        from pipeline.cluster.sharded_cache import build_cache_on_cluster

        logging.info("cache: shards computed on a %s Dask cluster (cluster.shard_cache)", cluster.kind)
        return build_cache_on_cluster(
            cluster,
            args.prepared,
            args.teacher,
            sha256,
            data.fingerprint,
            params,
            store_dir,
            args.scratch,
            progress=not args.no_progress,
            **names,
        )
    teacher = open_teacher(args.teacher, **names)
    return build_cache(
        data,
        teacher,
        sha256,
        data.fingerprint,
        params,
        store_dir,
        args.scratch,
        progress=False if args.no_progress else None,
    )


class CacheVariantError(DistilleryError):
    """`--variant` names no entry of the params file's `caches:` section."""


def _cache_params(args: argparse.Namespace) -> CacheParams:
    """The `cache:` section, or with --variant the `caches.<variant>` entry."""
    variant = getattr(args, "variant", None)  # a Namespace built without the option: the `cache:` section
    if variant is None:
        return load_section(CacheParams, "cache", args.params)
    variants = validate_cache_variants(read_params_file(args.params).get("caches"))
    if variant not in variants:
        raise CacheVariantError(
            f"--variant {variant}: {args.params} has no caches.{variant} "
            f"(caches: {', '.join(variants) or 'none'}); add it or pick one of those"
        )
    return variants[variant]


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    params = _cache_params(args)
    teacher_params = load_section(TeacherParams, "teacher", args.params)
    data = open_for_reading(args.prepared)  # whole when small (digits), read in blocks when large
    sha256 = teacher_sha256(args.teacher)
    out = Path(args.out)
    # one writer per output and per scratch (a second run refuses at once); taking each lock
    # deletes what killed runs left in it (.tmp-* files, .old-store.<pid>)
    with output_lock(out, "distillery cache"), output_lock(args.scratch, "distillery cache"):
        result = _build(args, data, sha256, params, teacher_params, out / "store")
        cache = open_cache(
            result.store_dir, data.fingerprint, sha256, in_memory_max_bytes=params.in_memory_max_mb * 2**20
        )
        report = cache_report(cache, result.reference_rows, result.reference_logits)
        report["teacher_provider"] = result.provider
        report["teacher"] = str(args.teacher)
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out, prefix=".tmp-plots-") as tmp:
            write_plots(cache, report, Path(tmp) / "plots")
            replace_dir(Path(tmp) / "plots", out / "plots")
        atomic_write_json(out / "report.json", report)
    print(
        f"cache: wrote {result.store_dir} ({len(cache)} rows, {result.shards_written} shards written, "
        f"{result.shards_resumed} resumed) from {args.teacher} and {out / 'report.json'}"
    )
    return 0
