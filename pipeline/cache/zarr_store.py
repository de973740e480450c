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

RAGGED_CHUNK_VALUES = 1 << 18
"""Values per inner chunk of a ragged array (256k: ~0.5 MiB of float16, one read unit)."""


class ZarrStore:
    """A cache's arrays in a Zarr v3 group at `path` (a `pipeline.cache.store.Store`)."""

    kind = "zarr"
    reads_rows = True

    def __init__(self, path: str | Path, layout: CacheLayout, zstd_level: int = 3) -> None:
        self.path = Path(path)
        self.layout = layout
        self.zstd_level = zstd_level
        self._readers: dict[str, zarr.Array] = {}

    @classmethod
    def create(cls, path: str | Path, layout: CacheLayout, zstd_level: int = 3) -> ZarrStore:
        """Create the group and every (empty) array at `path`, replacing what was there."""
        root = zarr.open_group(str(path), mode="w", zarr_format=3)
        for name in layout.ragged_arrays():  # its per-shard arrays appear as shards are written
            root.create_group(name)
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
        for name, (token_shape, dtype) in self.layout.ragged_arrays().items():
            self._write_ragged(name, shard_index, np.ascontiguousarray(arrays[name], dtype), token_shape)
        self._fsync_shard(shard_index)

    def _ragged_path(self, name: str, shard_index: int) -> Path:
        """`<name>/<k>`: one 1-D (per token) array per shard, its length the shard's token count."""
        return array_path(self.path, name) / f"{shard_index:06d}"

    def _write_ragged(self, name: str, shard_index: int, values: np.ndarray, token_shape: tuple) -> None:
        chunk = max(1, RAGGED_CHUNK_VALUES // max(1, int(np.prod(token_shape, dtype=np.int64))))
        array = zarr.create_array(
            str(self._ragged_path(name, shard_index)),
            shape=values.shape,
            dtype=values.dtype,
            chunks=(chunk, *token_shape),
            compressors=[ZstdCodec(level=self.zstd_level), Crc32cCodec()],
            fill_value=0,
            zarr_format=3,
            overwrite=True,
        )
        array[...] = values

    def _fsync_shard(self, shard_index: int) -> None:
        """Flush the shard's files to disk (zarr's LocalStore renames but never fsyncs)."""
        for name, (row_shape, _) in self.layout.arrays().items():
            key = array_path(self.path, name) / "c" / str(shard_index)
            for _ in row_shape:
                key = key / "0"
            if key.exists():
                with open(key, "rb") as handle:
                    os.fsync(handle.fileno())
        for name in self.layout.ragged_arrays():
            for key in sorted(self._ragged_path(name, shard_index).rglob("*")):
                if key.is_file():
                    with open(key, "rb") as handle:
                        os.fsync(handle.fileno())

    def read(self, name: str, rows: slice) -> np.ndarray:
        """Rows `rows` of array `name` in the stored dtype (a ragged array: every token of the shard
        whose rows `rows` are); CacheCorruptError on a bad checksum."""
        try:
            if name in self.layout.ragged_arrays():
                shard = rows.start // self.layout.rows_per_shard
                return zarr.open_array(str(self._ragged_path(name, shard)), mode="r")[...]
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
        for name, (token_shape, dtype) in self.layout.ragged_arrays().items():
            shapes = []
            for shard in range(self.layout.num_shards):
                metadata = self._ragged_path(name, shard) / "zarr.json"
                if not metadata.is_file():
                    break
                try:
                    array = zarr.open_array(str(metadata.parent), mode="r")
                except Exception as error:  # as above
                    raise CacheCorruptError(
                        f"{metadata} is damaged ({type(error).__name__}: {error}); re-run `dvc repro cache`"
                    ) from None
                shapes.append((tuple(int(d) for d in array.shape), str(array.dtype)))
            if len(shapes) == self.layout.num_shards:
                inner = {shape[1:] for shape, _ in shapes} | {tuple(token_shape)}
                dtypes = {d for _, d in shapes} | {dtype}
                total = sum(shape[0] for shape, _ in shapes)
                row = next(iter(inner - {tuple(token_shape)}), tuple(token_shape))
                stored[name] = ((total, *row), next(iter(dtypes - {dtype}), dtype))
        return stored

    def remove_debris(self) -> None:
        """Delete `*.partial` files a killed zarr write leaves behind (LocalStore writes
        `<key>.<uuid>.partial` then renames)."""
        for debris in self.path.rglob("*.partial"):
            debris.unlink(missing_ok=True)
