"""Open a finished cache: refuse stale, half-written or damaged ones, verify it, hand back a reader.

Before anything is allocated, cache.json is checked against what the store itself holds (every
array present, with the shape and dtype cache.json claims) and the manifest against the shard
plan, so a damaged cache.json claiming 10^12 rows is one line, not an out-of-memory kill.

Read path (measured in benchmarks/bench_cache.py; docs/cache_format.md): gathering 256 random rows
from compressed Zarr chunks costs tens of ms (every touched inner chunk is decoded), while a numpy
gather from RAM takes well under 1 ms and one from an uncompressed memory map a few ms. So
`mode="auto"` (the default) loads a cache up to `in_memory_max_bytes` (params
`cache.in_memory_max_mb`, default 8 GiB) whole, shard by shard, each shard checked against the
manifest's sha256, into a `StoredCache` (a `MemoryCache`); a larger cache (any store) is copied
once, verified the same way, into uncompressed `.npy` files outside the store and served from
memory maps (`MmapCache`, pipeline/cache/mmap_store.py). `mode="lazy"` keeps the reader that
decodes just the touched inner chunks (`LazyCache`, pipeline/cache/lazy.py; stores that read rows
cheaply, i.e. Zarr).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from pipeline.cache.alignment import CacheAlignmentError, check_alignment  # noqa: F401 (re-exported)
from pipeline.cache.format import (
    METADATA_FILE,
    TOKEN_LENGTHS,
    CacheCorruptError,
    CacheLayout,
    CacheMetadata,
    IncompleteCacheError,
    StaleCacheError,
    read_metadata,
    short,
)
from pipeline.cache.lazy import LazyCache
from pipeline.cache.mmap_store import (
    MmapCache,  # noqa: F401 (re-exported: a reader open_cache returns)
    open_sidecar,
    read_shard_verified,
    remove_stale_sidecars,
)
from pipeline.cache.reader import CacheReader, MemoryCache
from pipeline.cache.store import Store, open_store
from pipeline.errors import DistilleryError
from pipeline.transforms import ViewsParams

DEFAULT_IN_MEMORY_MAX_BYTES = 8 * 1024**3
READ_MODES = ("auto", "memory", "mmap", "lazy")


class CacheModeError(DistilleryError):
    """An unknown read mode, or one the cache's store cannot serve."""


def layout_nbytes(layout: CacheLayout, tokens: int = 0) -> int:
    """Bytes of every array of a cache held uncompressed in RAM (`tokens`: the ragged arrays' length)."""
    return sum(
        layout.num_rows * int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        for shape, dtype in layout.arrays().values()
    ) + sum(
        tokens * int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        for shape, dtype in layout.ragged_arrays().values()
    )


def token_count(metadata: CacheMetadata) -> int:
    """Tokens in each ragged array of the cache: the manifest's per-shard counts summed (0 without)."""
    return sum(int(record.get("tokens", 0)) for record in metadata.manifest)


class StoredCache(MemoryCache):
    """A finished cache loaded into RAM; `metadata` is its cache.json, `path` its directory."""

    def __init__(self, path: Path, metadata: CacheMetadata, arrays: Mapping[str, np.ndarray]) -> None:
        self._hold(arrays, metadata.layout.token_form)
        self.path = path
        self.metadata = metadata


def check_fingerprints(
    path: str | Path, metadata: CacheMetadata, dataset_fingerprint: str | None, teacher_sha256: str | None
) -> None:
    """Raise StaleCacheError when the cache at `path` (its cache.json `metadata`) was built for another
    dataset fingerprint or teacher sha256 than the ones given (None: not checked)."""
    if dataset_fingerprint is not None and metadata.dataset_fingerprint != dataset_fingerprint:
        raise StaleCacheError(
            f"the cache at {path} was built for dataset {short(metadata.dataset_fingerprint)} but the "
            f"dataset in use is {short(dataset_fingerprint)}; re-run `dvc repro cache`"
        )
    if teacher_sha256 is not None and metadata.teacher_sha256 != teacher_sha256:
        raise StaleCacheError(
            f"the cache at {path} was built for teacher sha256 {short(metadata.teacher_sha256)} but the "
            f"teacher in use is {short(teacher_sha256)}; re-run `dvc repro cache`"
        )


def check_views(path: str | Path, metadata: CacheMetadata, views: ViewsParams | None) -> None:
    """StaleCacheError unless the cache at `path` was built with the `cache.views` given (None: a
    single-view cache): a changed spec, count or seed makes every stored view another one."""
    recorded = metadata.params.get("views")
    have = None if recorded is None else str(recorded.get("fingerprint"))
    want = None if views is None else views.fingerprint()
    if have != want:
        shown = {None: "no views"}
        raise StaleCacheError(
            f"the cache at {path} was built with cache.views {shown.get(have) or short(have)} but the params "
            f"ask for {shown.get(want) or short(want)}; re-run `dvc repro cache`"
        )


def _shape(shape: tuple[int, ...], dtype: str) -> str:
    return f"({', '.join(map(str, shape))}{',' if len(shape) == 1 else ''}) {dtype}"


def check_store(path: Path, metadata: CacheMetadata, store: Store) -> None:
    """Refuse a cache whose cache.json does not describe its store and manifest.

    IncompleteCacheError when arrays cache.json lists are absent (a store marked complete without
    them); CacheCorruptError, naming cache.json, when an array's real shape or dtype or the
    manifest's shard ranges differ from what it claims. Reads only metadata, allocates nothing.
    """
    layout = metadata.layout
    stored = store.stored_arrays()
    absent = [name for name in layout.arrays() if name not in stored]
    if absent:
        raise IncompleteCacheError(
            f"the cache at {path} is marked complete but its store lacks the arrays {absent}; "
            "re-run `dvc repro cache`"
        )
    for name, (row_shape, dtype) in layout.arrays().items():
        claimed = ((layout.num_rows, *row_shape), dtype)
        if stored[name] != claimed:
            raise CacheCorruptError(
                f"{path / METADATA_FILE} does not match the store: it says array {name!r} is "
                f"{_shape(*claimed)}, the store holds {_shape(*stored[name])}; the cache is damaged "
                "(cache.json or a shard file): re-run `dvc repro cache`"
            )
    if len(metadata.manifest) != layout.num_shards:
        raise IncompleteCacheError(
            f"the cache at {path} lists {len(metadata.manifest)} of {layout.num_shards} shards; "
            "re-run `dvc repro cache`"
        )
    for index, record in enumerate(metadata.manifest):
        rows = layout.shard_rows(index)
        try:
            whole = (record["start"], record["stop"]) == (rows.start, rows.stop) and all(
                isinstance(record["sha256"][name], str) for name in layout.stored_names()
            )
            whole = whole and (not layout.ragged_arrays() or type(record["tokens"]) is int)
        except (KeyError, TypeError):
            whole = False
        if not whole:
            raise CacheCorruptError(
                f"{path / METADATA_FILE} is damaged: manifest record {index} is not shard {index} "
                f"(rows {rows.start}..{rows.stop - 1}) with a sha256 per array; re-run `dvc repro cache`"
            )
    tokens = token_count(metadata)
    for name, (token_shape, dtype) in layout.ragged_arrays().items():
        claimed = ((tokens, *token_shape), dtype)
        if stored.get(name) != claimed:
            held = _shape(*stored[name]) if name in stored else "no such array"
            raise CacheCorruptError(
                f"{path / METADATA_FILE} does not match the store: it says ragged array {name!r} is "
                f"{_shape(*claimed)}, the store holds {held}; the cache is damaged (cache.json or a shard "
                "file): re-run `dvc repro cache`"
            )


def _read_verified(store: Store, metadata: CacheMetadata, name: str, verify: bool) -> np.ndarray:
    """One whole array, shard by shard, each shard checked against the manifest's sha256."""
    if name in metadata.layout.ragged_arrays():
        shape, dtype = metadata.layout.ragged_arrays()[name]
        parts = [read_shard_verified(store, metadata, name, record, verify) for record in metadata.manifest]
        return np.concatenate(parts) if parts else np.empty((0, *shape), dtype)
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
    """Open the finished cache at `path` (a store directory of any `STORES` kind).

    dataset_fingerprint / teacher_sha256: when given, a cache built from anything else is refused
    (StaleCacheError naming both hashes). A build that never finished, or a store lacking arrays
    cache.json lists, raises IncompleteCacheError; a cache.json that does not match its store,
    CacheCorruptError (`check_store`).
    mode: "memory" loads every array into RAM (`StoredCache`); "mmap" serves it from an
    uncompressed memory-mapped copy in `mmap_dir` (`MmapCache`; default
    `data/.scratch/mmap/<key>` for `data/cache/store`), built once and reused while the cache is
    unchanged (copies of this store's older builds are deleted on every open); "lazy" reads the
    touched inner chunks per batch (`LazyCache`; Zarr); "auto" is "memory" when the cache's
    uncompressed size is at most `in_memory_max_bytes`, else "mmap". Every shard read whole is
    checked against the manifest when `verify`. Corrupt bytes raise CacheCorruptError naming the
    array and the rows.
    """
    path = Path(path)
    metadata = read_metadata(path)
    if not metadata.complete:
        raise IncompleteCacheError(
            f"the cache at {path} was never finished (no completion marker in cache.json); run `dvc "
            f"repro cache`"
        )
    check_fingerprints(path, metadata, dataset_fingerprint, teacher_sha256)
    store = open_store(metadata.store, path, metadata.layout)
    check_store(path, metadata, store)
    mode = _resolve_mode(path, metadata, store, mode, in_memory_max_bytes)
    remove_stale_sidecars(path, metadata, mmap_dir)
    if mode == "mmap":
        return open_sidecar(path, metadata, store, mmap_dir, verify)
    if mode == "lazy":
        small_names = (
            "sample_id",
            "split",
            "label",
            *([TOKEN_LENGTHS] * bool(metadata.layout.ragged_arrays())),
            *(("view",) if metadata.layout.view_count else ()),
        )
        small = {name: _read_verified(store, metadata, name, verify) for name in small_names}
        return LazyCache(path, metadata, store, small)
    arrays = {name: _read_verified(store, metadata, name, verify) for name in metadata.layout.stored_names()}
    return StoredCache(path, metadata, arrays)


def _resolve_mode(
    path: Path, metadata: CacheMetadata, store: Store, mode: str, in_memory_max_bytes: int
) -> str:
    if mode not in READ_MODES:
        raise CacheModeError(f"unknown cache read mode {mode!r}; valid: {', '.join(READ_MODES)}")
    if mode == "lazy" and not store.reads_rows:
        raise CacheModeError(
            f"the cache at {path} is a {metadata.store} store, which cannot be read lazily (only Zarr can); "
            'use mode="mmap" or "memory"'
        )
    if mode == "auto":
        size = layout_nbytes(metadata.layout, token_count(metadata))
        return "memory" if size <= in_memory_max_bytes else "mmap"
    return mode
