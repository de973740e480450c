"""The field values of prepared data on disk: uncompressed Arrow IPC files (`shards/part-NNNNN.arrow`)
of record batches of `block_rows` rows, the unit read (docs/data_and_teacher.md §6 says why).

A fixed field is a fixed-size list of its dtype (the row flattened, C order); a variable-length field
a large list of its items (each item a fixed-size list when items have a shape). Reading a block reads
only that block's bytes of the requested columns (`pa.OSFile`, no memory map: the pages read do not
stay in the process), so memory is bounded by the blocks in flight.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.data.fields import FieldSpec, Ragged

SHARD_DIR = "shards"


class ShardReadError(Exception):
    """A shard file could not be read (`path`, `cause`); the dataset turns it into one line."""

    def __init__(self, path: Path, cause: Exception):
        super().__init__(f"{path}: {cause}")
        self.path, self.cause = path, cause


def shard_name(index: int) -> str:
    """`shards/part-00000.arrow` for shard 0 (relative to the prepared directory)."""
    return f"{SHARD_DIR}/part-{index:05d}.arrow"


def _flat_type(spec: FieldSpec) -> pa.DataType:
    item = pa.from_numpy_dtype(np.dtype(spec.dtype))
    inner = math.prod(spec.inner_shape)
    if spec.variable:
        return pa.large_list(pa.list_(item, inner) if spec.inner_shape else item)
    return pa.list_(item, inner)


def arrow_schema(fields: Mapping[str, FieldSpec]) -> pa.Schema:
    """One column per field, in the order given."""
    return pa.schema([pa.field(name, _flat_type(spec), nullable=False) for name, spec in fields.items()])


def to_arrow(values: np.ndarray | Ragged, spec: FieldSpec) -> pa.Array:
    """n rows of one field -> its Arrow column (zero copy where numpy allows)."""
    item = np.dtype(spec.dtype)
    if spec.variable:
        flat = np.ascontiguousarray(values.values[values.offsets[0] : values.offsets[-1]], item)
        inner = math.prod(spec.inner_shape)
        array = pa.array(flat.reshape(-1))
        if spec.inner_shape:
            array = pa.FixedSizeListArray.from_arrays(array, inner)
        offsets = pa.array(values.offsets - values.offsets[0], pa.int64())
        return pa.LargeListArray.from_arrays(offsets, array)
    flat = np.ascontiguousarray(values, item).reshape(-1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat), math.prod(spec.shape))


def from_arrow(column: pa.Array, spec: FieldSpec) -> np.ndarray | Ragged:
    """An Arrow column written by `to_arrow` -> (n, *shape) array or Ragged, the stored dtype."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if spec.variable:
        offsets = column.offsets.to_numpy()
        values = column.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
        if spec.inner_shape:
            values = values.flatten()
        flat = values.to_numpy(zero_copy_only=False)
        return Ragged(flat.reshape(-1, *spec.inner_shape), offsets - offsets[0])
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(len(column), *spec.shape)


class ShardWriter:
    """Appends rows to `directory/shards/`: a new file every `rows_per_shard` rows, record batches
    of `block_rows` rows (a multiple of it per file, so blocks never straddle files)."""

    def __init__(
        self, directory: Path, fields: Mapping[str, FieldSpec], block_rows: int, blocks_per_shard: int
    ):
        self.directory, self.fields = Path(directory), dict(fields)
        self.block_rows, self.rows_per_shard = int(block_rows), int(block_rows) * int(blocks_per_shard)
        self.schema = arrow_schema(self.fields)
        self.shards: list[dict] = []
        self._writer = None
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        (self.directory / SHARD_DIR).mkdir(parents=True, exist_ok=True)

    def add(self, chunk: Mapping[str, np.ndarray | Ragged]) -> None:
        """Rows of every field (same n), in row order."""
        columns = [to_arrow(chunk[name], spec) for name, spec in self.fields.items()]
        self._pending.append(pa.RecordBatch.from_arrays(columns, schema=self.schema))
        self._pending_rows += len(columns[0]) if columns else 0
        while self._pending_rows >= self.block_rows:
            self._flush_block(self.block_rows)

    def _flush_block(self, rows: int) -> None:
        table = pa.Table.from_batches(self._pending, schema=self.schema)
        block, rest = table.slice(0, rows), table.slice(rows)
        if self._writer is None:
            name = shard_name(len(self.shards))
            self._writer = pa.ipc.new_file(str(self.directory / name), self.schema)
            self.shards.append({"file": name, "rows": 0})
        self._writer.write_table(block.combine_chunks(), max_chunksize=rows)
        self.shards[-1]["rows"] += rows
        self._pending = rest.combine_chunks().to_batches() if rest.num_rows else []
        self._pending_rows = rest.num_rows
        if self.shards[-1]["rows"] >= self.rows_per_shard:
            self._writer.close()
            self._writer = None

    def close(self) -> list[dict]:
        """Write the last (short) block; the shard list [{file, rows}] for meta.json."""
        if self._pending_rows:
            self._flush_block(self._pending_rows)
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        return self.shards


class BlockReader:
    """Reads blocks (record batches) of the shard files, a few kept: picklable (files reopen)."""

    def __init__(
        self,
        directory: Path,
        shards: list[dict],
        block_rows: int,
        fields: Mapping[str, FieldSpec],
        keep_blocks: int = 4,
    ):
        self.directory, self.shards, self.block_rows = Path(directory), shards, int(block_rows)
        self.fields, self.keep_blocks = dict(fields), keep_blocks
        counts = [int(s["rows"]) for s in shards]
        self.shard_start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        blocks = [math.ceil(c / self.block_rows) for c in counts]
        self.block_shard = np.repeat(np.arange(len(shards)), blocks).astype(np.int64)
        self.block_in_shard = (
            np.concatenate([np.arange(b) for b in blocks]).astype(np.int64)
            if blocks
            else np.zeros(0, np.int64)
        )
        self.block_start = np.minimum(
            self.shard_start[self.block_shard] + self.block_in_shard * self.block_rows, self.shard_start[-1]
        )
        self._files: dict = {}
        self._cache: OrderedDict = OrderedDict()

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_files"], state["_cache"] = {}, OrderedDict()
        return state

    @property
    def num_rows(self) -> int:
        """Rows in all shards."""
        return int(self.shard_start[-1])

    def block_of(self, rows: np.ndarray) -> np.ndarray:
        """(n,) global block index of each row."""
        return np.searchsorted(self.block_start, rows, side="right") - 1

    def block(self, index: int, fields: tuple[str, ...]) -> dict[str, np.ndarray | Ragged]:
        """Block `index`'s values of `fields`."""
        key = (int(index), fields)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        shard = int(self.block_shard[index])
        path = self.directory / self.shards[shard]["file"]
        try:
            reader = self._files.get(shard)
            if reader is None:
                reader = pa.ipc.open_file(pa.OSFile(str(path)))
                self._files[shard] = reader
            batch = reader.get_batch(int(self.block_in_shard[index]))
        except (pa.ArrowException, OSError) as error:
            raise ShardReadError(path, error) from None
        values = {name: from_arrow(batch.column(name), self.fields[name]) for name in fields}
        self._cache[key] = values
        while len(self._cache) > self.keep_blocks:
            self._cache.popitem(last=False)
        return values

    def read(self, rows: np.ndarray, fields: tuple[str, ...]) -> dict[str, np.ndarray | Ragged]:
        """Rows (n,) int64 in the given order: (n, *shape) arrays / Ragged, the stored dtypes."""
        rows = np.asarray(rows, np.int64)
        blocks = self.block_of(rows)
        unique = np.unique(blocks)
        parts: dict[str, list] = {name: [] for name in fields}
        position = np.empty(len(rows), np.int64)
        done = 0
        for block in unique:
            picked = np.flatnonzero(blocks == block)
            values = self.block(int(block), fields)
            local = rows[picked] - self.block_start[block]
            for name in fields:
                value = values[name]
                parts[name].append(value.take(local) if isinstance(value, Ragged) else value[local])
            position[picked] = np.arange(done, done + len(picked))
            done += len(picked)
        out: dict[str, np.ndarray | Ragged] = {}
        for name in fields:
            spec = self.fields[name]
            if spec.variable:
                joined = (
                    Ragged.concat(parts[name])
                    if parts[name]
                    else Ragged(np.zeros((0, *spec.inner_shape), spec.dtype), np.zeros(1, np.int64))
                )
                out[name] = joined.take(position) if len(unique) > 1 else joined
            else:
                joined = (
                    np.concatenate(parts[name]) if parts[name] else np.zeros((0, *spec.shape), spec.dtype)
                )
                out[name] = joined[position] if len(unique) > 1 else joined
        return out
