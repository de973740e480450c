"""The Parquet store: one file per shard, `part-<k>.parquet`, every cache array a column.

Multi-dimensional arrays are fixed-size-list columns of the flattened row (the per-row shape is
in cache.json). Written with dictionary encoding off, BYTE_STREAM_SPLIT on float columns and zstd
(0.85x raw vs 1.21x with pyarrow's defaults: docs/cache_format.md), one row group per `rows_per_chunk`
rows, and page checksums (`write_page_checksum=True`), verified on every read. Each file is
built in memory and renamed into place atomically (fsynced), so a shard file is whole or absent.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401 (pa.compute)
import pyarrow.parquet as pq

from pipeline.cache.format import TOKEN_LENGTHS, CacheCorruptError, CacheLayout
from pipeline.io import atomic_write_bytes


def shard_file_name(shard_index: int) -> str:
    """File name of shard `shard_index` in the store directory."""
    return f"part-{shard_index:06d}.parquet"


def _row_spec(column: pa.DataType, row_shape: tuple[int, ...]) -> tuple[tuple[int, ...], str]:
    """(row shape, numpy dtype name) of a column: a fixed-size list of width prod(row_shape) is
    `row_shape`, another width is (width,), a plain column ()."""
    if pa.types.is_fixed_size_list(column):
        dtype = np.dtype(column.value_type.to_pandas_dtype()).name
        width = int(column.list_size)
        return (tuple(row_shape) if width == int(np.prod(row_shape)) else (width,)), dtype
    return (), np.dtype(column.to_pandas_dtype()).name


class ParquetStore:
    """A cache's arrays as one Parquet file per shard in the directory `path` (a
    `pipeline.cache.store.Store`)."""

    kind = "parquet"
    reads_rows = False

    def __init__(self, path: str | Path, layout: CacheLayout, zstd_level: int = 3) -> None:
        self.path = Path(path)
        self.layout = layout
        self.zstd_level = zstd_level

    @classmethod
    def create(cls, path: str | Path, layout: CacheLayout, zstd_level: int = 3) -> ParquetStore:
        """An empty store directory at `path` (files appear shard by shard)."""
        Path(path).mkdir(parents=True, exist_ok=True)
        for stale in Path(path).glob("part-*.parquet"):
            stale.unlink()
        return cls(path, layout, zstd_level)

    def _table(self, arrays: Mapping[str, np.ndarray]) -> pa.Table:
        columns = {}
        for name, (row_shape, dtype) in self.layout.arrays().items():
            values = np.ascontiguousarray(arrays[name], dtype=dtype)
            if row_shape:
                width = int(np.prod(row_shape))
                columns[name] = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), width)
            else:
                columns[name] = pa.array(values)
        if self.layout.ragged_arrays():
            offsets = np.concatenate([[0], np.cumsum(arrays[TOKEN_LENGTHS])]).astype(np.int64)
        for name, (token_shape, dtype) in self.layout.ragged_arrays().items():
            values = pa.array(np.ascontiguousarray(arrays[name], dtype=dtype).reshape(-1))
            if token_shape:
                values = pa.FixedSizeListArray.from_arrays(values, int(np.prod(token_shape)))
            columns[name] = pa.LargeListArray.from_arrays(pa.array(offsets), values)
        return pa.table(columns)

    def _float_column_paths(self) -> list[str]:
        paths = [
            f"{name}.list.element" if row_shape else name
            for name, (row_shape, dtype) in self.layout.arrays().items()
            if dtype.startswith("float")
        ]
        for name, (token_shape, dtype) in self.layout.ragged_arrays().items():
            if dtype.startswith("float"):
                paths.append(f"{name}.list.element.list.element" if token_shape else f"{name}.list.element")
        return paths

    def write_shard(self, shard_index: int, rows: slice, arrays: Mapping[str, np.ndarray]) -> None:
        """Write shard `shard_index` (rows `rows`) as one Parquet file, atomically and fsynced."""
        sink = pa.BufferOutputStream()
        pq.write_table(
            self._table(arrays),
            sink,
            row_group_size=self.layout.rows_per_chunk,
            use_dictionary=False,
            use_byte_stream_split=self._float_column_paths(),
            compression="zstd",
            compression_level=self.zstd_level,
            write_page_checksum=True,
            write_statistics=False,
        )
        self.write_file(shard_index, sink.getvalue().to_pybytes())

    def write_file(self, shard_index: int, data: bytes) -> None:
        """Put one finished shard file in place (atomic rename)."""
        atomic_write_bytes(self.path / shard_file_name(shard_index), data)

    def read(self, name: str, rows: slice) -> np.ndarray:
        """Rows `rows` (one shard's range) of array `name` (a ragged array: every token of those
        rows, (M, *token_shape)); CacheCorruptError on a bad page."""
        ragged = name in self.layout.ragged_arrays()
        row_shape, dtype = self.layout.ragged_arrays()[name] if ragged else self.layout.arrays()[name]
        shard_index = rows.start // self.layout.rows_per_shard
        path = self.path / shard_file_name(shard_index)
        where = f"cache array {name!r} rows {rows.start}..{rows.stop - 1} ({path})"
        if not path.exists():
            raise CacheCorruptError(f"{where}: shard file is missing; re-run `dvc repro cache`")
        try:
            column = pq.read_table(path, columns=[name], page_checksum_verification=True).column(name)
            column = column.combine_chunks()
            if ragged:
                column = column.flatten()
            values = (
                column.values.to_numpy(zero_copy_only=False)
                if row_shape
                else column.to_numpy(zero_copy_only=False)
            )
        except (OSError, pa.ArrowException, ValueError) as error:
            raise CacheCorruptError(
                f"{where} fail their checksum or cannot be decoded ({error}); re-run `dvc repro cache`"
            ) from None
        values = np.asarray(values, dtype=dtype).reshape(-1, *row_shape)
        if not ragged and len(values) != rows.stop - rows.start:
            raise CacheCorruptError(f"{where}: holds {len(values)} rows, expected {rows.stop - rows.start}")
        return values

    def stored_arrays(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Array name -> (shape, dtype) from the footers of the shard files present: rows summed
        over the files; a list column's row shape is the layout's when its width matches, else
        (width,). A column some file lacks is left out, one whose files disagree is given as the
        file that differs from the layout. CacheCorruptError names a file that cannot be read."""
        expected = self.layout.arrays()
        rows, found = 0, {name: set() for name in expected}
        files = sorted(self.path.glob("part-*.parquet"))
        gap = next((k for k, path in enumerate(files) if path.name != shard_file_name(k)), None)
        if gap is not None and gap < self.layout.num_shards:
            shard = self.layout.shard_rows(gap)
            raise CacheCorruptError(
                f"cache rows {shard.start}..{shard.stop - 1}: shard file {self.path / shard_file_name(gap)} "
                "is missing; re-run `dvc repro cache`"
            )
        for path in files:
            try:
                footer = pq.ParquetFile(path)
                schema = footer.schema_arrow
            except (OSError, pa.ArrowException, ValueError) as error:
                raise CacheCorruptError(
                    f"{path} is not a readable Parquet file ({error}); re-run `dvc repro cache`"
                ) from None
            rows += footer.metadata.num_rows
            for name, (row_shape, _) in expected.items():
                index = schema.get_field_index(name)
                found[name].add(None if index < 0 else _row_spec(schema.field(index).type, row_shape))
        stored = {}
        for name, specs in found.items():
            if specs and None not in specs:
                row_shape, dtype = next((s for s in specs if s != expected[name]), expected[name])
                stored[name] = ((rows, *row_shape), dtype)
        stored |= self._stored_ragged(files)
        return stored

    def _stored_ragged(self, files: list[Path]) -> dict[str, tuple[tuple[int, ...], str]]:
        """Ragged array -> ((tokens, *token_shape), dtype): tokens summed from each file's
        `token_lengths` column (8 bytes a row), the type from its footer; left out when a file lacks it."""
        ragged = self.layout.ragged_arrays()
        if not ragged or TOKEN_LENGTHS not in self.layout.arrays():
            return {}
        tokens, found = 0, {name: set() for name in ragged}
        for path in files:
            try:
                footer = pq.ParquetFile(path)
                tokens += int(pa.compute.sum(footer.read(columns=[TOKEN_LENGTHS]).column(0)).as_py() or 0)
            except (OSError, pa.ArrowException, ValueError, KeyError) as error:
                raise CacheCorruptError(
                    f"{path} is not a readable Parquet file ({error}); re-run `dvc repro cache`"
                ) from None
            for name, (token_shape, _) in ragged.items():
                index = footer.schema_arrow.get_field_index(name)
                column = None if index < 0 else footer.schema_arrow.field(index).type
                if column is None or not pa.types.is_large_list(column):
                    found[name].add(None)
                else:
                    found[name].add(_row_spec(column.value_type, token_shape))
        return {
            name: ((tokens, *next(iter(specs))[0]), next(iter(specs))[1])
            for name, specs in found.items()
            if len(specs) == 1 and None not in specs
        }

    def remove_debris(self) -> None:
        """Delete temporary files a killed write leaves behind."""
        for debris in self.path.glob(".tmp-*"):
            debris.unlink(missing_ok=True)
