"""The Zarr v3 store: one sharded array per cache array, zstd + crc32c on every inner chunk.

Layout (zarr-python 3.1): inner chunk = `rows_per_chunk` rows (the unit read on its own), shard =
`rows_per_shard` rows (the unit written: one file per shard per array, `<array>/c/<k>/0...`).
Writers only ever write whole shards (`write_shard`), so any number of processes may each write
different shards (zarr-python#3682: partial concurrent shard writes silently lose data; docs/cache_format.md).
Every chunk carries a crc32c (`Crc32cCodec` after zstd), so a flipped or truncated byte fails on
read; a shard file that is missing altogether reads back as fill values, which the manifest's
per-shard sha256 catches (`pipeline.cache.open`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from pipeline.cache.format import CacheCorruptError, CacheLayout, array_path


class ZarrStore:
    """A cache's arrays in a Zarr v3 group at `path` (a `pipeline.cache.store.Store`)."""

    kind = "zarr"
    reads_rows = True

    def __init__(self, path: str | Path, layout: CacheLayout, zstd_level: int = 3) -> None:
        self.path = Path(path)
        self.layout = layout
        self._readers: dict[str, zarr.Array] = {}

    @classmethod
    def create(cls, path: str | Path, layout: CacheLayout, zstd_level: int = 3) -> ZarrStore:
        """Create the group and every (empty) array at `path`, replacing what was there."""
        root = zarr.open_group(str(path), mode="w", zarr_format=3)
        for name, (row_shape, dtype) in layout.arrays().items():
            root.create_array(
                name,
                shape=(layout.num_rows, *row_shape),
                dtype=dtype,
                chunks=(layout.rows_per_chunk, *row_shape),
                shards=(layout.rows_per_shard, *row_shape),
                compressors=[ZstdCodec(level=zstd_level), Crc32cCodec()],
                fill_value=0,
            )
        return cls(path, layout, zstd_level)

    def _array(self, name: str, mode: str = "r") -> zarr.Array:
        if mode != "r":
            return zarr.open_array(str(array_path(self.path, name)), mode=mode)
        if name not in self._readers:  # opening reads zarr.json: once per array, not per batch
            self._readers[name] = zarr.open_array(str(array_path(self.path, name)), mode="r")
        return self._readers[name]

    def write_array(self, name: str, rows: slice, values: np.ndarray) -> None:
        """Write one array's rows of one whole shard (`rows` must be a shard's row range)."""
        self._array(name, "r+")[rows] = values

    def write_shard(self, shard_index: int, rows: slice, arrays: Mapping[str, np.ndarray]) -> None:
        """Write every array of shard `shard_index` (rows `rows`), then fsync its files."""
        for name in self.layout.arrays():
            self.write_array(name, rows, arrays[name])
        self._fsync_shard(shard_index)

    def _fsync_shard(self, shard_index: int) -> None:
        """Flush the shard's files to disk (zarr's LocalStore renames but never fsyncs)."""
        for name, (row_shape, _) in self.layout.arrays().items():
            key = array_path(self.path, name) / "c" / str(shard_index)
            for _ in row_shape:
                key = key / "0"
            if key.exists():
                with open(key, "rb") as handle:
                    os.fsync(handle.fileno())

    def read(self, name: str, rows: slice) -> np.ndarray:
        """Rows `rows` of array `name` in the stored dtype; CacheCorruptError on a bad checksum."""
        try:
            return self._array(name)[rows]
        except (ValueError, RuntimeError, OSError) as error:
            raise CacheCorruptError(
                f"cache array {name!r} rows {rows.start}..{rows.stop - 1} in {self.path} fail their "
                f"checksum ({error}); re-run `dvc repro cache`"
            ) from None

    def read_rows(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Arbitrary rows ((B,) sorted unique int64) of array `name` (reads only their chunks)."""
        try:
            return self._array(name).oindex[rows]
        except (ValueError, RuntimeError, OSError) as error:
            raise CacheCorruptError(
                f"cache array {name!r} rows in {int(rows.min())}..{int(rows.max())} in {self.path} fail "
                f"their checksum ({error}); re-run `dvc repro cache`"
            ) from None

    def stored_arrays(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Array name -> (shape, dtype) from each array's zarr.json; arrays without one are left
        out. CacheCorruptError naming the zarr.json that cannot be read."""
        stored = {}
        for name in self.layout.arrays():
            metadata = array_path(self.path, name) / "zarr.json"
            if not metadata.is_file():
                continue
            try:
                array = self._array(name)
            except Exception as error:  # zarr raises JSON, validation, type and attribute errors here
                raise CacheCorruptError(
                    f"{metadata} is damaged ({type(error).__name__}: {error}); re-run `dvc repro cache`"
                ) from None
            stored[name] = (tuple(int(d) for d in array.shape), str(array.dtype))
        return stored

    def remove_debris(self) -> None:
        """Delete `*.partial` files a killed zarr write leaves behind (LocalStore writes
        `<key>.<uuid>.partial` then renames)."""
        for debris in self.path.rglob("*.partial"):
            debris.unlink(missing_ok=True)
