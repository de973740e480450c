"""The `Store` protocol every cache store implements, and the table of stores by name.

A store keeps a cache's named arrays (`CacheLayout.arrays()`) in one directory and knows nothing
of teachers, manifests or readers: the build hands it whole shards, the readers ask it for one
shard's rows of one array. Adding a format is one module with a class satisfying `Store` plus one
line in `STORES` (the name is what `cache.store` in params.yaml and `"store"` in cache.json say).
Classes are named by import path, so opening a Zarr cache never imports pyarrow and vice versa.

The protocol is keyed by shard, never by a global row offset beyond a shard's range, and the
manifest digests each named array per shard; an array whose rows have different lengths (a ragged
array, values + offsets) therefore fits without changing it: see docs/cache_format.md, "Adding a
store or a ragged array".
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar, Protocol

import numpy as np

from pipeline.cache.format import CacheLayout

STORES: dict[str, str] = {
    "zarr": "pipeline.cache.zarr_store:ZarrStore",
    "parquet": "pipeline.cache.parquet_store:ParquetStore",
}
"""Store name -> "module:Class" of its implementation."""

StoredArrays = dict[str, tuple[tuple[int, ...], str]]
"""Array name -> (whole shape, dtype) as the store's own metadata gives it."""


class Store(Protocol):
    """A cache's arrays in the directory `path`, laid out as `layout` says.

    kind: the name in `STORES`. reads_rows: whether `read_rows` reads arbitrary rows without
    decoding whole shards (what the lazy reader needs; Zarr yes, Parquet no).
    """

    kind: ClassVar[str]
    reads_rows: ClassVar[bool]
    path: Path
    layout: CacheLayout

    def __init__(self, path: str | Path, layout: CacheLayout, zstd_level: int = 3) -> None: ...

    @classmethod
    def create(cls, path: str | Path, layout: CacheLayout, zstd_level: int = 3) -> Store:
        """An empty store at `path` for `layout`, replacing a store that was there."""
        ...

    def write_shard(self, shard_index: int, rows: slice, arrays: Mapping[str, np.ndarray]) -> None:
        """Write every array of shard `shard_index` (cache rows `rows`) whole, durable on return."""
        ...

    def read(self, name: str, rows: slice) -> np.ndarray:
        """Rows `rows` (within one shard) of array `name` in the stored dtype; CacheCorruptError on
        bytes that fail their checksum, naming the array and the rows."""
        ...

    def read_rows(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Rows `rows` ((B,) sorted unique int64) of array `name` (only where `reads_rows`)."""
        ...

    def stored_arrays(self) -> StoredArrays:
        """What the store itself says it holds, read from its own metadata (no array data); arrays
        it lacks are left out. CacheCorruptError naming the file when that metadata is damaged."""
        ...

    def remove_debris(self) -> None:
        """Delete the temporary files a killed write of this store leaves behind."""
        ...


def store_class(kind: str) -> type[Store]:
    """The class of the store named `kind` (a key of `STORES`)."""
    if kind not in STORES:
        raise ValueError(f"unknown cache store {kind!r}; valid: {', '.join(STORES)}")
    module, name = STORES[kind].split(":")
    return getattr(importlib.import_module(module), name)


def open_store(kind: str, path: str | Path, layout: CacheLayout, zstd_level: int = 3) -> Store:
    """The existing store of kind `kind` at `path` (zstd_level only matters for writing)."""
    return store_class(kind)(path, layout, zstd_level)
