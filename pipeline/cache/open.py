"""Open a finished cache: refuse stale or half-written ones, verify it, hand back a CacheReader.

Read path (measured in benchmarks/bench_cache.py; docs/cache_format.md): gathering 256 random rows
from compressed Zarr chunks costs tens of ms (every touched inner chunk is decoded), while a numpy
gather from RAM takes well under 1 ms and one from an uncompressed memory map a few ms. So
`mode="auto"` (the default) loads a cache up to `in_memory_max_bytes` (params
`cache.in_memory_max_mb`, default 8 GiB) whole, shard by shard, each shard checked against the
manifest's sha256, into a `StoredCache` (a `MemoryCache`); a larger cache (either store) is copied
once, verified the same way, into uncompressed `.npy` files outside the store and served from
memory maps (`MmapCache`, pipeline/cache/mmap_store.py). `mode="lazy"` keeps the Zarr-only reader
that decodes just the touched inner chunks (`LazyZarrCache`, checked by their crc32c; no second
copy on disk; train it with block-shuffled batches).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

from pipeline.cache.batch import SparseLogits, TeacherBatch
from pipeline.cache.format import (
    CacheLayout,
    CacheMetadata,
    IncompleteCacheError,
    StaleCacheError,
    read_metadata,
    short,
)
from pipeline.cache.mmap_store import (
    MmapCache,  # noqa: F401 (re-exported: a reader open_cache returns)
    memory_cache_args,
    open_sidecar,
    read_shard_verified,
)
from pipeline.cache.parquet_store import ParquetStore
from pipeline.cache.reader import CacheReader, CacheSchema, MemoryCache
from pipeline.cache.zarr_store import ZarrStore
from pipeline.errors import DistilleryError

DEFAULT_IN_MEMORY_MAX_BYTES = 8 * 1024**3
READ_MODES = ("auto", "memory", "mmap", "lazy")


class CacheAlignmentError(DistilleryError):
    """Sample ids of the dataset in use do not match the cache's rows."""


class CacheModeError(DistilleryError):
    """An unknown read mode, or one the cache's store cannot serve."""


def layout_nbytes(layout: CacheLayout) -> int:
    """Bytes of every array of a cache held uncompressed in RAM."""
    return sum(
        layout.num_rows * int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        for shape, dtype in layout.arrays().values()
    )


class StoredCache(MemoryCache):
    """A finished cache loaded into RAM; `metadata` is its cache.json, `path` its directory."""

    def __init__(self, path: Path, metadata: CacheMetadata, arrays: Mapping[str, np.ndarray]) -> None:
        super().__init__(*memory_cache_args(arrays))
        self.path = path
        self.metadata = metadata


class LazyZarrCache:
    """A finished Zarr cache too large for RAM: ids, splits and labels in memory; logits, features
    and the sparse form read per batch from the inner chunks the rows fall in."""

    def __init__(
        self, path: Path, metadata: CacheMetadata, store: ZarrStore, small: Mapping[str, np.ndarray]
    ) -> None:
        self.path, self.metadata, self._store = path, metadata, store
        self._small = dict(small)
        layout = metadata.layout
        self.schema = CacheSchema(
            num_rows=layout.num_rows,
            num_classes=layout.num_classes,
            logits_dtype=layout.logits_dtype,
            feature_shapes=dict(layout.feature_shapes),
            sparse_top_k=layout.sparse_top_k,
        )

    def __len__(self) -> int:
        return self.schema.num_rows

    @property
    def sample_id(self) -> np.ndarray:
        return self._small["sample_id"]

    @property
    def split(self) -> np.ndarray:
        return self._small["split"]

    @property
    def label(self) -> np.ndarray:
        return self._small["label"]

    @property
    def logits(self) -> np.ndarray:
        """(N, C) stored logits, read whole (large: prefer `batch`)."""
        return self._store.read("logits", slice(0, len(self)))

    @property
    def features(self) -> Mapping[str, np.ndarray]:
        """tap -> (N, *shape), each read whole when accessed (large: prefer `batch`)."""
        return {
            tap: self._store.read(f"features/{tap}", slice(0, len(self)))
            for tap in self.schema.feature_shapes
        }

    @property
    def sparse(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """The top-k form (values, indices, logsumexp), read whole, or None."""
        if self.schema.sparse_top_k is None:
            return None
        whole = slice(0, len(self))
        return tuple(self._store.read(f"sparse/{name}", whole) for name in ("values", "indices", "logsumexp"))

    def _gather(self, name: str, rows: np.ndarray) -> np.ndarray:
        unique, inverse = np.unique(rows, return_inverse=True)
        return self._store.read_rows(name, unique)[inverse]

    def batch(self, rows: np.ndarray) -> TeacherBatch:
        """The rows `rows` ((B,) int) as a TeacherBatch of float32 tensors."""
        rows = np.asarray(rows, np.int64)
        sparse = None
        if self.schema.sparse_top_k is not None:
            sparse = SparseLogits(
                torch.from_numpy(self._gather("sparse/values", rows).astype(np.float32)),
                torch.from_numpy(self._gather("sparse/indices", rows).astype(np.int64)),
                torch.from_numpy(self._gather("sparse/logsumexp", rows).astype(np.float32)),
            )
        return TeacherBatch(
            rows=rows,
            sample_id=self.sample_id[rows],
            split=self.split[rows],
            label=torch.from_numpy(self.label[rows]),
            logits=torch.from_numpy(self._gather("logits", rows).astype(np.float32)),
            features={
                tap: torch.from_numpy(self._gather(f"features/{tap}", rows).astype(np.float32))
                for tap in self.schema.feature_shapes
            },
            sparse=sparse,
        )


def check_fingerprints(
    path: str | Path, metadata: CacheMetadata, dataset_fingerprint: str | None, teacher_sha256: str | None
) -> None:
    """Raise StaleCacheError when the cache at `path` (its cache.json `metadata`) was built for another
    dataset fingerprint or teacher sha256 than the ones given (None: not checked)."""
    if dataset_fingerprint is not None and metadata.dataset_fingerprint != dataset_fingerprint:
        raise StaleCacheError(
            f"the cache at {path} was built for dataset {short(metadata.dataset_fingerprint)} but the "
            f"dataset "
            f"in use is {short(dataset_fingerprint)}; re-run `dvc repro cache`"
        )
    if teacher_sha256 is not None and metadata.teacher_sha256 != teacher_sha256:
        raise StaleCacheError(
            f"the cache at {path} was built for teacher sha256 {short(metadata.teacher_sha256)} but the "
            f"teacher "
            f"in use is {short(teacher_sha256)}; re-run `dvc repro cache`"
        )


def _read_verified(
    store: ZarrStore | ParquetStore, metadata: CacheMetadata, name: str, verify: bool
) -> np.ndarray:
    """One whole array, shard by shard, each shard checked against the manifest's sha256."""
    shape, dtype = metadata.layout.arrays()[name]
    out = np.empty((metadata.layout.num_rows, *shape), dtype)
    for record in metadata.manifest:
        out[int(record["start"]) : int(record["stop"])] = read_shard_verified(
            store, metadata, name, record, verify
        )
    return out


def open_cache(
    path: str | Path,
    dataset_fingerprint: str | None = None,
    teacher_sha256: str | None = None,
    in_memory_max_bytes: int = DEFAULT_IN_MEMORY_MAX_BYTES,
    verify: bool = True,
    mode: str = "auto",
    mmap_dir: str | Path | None = None,
) -> CacheReader:
    """Open the finished cache at `path` (a store directory: Zarr group or Parquet directory).

    dataset_fingerprint / teacher_sha256: when given, a cache built from anything else is refused
    (StaleCacheError naming both hashes). A build that never finished raises IncompleteCacheError.
    mode: "memory" loads every array into RAM (`StoredCache`); "mmap" serves it from an
    uncompressed memory-mapped copy in `mmap_dir` (`MmapCache`; default
    `data/.scratch/mmap/<key>` for `data/cache/store`), built once and reused while the cache is
    unchanged; "lazy" (Zarr only) reads the touched inner chunks per batch (`LazyZarrCache`);
    "auto" is "memory" when the cache's uncompressed size is at most `in_memory_max_bytes`, else
    "mmap". Every shard read whole is checked against the manifest when `verify`.
    Corrupt bytes raise CacheCorruptError naming the array and the rows.
    """
    path = Path(path)
    metadata = read_metadata(path)
    if not metadata.complete:
        raise IncompleteCacheError(
            f"the cache at {path} was never finished (no completion marker in cache.json); run `dvc "
            f"repro cache`"
        )
    check_fingerprints(path, metadata, dataset_fingerprint, teacher_sha256)
    layout = metadata.layout
    if len(metadata.manifest) != layout.num_shards:
        raise IncompleteCacheError(
            f"the cache at {path} lists {len(metadata.manifest)} of {layout.num_shards} shards"
        )
    store = ZarrStore(path, layout) if metadata.store == "zarr" else ParquetStore(path, layout)
    mode = _resolve_mode(path, metadata, mode, in_memory_max_bytes)
    if mode == "mmap":
        return open_sidecar(path, metadata, store, mmap_dir, verify)
    if mode == "lazy":
        small = {
            name: _read_verified(store, metadata, name, verify) for name in ("sample_id", "split", "label")
        }
        return LazyZarrCache(path, metadata, store, small)
    arrays = {name: _read_verified(store, metadata, name, verify) for name in layout.arrays()}
    return StoredCache(path, metadata, arrays)


def _resolve_mode(path: Path, metadata: CacheMetadata, mode: str, in_memory_max_bytes: int) -> str:
    if mode not in READ_MODES:
        raise CacheModeError(f"unknown cache read mode {mode!r}; valid: {', '.join(READ_MODES)}")
    if mode == "lazy" and metadata.store != "zarr":
        raise CacheModeError(
            f"the cache at {path} is a {metadata.store} store, which cannot be read lazily (only Zarr can); "
            'use mode="mmap" or "memory"'
        )
    if mode == "auto":
        return "memory" if layout_nbytes(metadata.layout) <= in_memory_max_bytes else "mmap"
    return mode


def check_alignment(
    reader: CacheReader, sample_ids: np.ndarray, exact: bool = False, show_ids: Callable | None = None
) -> np.ndarray:
    """(n,) int64 cache row of each id in `sample_ids` ((n,) int64), or CacheAlignmentError.

    Ids absent from the cache are always an error; with `exact`, cache rows whose id is not in
    `sample_ids` are one too (the dataset and the cache must hold the same rows). `show_ids` maps
    int64 keys to the ids the message shows (the user's string ids: `PreparedData.ids_of`).
    """
    show = show_ids or (lambda keys: np.asarray(keys).tolist())
    cache_ids = np.asarray(reader.sample_id, np.int64)
    wanted = np.asarray(sample_ids, np.int64)
    order = np.argsort(cache_ids, kind="stable")
    sorted_ids = cache_ids[order]
    position = np.clip(np.searchsorted(sorted_ids, wanted), 0, max(len(sorted_ids) - 1, 0))
    found = (sorted_ids[position] == wanted) if len(sorted_ids) else np.zeros(len(wanted), bool)
    problems = []
    if not found.all():
        missing = np.unique(wanted[~found])
        problems.append(
            f"{len(missing)} sample id(s) are not in the cache: {_list(show(missing[:10]), len(missing))}"
        )
    if exact:
        extra = np.setdiff1d(cache_ids, wanted)
        if len(extra):
            problems.append(
                f"{len(extra)} cache row(s) have ids the dataset lacks: {_list(show(extra[:10]), len(extra))}"
            )
    if problems:
        raise CacheAlignmentError(
            "the dataset does not match the cache: "
            + "; ".join(problems)
            + "; re-run `dvc repro cache` for this dataset"
        )
    return order[position].astype(np.int64)


def _list(ids: list, total: int, limit: int = 10) -> str:
    shown = ", ".join(map(str, ids[:limit]))
    return shown + (" ..." if total > limit else "")
