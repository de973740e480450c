"""A cache build in its scratch directory: created (or reopened to resume), progress, finalized.

The build lives in an undeclared scratch directory (DVC deletes declared outputs before a stage
runs, so only an undeclared one survives a kill):

    <scratch>/store/             the store being built (any `pipeline.cache.store.STORES` kind)
    <scratch>/store/cache.json   metadata, "complete": false until `finalize`
    <scratch>/progress/shard-<k>.json   the progress record: written atomically once shard k is
                                 fully written and fsynced; holds its rows and per-array sha256

`finalize` checks the store holds every array, folds the progress records into cache.json's
manifest, sets "complete": true (the last write into the store) and moves the store onto its
final path. Re-running after a kill resumes when the scratch's build fingerprint (dataset,
teacher, bytes-deciding params, format and code version) matches, and starts over, saying why,
when it does not. Shards are computed in fixed teacher batches that start at the shard's first
row (`CacheBuild.batches`), so a resumed build, a one-call build and a build whose shards are
written by several processes all produce the same bytes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pipeline.cache.format import (
    METADATA_FILE,
    CacheLayout,
    CacheMetadata,
    IncompleteCacheError,
    build_fingerprint,
    code_version,
    read_metadata,
    short,
)
from pipeline.cache.params import CacheParams
from pipeline.cache.store import Store, open_store, store_class
from pipeline.cache.teacher_outputs import Teacher, describe_teacher, probe_layout
from pipeline.cache.views import view_rows
from pipeline.errors import DistilleryError
from pipeline.io import atomic_write_json, replace_dir
from pipeline.teacher.inputs import fields_of, num_rows
from pipeline.transforms import ViewsParams

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


class CacheInputError(DistilleryError):
    """The rows handed to the cache build are empty or not aligned with each other."""


class RowSource(Protocol):
    """The rows to cache (pipeline.data.prepared.PreparedData satisfies it)."""

    sample_id: np.ndarray  # (N,) int64
    split: np.ndarray  # (N,) int8
    label: np.ndarray  # (N,) int64
    inputs: np.ndarray  # (N, *input_shape) float32; or `fields`: name -> (N, ...) array or ragged


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

    def store(self) -> Store:
        """The store object writing into `store_dir`."""
        return open_store(
            self.metadata.store, self.store_dir, self.layout, int(self.metadata.params["zstd_level"])
        )

    def batches(self, rows: slice) -> Iterator[slice]:
        """The teacher batches of the shard whose rows are `rows`: `batch_size` rows each, the first
        starting at the shard's first row (what makes every way of building give the same bytes)."""
        for start in range(rows.start, rows.stop, self.batch_size):
            yield slice(start, min(start + self.batch_size, rows.stop))

    def progress_path(self, shard_index: int) -> Path:
        """The progress record of shard `shard_index`."""
        return self.progress_dir / f"shard-{shard_index:06d}.json"


def bytes_params(params: CacheParams) -> dict[str, Any]:
    """The part of `params` that decides the stored bytes (recorded in cache.json). `views` joins
    it only when set (with its fingerprint, which holds TRANSFORMS_FORMAT), so a single-view
    cache.json and build fingerprint are what they were before views existed; `token_logits` only
    when its form is not dense (likewise)."""
    dumped = params.model_dump(exclude={"views"})
    chosen = {key: dumped[key] for key in BYTES_PARAMS}
    if params.token_logits is not None and params.token_logits.form != "dense":
        chosen["token_logits"] = params.token_logits.model_dump(mode="json")
    views = params.views
    if views is not None:
        chosen["views"] = {
            "count": views.count,
            "seed": views.seed,
            "transforms": [step.model_dump(mode="json") for step in views.transforms],
            "fingerprint": views.fingerprint(),
        }
    return chosen


def recorded_views(metadata: CacheMetadata) -> ViewsParams | None:
    """The `cache.views` params a cache (or scratch build) was made with, from its cache.json; None
    for a single-view cache."""
    recorded = metadata.params.get("views")
    if recorded is None:
        return None
    return ViewsParams.model_validate({k: v for k, v in recorded.items() if k != "fingerprint"})


def open_build(scratch_dir: str | Path, data: RowSource) -> CacheBuild:
    """The build started by `create_store` in `scratch_dir` (for shard writers in other processes);
    `data` is the prepared rows (wrapped in their view rows when the build has views)."""
    scratch_dir = Path(scratch_dir)
    metadata = read_metadata(scratch_dir / "store")
    return CacheBuild(scratch_dir, metadata, view_rows(data, recorded_views(metadata)))


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
    The teacher is probed first (`probe_layout`): one whose outputs do not follow the batch is
    refused before anything is written. With `params.views` the rows are `ViewRows` (originals,
    then K views per sample; pipeline/cache/views.py), and a spec that cannot apply to the inputs
    is refused here, before the teacher runs (TransformError).
    """
    scratch_dir = Path(scratch_dir)
    _check_rows(data)
    data = view_rows(data, params.views)
    teacher_info = describe_teacher(teacher, teacher_sha256)
    fingerprint = build_fingerprint(
        params.store, dataset_fingerprint, teacher_info, bytes_params(params), code_version()
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
            reason = _why_different(existing, dataset_fingerprint, teacher_sha256, bytes_params(params))
        log.warning("cache: starting over; the scratch build in %s does not match: %s", scratch_dir, reason)
    layout = probe_layout(teacher, data, params)
    if scratch_dir.exists():
        shutil.rmtree(scratch_dir)
    metadata = CacheMetadata(
        store=params.store,
        layout=layout,
        teacher=teacher_info,
        dataset_fingerprint=dataset_fingerprint,
        params=bytes_params(params),
        code_version=code_version(),
        build_fingerprint=fingerprint,
    )
    store_class(params.store).create(store_dir, layout, params.zstd_level)
    (scratch_dir / "progress").mkdir(parents=True, exist_ok=True)
    atomic_write_json(store_dir / METADATA_FILE, metadata.to_json())
    return CacheBuild(scratch_dir, metadata, data)


def _check_rows(data: RowSource) -> None:
    lengths = {name: len(getattr(data, name)) for name in ("sample_id", "split", "label")}
    source = fields_of(data)
    if source.arrays is not None:  # fields on disk are aligned with their index by construction
        lengths |= {f"field {name!r}": num_rows(value) for name, value in source.arrays.items()}
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
    changed = sorted(k for k in {*params, *existing.params} if existing.params.get(k) != params.get(k))
    if changed:
        reasons.append(
            "params "
            + ", ".join(f"{k}: {_shown(existing.params.get(k))} -> {_shown(params.get(k))}" for k in changed)
        )
    return "; ".join(reasons) or "format or code version changed"


def _shown(value: Any) -> Any:
    """A param for a log line: a `views` mapping by its fingerprint's first 12 hex digits."""
    return (
        f"views {short(value['fingerprint'])}"
        if isinstance(value, dict) and "fingerprint" in value
        else value
    )


def completed_shards(build: CacheBuild) -> set[int]:
    """Indices of shards whose progress record exists (fully written and fsynced)."""
    done = set()
    for path in build.progress_dir.glob("shard-*.json"):
        try:
            done.add(int(json.loads(path.read_text())["shard"]))
        except (ValueError, KeyError, TypeError, json.JSONDecodeError):
            path.unlink(missing_ok=True)  # a record is written atomically; anything else is debris
    return done


def finalize(build: CacheBuild, out_dir: str | Path) -> Path:
    """Fold the progress records into cache.json, mark it complete, move the store to `out_dir`.

    The completion marker is the last write into the store, and only once the store holds every
    array of the layout. Raises IncompleteCacheError naming the shards that have no progress
    record, or the arrays the store lacks.
    """
    num_shards = build.layout.num_shards
    missing = sorted(set(range(num_shards)) - completed_shards(build))
    if missing:
        raise IncompleteCacheError(
            f"cannot finalize {build.scratch_dir}: "
            f"shards {missing[:20]}{' ...' if len(missing) > 20 else ''} "
            f"of {num_shards} are not written; re-run `dvc repro cache`"
        )
    manifest = [json.loads(build.progress_path(k).read_text()) for k in range(num_shards)]
    store = build.store()
    store.remove_debris()
    absent = sorted(set(build.layout.arrays()) - set(store.stored_arrays()))
    if absent:
        raise IncompleteCacheError(
            f"cannot finalize {build.scratch_dir}: the store lacks the arrays {absent} (was the scratch "
            "changed by another process?); re-run `dvc repro cache`"
        )
    metadata = dataclasses.replace(build.metadata, complete=True, manifest=manifest)
    atomic_write_json(build.store_dir / METADATA_FILE, metadata.to_json())
    target = replace_dir(build.store_dir, out_dir)
    shutil.rmtree(build.scratch_dir, ignore_errors=True)
    return target
