"""Build the teacher cache: run the teacher over every row, write whole shards, resume after a kill.

The build lives in an undeclared scratch directory (DVC deletes declared outputs before a stage
runs, so only an undeclared one survives a kill):

    <scratch>/store/             the store being built (Zarr group or Parquet directory)
    <scratch>/store/cache.json   metadata, "complete": false until `finalize`
    <scratch>/progress/shard-<k>.json   the progress record: written atomically once shard k is
                                 fully written and fsynced; holds its rows and per-array sha256

`finalize` folds the progress records into cache.json's manifest, sets "complete": true and
moves the store onto its final path. Re-running after a kill resumes when the scratch's build
fingerprint (dataset, teacher, bytes-deciding params, format and code version) matches, and
starts over, saying why, when it does not. Shards are computed in fixed teacher batches that start
at the shard's first row, so a resumed build, a one-call build and a build whose shards are
written by several processes (`create_store` once, `write_shard` anywhere, `finalize` once) all
produce the same bytes.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import queue
import shutil
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from pipeline.cache.format import (
    METADATA_FILE,
    CacheLayout,
    CacheMetadata,
    IncompleteCacheError,
    array_digest,
    build_fingerprint,
    code_version,
    read_metadata,
    short,
)
from pipeline.cache.params import CacheParams
from pipeline.cache.parquet_store import ParquetStore
from pipeline.cache.sparse import top_k_form
from pipeline.cache.zarr_store import ZarrStore
from pipeline.errors import DistilleryError
from pipeline.io import atomic_write_json, replace_dir

log = logging.getLogger(__name__)

BYTES_PARAMS = (
    "store",
    "logits_dtype",
    "features_dtype",
    "batch_size",
    "rows_per_chunk",
    "chunks_per_shard",
    "zstd_level",
    "sparse_top_k",
)
"""The cache params that decide the stored bytes (the rest only change how the build runs)."""

FLOAT16_MAX = float(np.finfo(np.float16).max)


class TeacherOutputError(DistilleryError):
    """The teacher produced NaN/Inf (or values a float16 cache cannot hold) for some rows."""


class CacheDiskFullError(DistilleryError):
    """The disk filled up while a shard was written; completed shards are kept."""


class CacheInputError(DistilleryError):
    """The rows handed to the cache build are empty or not aligned with each other."""


class Teacher(Protocol):
    """What the writer needs of a teacher (pipeline.teacher.TeacherSession satisfies it)."""

    def run(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        """(B, *input_shape) float32 -> {"logits": (B, C), tap: (B, *tap_shape)}."""
        ...


class RowSource(Protocol):
    """The rows to cache (pipeline.data.prepared.PreparedData satisfies it)."""

    sample_id: np.ndarray  # (N,) int64
    split: np.ndarray  # (N,) int8
    label: np.ndarray  # (N,) int64
    inputs: np.ndarray  # (N, *input_shape) float32


def describe_teacher(teacher: Any, teacher_sha256: str) -> dict[str, Any]:
    """The teacher's identity for the metadata: sha256 and the names of its input and outputs."""
    return {
        "sha256": teacher_sha256,
        "input_name": getattr(teacher, "input_name", "input"),
        "logits_name": getattr(teacher, "logits_name", "logits"),
        "tap_names": list(getattr(teacher, "tap_names", ()) or ()),
    }


@dataclass(frozen=True)
class CacheBuild:
    """A cache under construction in `scratch_dir`; picklable, so shard writers can run anywhere.

    metadata: the cache.json being built (complete=False). data: the rows to cache.
    """

    scratch_dir: Path
    metadata: CacheMetadata
    data: RowSource

    @property
    def store_dir(self) -> Path:
        """Where the store is being built."""
        return self.scratch_dir / "store"

    @property
    def progress_dir(self) -> Path:
        """Where the per-shard progress records live."""
        return self.scratch_dir / "progress"

    @property
    def layout(self) -> CacheLayout:
        """Shapes, dtypes and chunking."""
        return self.metadata.layout

    @property
    def batch_size(self) -> int:
        """Rows per teacher forward pass."""
        return int(self.metadata.params["batch_size"])

    def store(self) -> ZarrStore | ParquetStore:
        """The store object writing into `store_dir`."""
        level = int(self.metadata.params["zstd_level"])
        if self.metadata.store == "zarr":
            return ZarrStore(self.store_dir, self.layout)
        return ParquetStore(self.store_dir, self.layout, level)


def _bytes_params(params: CacheParams) -> dict[str, Any]:
    dumped = params.model_dump()
    return {key: dumped[key] for key in BYTES_PARAMS}


def run_teacher(teacher: Teacher, inputs: np.ndarray) -> dict[str, np.ndarray]:
    """teacher.run(inputs) with its logits output renamed "logits" (a TeacherSession keys it by
    its `logits_name`), every output as a numpy array."""
    logits_name = getattr(teacher, "logits_name", "logits")
    outputs = teacher.run(np.ascontiguousarray(inputs))
    return {("logits" if name == logits_name else name): np.asarray(v) for name, v in outputs.items()}


def _shown_ids(data: RowSource, rows: np.ndarray) -> list:
    """The ids of `rows` as the user wrote them (a PreparedData's `shown_ids`), for messages."""
    return data.shown_ids(rows) if hasattr(data, "shown_ids") else data.sample_id[rows].tolist()


def _check_outputs(outputs: Mapping[str, np.ndarray], batch: slice, data: RowSource) -> None:
    """Refuse NaN/Inf in any teacher output, naming the output and the sample ids."""
    if "logits" not in outputs:
        raise TeacherOutputError(
            f"the teacher returned {sorted(outputs)} but no 'logits'; check its output names"
        )
    for name, values in outputs.items():
        finite = np.isfinite(values.reshape(len(values), -1)).all(axis=1)
        if not finite.all():
            bad_rows = np.flatnonzero(~finite) + batch.start
            ids = _shown_ids(data, bad_rows[:10])
            raise TeacherOutputError(
                f"teacher output {name!r} is NaN/Inf for {len(bad_rows)} row(s): sample_id "
                f"{', '.join(map(str, ids))}{' ...' if len(bad_rows) > 10 else ''} "
                f"(rows {', '.join(map(str, bad_rows[:10].tolist()))}); check those inputs and the teacher; "
                "completed shards are kept"
            )


def _cast(name: str, values: np.ndarray, dtype: str, batch: slice, data: RowSource) -> np.ndarray:
    """Cast to the stored dtype, refusing values float16 cannot hold (they would become inf)."""
    if dtype == "float16":
        too_big = (np.abs(values.reshape(len(values), -1)) > FLOAT16_MAX).any(axis=1)
        if too_big.any():
            rows = np.flatnonzero(too_big) + batch.start
            raise TeacherOutputError(
                f"teacher output {name!r} exceeds the float16 range (|x| > 65504) for sample_id "
                f"{', '.join(map(str, _shown_ids(data, rows[:10])))}; store it as float32 "
                "(cache.logits_dtype / cache.features_dtype: float32)"
            )
    return values.astype(dtype, copy=False)


def check_class_count(teacher_classes: int, dataset_classes: int | None) -> None:
    """TeacherOutputError unless the teacher's logits width equals the dataset's class count."""
    if dataset_classes is not None and teacher_classes != dataset_classes:
        raise TeacherOutputError(
            f"the teacher gives {teacher_classes} logits per row but the dataset has {dataset_classes} "
            f"classes; "
            f"use a teacher trained on these classes, or set prepare.dataset.num_classes to "
            f"{teacher_classes} "
            "if the dataset has classes its labels do not show"
        )


def probe_layout(teacher: Teacher, data: RowSource, params: CacheParams) -> CacheLayout:
    """Run the teacher on the first row to learn the class count and every tap's shape."""
    first = slice(0, min(1, len(data.sample_id)))
    check_input = getattr(teacher, "check_input", None)  # a TeacherSession: a clear error, not ORT's
    if check_input is not None:
        check_input(data.inputs.shape[1:])
    outputs = run_teacher(teacher, data.inputs[first])
    _check_outputs(outputs, first, data)
    check_class_count(int(outputs["logits"].shape[1]), getattr(data, "num_classes", None))
    return CacheLayout(
        num_rows=len(data.sample_id),
        num_classes=int(outputs["logits"].shape[1]),
        logits_dtype=params.logits_dtype,
        features_dtype=params.features_dtype,
        feature_shapes={
            name: tuple(int(d) for d in v.shape[1:]) for name, v in outputs.items() if name != "logits"
        },
        sparse_top_k=None
        if params.sparse_top_k is None
        else min(params.sparse_top_k, int(outputs["logits"].shape[1])),
        rows_per_chunk=params.rows_per_chunk,
        rows_per_shard=params.rows_per_shard,
    )


def open_build(scratch_dir: str | Path, data: RowSource) -> CacheBuild:
    """The build started by `create_store` in `scratch_dir` (for shard writers in other processes)."""
    scratch_dir = Path(scratch_dir)
    return CacheBuild(scratch_dir, read_metadata(scratch_dir / "store"), data)


def create_store(
    scratch_dir: str | Path,
    data: RowSource,
    teacher: Teacher,
    teacher_sha256: str,
    dataset_fingerprint: str,
    params: CacheParams,
) -> CacheBuild:
    """Create the scratch store, or reopen it to resume when its build fingerprint matches.

    A scratch left by another dataset, teacher or params is deleted (the log says which differs).
    """
    scratch_dir = Path(scratch_dir)
    _check_rows(data)
    teacher_info = describe_teacher(teacher, teacher_sha256)
    fingerprint = build_fingerprint(
        params.store, dataset_fingerprint, teacher_info, _bytes_params(params), code_version()
    )
    store_dir = scratch_dir / "store"
    if (store_dir / METADATA_FILE).exists():
        try:
            existing = read_metadata(store_dir)
        except DistilleryError as error:
            existing, reason = None, f"its metadata is unreadable ({error})"
        if existing is not None and existing.build_fingerprint == fingerprint:
            build = CacheBuild(scratch_dir, existing, data)
            build.store().remove_debris()
            log.info(
                "cache: resuming the build in %s (%d of %d shards done)",
                scratch_dir,
                len(completed_shards(build)),
                build.layout.num_shards,
            )
            return build
        if existing is not None:
            reason = _why_different(existing, dataset_fingerprint, teacher_sha256, _bytes_params(params))
        log.warning("cache: starting over; the scratch build in %s does not match: %s", scratch_dir, reason)
    if scratch_dir.exists():
        shutil.rmtree(scratch_dir)
    layout = probe_layout(teacher, data, params)
    metadata = CacheMetadata(
        store=params.store,
        layout=layout,
        teacher=teacher_info,
        dataset_fingerprint=dataset_fingerprint,
        params=_bytes_params(params),
        code_version=code_version(),
        build_fingerprint=fingerprint,
    )
    store_cls = ZarrStore if params.store == "zarr" else ParquetStore
    store_cls.create(store_dir, layout, params.zstd_level)
    (scratch_dir / "progress").mkdir(parents=True, exist_ok=True)
    atomic_write_json(store_dir / METADATA_FILE, metadata.to_json())
    return CacheBuild(scratch_dir, metadata, data)


def _check_rows(data: RowSource) -> None:
    lengths = {name: len(getattr(data, name)) for name in ("sample_id", "split", "label", "inputs")}
    if len(set(lengths.values())) != 1:
        raise CacheInputError(
            f"the rows to cache are not aligned: lengths {lengths}; re-run `dvc repro prepare`"
        )
    if lengths["sample_id"] == 0:
        raise CacheInputError(
            "there are no rows to cache (the prepared dataset is empty); check prepare.dataset"
        )
    if len(np.unique(data.sample_id)) != lengths["sample_id"]:
        raise CacheInputError(
            "sample ids are not unique; the cache joins on them, re-run `dvc repro prepare`"
        )


def _why_different(
    existing: CacheMetadata, dataset_fingerprint: str, teacher_sha256: str, params: dict
) -> str:
    reasons = []
    if existing.dataset_fingerprint != dataset_fingerprint:
        reasons.append(f"dataset {short(existing.dataset_fingerprint)} -> {short(dataset_fingerprint)}")
    if existing.teacher_sha256 != teacher_sha256:
        reasons.append(f"teacher {short(existing.teacher_sha256)} -> {short(teacher_sha256)}")
    changed = sorted(k for k in params if existing.params.get(k) != params[k])
    if changed:
        reasons.append(
            "params " + ", ".join(f"{k}: {existing.params.get(k)} -> {params[k]}" for k in changed)
        )
    return "; ".join(reasons) or "format or code version changed"


def _progress_path(build: CacheBuild, shard_index: int) -> Path:
    return build.progress_dir / f"shard-{shard_index:06d}.json"


def completed_shards(build: CacheBuild) -> set[int]:
    """Indices of shards whose progress record exists (fully written and fsynced)."""
    done = set()
    for path in build.progress_dir.glob("shard-*.json"):
        try:
            done.add(int(json.loads(path.read_text())["shard"]))
        except (ValueError, KeyError, json.JSONDecodeError):
            path.unlink(missing_ok=True)  # a record is written atomically; anything else is debris
    return done


def compute_shard(
    build: CacheBuild, shard_index: int, teacher: Teacher, keep_rows: np.ndarray | None = None
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Run the teacher over shard `shard_index` in fixed batches; nothing is written.

    Returns (array name -> values in the stored dtype, fp32 logits of `keep_rows` (sorted cache
    rows; only those inside this shard)). Raises TeacherOutputError on NaN/Inf.
    """
    layout, data = build.layout, build.data
    rows = layout.shards()[shard_index]
    specs = layout.arrays()
    arrays = {
        name: np.empty((rows.stop - rows.start, *shape), dtype) for name, (shape, dtype) in specs.items()
    }
    arrays["sample_id"][:] = data.sample_id[rows]
    arrays["split"][:] = data.split[rows]
    arrays["label"][:] = data.label[rows]
    keep = np.asarray([] if keep_rows is None else keep_rows, np.int64)
    keep = keep[(keep >= rows.start) & (keep < rows.stop)]
    kept_logits = np.empty((len(keep), layout.num_classes), np.float32)
    for start in range(rows.start, rows.stop, build.batch_size):
        batch = slice(start, min(start + build.batch_size, rows.stop))
        outputs = run_teacher(teacher, data.inputs[batch])
        _check_outputs(outputs, batch, data)
        local = slice(batch.start - rows.start, batch.stop - rows.start)
        logits = np.asarray(outputs["logits"], np.float32)
        arrays["logits"][local] = _cast("logits", logits, layout.logits_dtype, batch, data)
        for tap in layout.feature_shapes:
            if tap not in outputs:
                raise TeacherOutputError(
                    f"the teacher did not return tap {tap!r} (it returned {sorted(outputs)})"
                )
            arrays[f"features/{tap}"][local] = _cast(tap, outputs[tap], layout.features_dtype, batch, data)
        if layout.sparse_top_k is not None:
            values, indices, lse = top_k_form(logits, layout.sparse_top_k)
            arrays["sparse/values"][local] = values.astype(layout.logits_dtype)
            arrays["sparse/indices"][local] = indices
            arrays["sparse/logsumexp"][local] = lse
        in_batch = (keep >= batch.start) & (keep < batch.stop)
        kept_logits[in_batch] = logits[keep[in_batch] - batch.start]
    return arrays, kept_logits


def commit_shard(build: CacheBuild, shard_index: int, arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Write a computed shard whole, fsync it, then write its progress record. Returns the record.

    Raises CacheDiskFullError (completed shards kept) when the disk is full.
    """
    rows = build.layout.shards()[shard_index]
    record = {
        "shard": shard_index,
        "start": rows.start,
        "stop": rows.stop,
        "sha256": {name: array_digest(arrays[name]) for name in build.layout.arrays()},
    }
    try:
        build.store().write_shard(shard_index, rows, dict(arrays))
        _record_shard(build, shard_index, record)
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            done = len(completed_shards(build))
            raise CacheDiskFullError(
                f"disk full while writing shard {shard_index} (rows {rows.start}..{rows.stop - 1}) of "
                f"{build.layout.num_shards} to {build.store_dir} "
                f"({error.strerror or error}); free space and re-run `dvc repro cache`; completed shards are "
                f"kept ({done} of {build.layout.num_shards})"
            ) from None
        raise
    return record


def _record_shard(build: CacheBuild, shard_index: int, record: dict[str, Any]) -> None:
    atomic_write_json(_progress_path(build, shard_index), record)


def write_shard(build: CacheBuild, shard_index: int, teacher: Teacher) -> dict[str, Any]:
    """Compute and write shard `shard_index` whole (safe to call from separate processes, one
    process per shard). Returns its manifest record."""
    arrays, _ = compute_shard(build, shard_index, teacher)
    return commit_shard(build, shard_index, arrays)


def finalize(build: CacheBuild, out_dir: str | Path) -> Path:
    """Fold the progress records into cache.json, mark it complete, move the store to `out_dir`.

    Raises IncompleteCacheError naming the shards that have no progress record.
    """
    num_shards = build.layout.num_shards
    missing = sorted(set(range(num_shards)) - completed_shards(build))
    if missing:
        raise IncompleteCacheError(
            f"cannot finalize {build.scratch_dir}: "
            f"shards {missing[:20]}{' ...' if len(missing) > 20 else ''} "
            f"of {num_shards} are not written; re-run `dvc repro cache`"
        )
    manifest = [json.loads(_progress_path(build, k).read_text()) for k in range(num_shards)]
    build.store().remove_debris()
    metadata = dataclasses.replace(build.metadata, complete=True, manifest=manifest)
    atomic_write_json(build.store_dir / METADATA_FILE, metadata.to_json())
    target = replace_dir(build.store_dir, out_dir)
    shutil.rmtree(build.scratch_dir, ignore_errors=True)
    return target


REFERENCE_MAX_BYTES = 256 * 2**20
"""Cap on the fp32 reference logits kept in memory (matters for large class counts)."""


def reference_rows(num_rows: int, max_rows: int, num_classes: int | None = None) -> np.ndarray:
    """(n,) sorted int64 rows, evenly spaced, whose fp32 logits the build keeps for the report;
    with `num_classes`, at most REFERENCE_MAX_BYTES of fp32 logits."""
    if num_classes:
        max_rows = min(max_rows, max(1, REFERENCE_MAX_BYTES // (4 * num_classes)))
    return np.unique(np.linspace(0, num_rows - 1, min(num_rows, max_rows)).round().astype(np.int64))


@dataclass(frozen=True)
class BuildResult:
    """What `build_cache` did.

    store_dir: the finished store. reference_rows (n,) int64 and reference_logits (n, C) float32:
    fp32 teacher logits kept for measuring the stored dtype's error. shards_written /
    shards_resumed: shards computed in this run / found complete in the scratch.
    """

    store_dir: Path
    reference_rows: np.ndarray
    reference_logits: np.ndarray
    shards_written: int
    shards_resumed: int
    provider: str


class _ShardWriter:
    """A thread writing computed shards while the teacher computes the next (bounded queue)."""

    def __init__(self, build: CacheBuild) -> None:
        self.build = build
        self.queue: queue.Queue = queue.Queue(maxsize=1)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name="cache-shard-writer", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is not None:
                continue
            shard_index, arrays = item
            try:
                commit_shard(self.build, shard_index, arrays)
            except BaseException as error:  # re-raised in the main thread by close()
                self.error = error

    def put(self, shard_index: int, arrays: dict[str, np.ndarray]) -> None:
        self.queue.put((shard_index, arrays))

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()


def build_cache(
    data: RowSource,
    teacher: Teacher,
    teacher_sha256: str,
    dataset_fingerprint: str,
    params: CacheParams,
    out_dir: str | Path,
    scratch_dir: str | Path,
    progress: bool | None = None,
) -> BuildResult:
    """Run the teacher over every row and write the cache to `out_dir`, resuming from `scratch_dir`.

    Inference of shard k+1 overlaps the writing of shard k. progress: tqdm bar (None = only on a
    tty). Raises TeacherOutputError (NaN/Inf) or CacheDiskFullError with completed shards kept.
    """
    provider = str(getattr(teacher, "provider", "an unnamed provider"))
    log.info("cache: the teacher runs on %s", provider)
    build = create_store(scratch_dir, data, teacher, teacher_sha256, dataset_fingerprint, params)
    layout = build.layout
    shards = layout.shards()
    done = completed_shards(build)
    keep = reference_rows(layout.num_rows, params.kl_sample_rows, layout.num_classes)
    kept: dict[int, np.ndarray] = {}
    bar = tqdm(
        total=layout.num_rows,
        initial=sum(shards[k].stop - shards[k].start for k in done),
        unit="row",
        desc="cache",
        disable=(not progress) if progress is not None else None,
    )
    writer = _ShardWriter(build)
    try:
        for shard_index in range(len(shards)):
            if writer.error is not None:
                break
            rows = shards[shard_index]
            if shard_index in done:
                continue
            arrays, kept[shard_index] = compute_shard(build, shard_index, teacher, keep)
            writer.put(shard_index, arrays)
            bar.update(rows.stop - rows.start)
    finally:
        writer.close()
        bar.close()
    if writer.error is not None:
        raise writer.error
    for shard_index in sorted(done):  # reference logits of resumed shards: recompute those batches only
        kept[shard_index] = shard_reference_logits(build, shard_index, teacher, keep)
    store_dir = finalize(build, out_dir)
    reference = (
        np.concatenate([kept[k] for k in range(len(shards))])
        if shards
        else np.empty((0, layout.num_classes), np.float32)
    )
    return BuildResult(store_dir, keep, reference, len(shards) - len(done), len(done), provider)


def shard_reference_logits(
    build: CacheBuild, shard_index: int, teacher: Teacher, keep: np.ndarray
) -> np.ndarray:
    """(n, C) fp32 teacher logits of the rows `keep` ((m,) sorted int64) that fall in shard
    `shard_index`, recomputed in the writer's own batches (so they equal what the build saw)."""
    rows = build.layout.shards()[shard_index]
    keep = keep[(keep >= rows.start) & (keep < rows.stop)]
    out = np.empty((len(keep), build.layout.num_classes), np.float32)
    for start in range(rows.start, rows.stop, build.batch_size):
        batch = slice(start, min(start + build.batch_size, rows.stop))
        in_batch = (keep >= batch.start) & (keep < batch.stop)
        if in_batch.any():
            logits = np.asarray(run_teacher(teacher, build.data.inputs[batch])["logits"], np.float32)
            out[in_batch] = logits[keep[in_batch] - batch.start]
    return out
