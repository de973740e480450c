"""The field values of prepared data on disk: uncompressed Arrow IPC files (`shards/part-NNNNN.arrow`)
of record batches of `block_rows` rows (docs/data_and_teacher.md §6 says why).

A fixed field is a fixed-size list of its dtype (the row flattened, C order); a variable-length field
a large list of its items (each item a fixed-size list when items have a shape). A read memory-maps
the files for the length of the call and copies out the rows asked for (`BlockReader`): memory is
bounded by the rows in flight.
"""

from __future__ import annotations

import math
import mmap
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
    """Reads rows of the shard files: picklable (nothing open between calls).

    Each `read` memory-maps the shards it needs and copies out only the rows asked for (a fixed
    field's row is one contiguous run of bytes in an uncompressed IPC file), then unmaps them: a
    random batch costs its own bytes, not the whole blocks it falls in, and the pages read do not
    stay mapped in the process (its RSS does not grow with the files read). docs/data_and_teacher.md §6.
    """

    def __init__(self, directory: Path, shards: list[dict], block_rows: int, fields: Mapping[str, FieldSpec]):
        self.directory, self.shards, self.block_rows = Path(directory), shards, int(block_rows)
        self.fields = dict(fields)
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
        # fixed fields of numbers are read row by row from their bytes; bool is bit-packed in Arrow
        self._direct = {n for n, s in self.fields.items() if not s.variable and np.dtype(s.dtype) != bool}
        self._layouts: dict[int, dict[str, np.ndarray]] = {}

    @property
    def num_rows(self) -> int:
        """Rows in all shards."""
        return int(self.shard_start[-1])

    def block_of(self, rows: np.ndarray) -> np.ndarray:
        """(n,) global block index of each row."""
        return np.searchsorted(self.block_start, rows, side="right") - 1

    def _open(self, shard: int):
        path = self.directory / self.shards[shard]["file"]
        try:
            return pa.ipc.open_file(pa.memory_map(str(path)))
        except (pa.ArrowException, OSError) as error:
            raise ShardReadError(path, error) from None

    def _block(self, readers: dict, index: int, fields: tuple[str, ...]) -> dict[str, np.ndarray | Ragged]:
        """Block `index`'s values of `fields`: views into the memory map (no copy)."""
        shard = int(self.block_shard[index])
        if shard not in readers:
            readers[shard] = self._open(shard)
        try:
            batch = readers[shard].get_batch(int(self.block_in_shard[index]))
        except (pa.ArrowException, OSError) as error:
            raise ShardReadError(self.directory / self.shards[shard]["file"], error) from None
        return {name: from_arrow(batch.column(name), self.fields[name]) for name in fields}

    def _layout(self, shard: int) -> dict[str, np.ndarray]:
        """Per fixed field, (blocks in the shard,) int64 byte offset in the file of each block's first
        row (computed once per shard; the values of an uncompressed IPC file lie in it as written)."""
        if shard not in self._layouts:
            path = self.directory / self.shards[shard]["file"]
            try:
                mapped = pa.memory_map(str(path))
                base = mapped.read_buffer(mapped.size()).address
                reader = pa.ipc.open_file(mapped)
                offsets = {name: np.zeros(reader.num_record_batches, np.int64) for name in self._direct}
                for index in range(reader.num_record_batches):
                    batch = reader.get_batch(index)
                    for name in self._direct:
                        flat = batch.column(name).flatten()
                        item = np.dtype(self.fields[name].dtype).itemsize
                        offsets[name][index] = flat.buffers()[1].address + flat.offset * item - base
            except (pa.ArrowException, OSError) as error:
                raise ShardReadError(path, error) from None
            self._layouts[shard] = offsets
        return self._layouts[shard]

    def _fixed_rows(self, rows: np.ndarray, blocks: np.ndarray, name: str) -> np.ndarray:
        """(n, *shape) values of fixed field `name` at `rows`, each row's bytes copied from the file."""
        spec = self.fields[name]
        out = np.empty((len(rows), *spec.shape), spec.dtype)
        row_bytes = out.itemsize * math.prod(spec.shape)
        target = out.reshape(len(rows), -1).view(np.uint8)
        shards = self.block_shard[blocks]
        for shard in np.unique(shards):
            picked = np.flatnonzero(shards == shard)
            first = self._layout(int(shard))[name][self.block_in_shard[blocks[picked]]]
            starts = first + (rows[picked] - self.block_start[blocks[picked]]) * row_bytes
            path = self.directory / self.shards[int(shard)]["file"]
            try:
                with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                    source = np.frombuffer(mapped, np.uint8)
                    for index, start in zip(picked.tolist(), starts.tolist()):
                        target[index] = source[start : start + row_bytes]
                    del source  # the map closes only once no view of it is left
            except (OSError, ValueError) as error:
                raise ShardReadError(path, error) from None
        return out

    def read(self, rows: np.ndarray, fields: tuple[str, ...]) -> dict[str, np.ndarray | Ragged]:
        """Rows (n,) int64 in the given order: (n, *shape) arrays / Ragged, the stored dtypes (copies)."""
        rows = np.asarray(rows, np.int64)
        blocks = self.block_of(rows)
        out = {name: self._fixed_rows(rows, blocks, name) for name in fields if name in self._direct}
        rest = tuple(name for name in fields if name not in self._direct)
        if rest:
            out |= self._block_rows(rows, blocks, rest)
        return {name: out[name] for name in fields}

    def _block_rows(self, rows: np.ndarray, blocks: np.ndarray, fields: tuple[str, ...]) -> dict:
        """`read` of variable-length (and bool) fields: each block's column viewed, the rows taken."""
        unique = np.unique(blocks)
        parts: dict[str, list] = {name: [] for name in fields}
        position = np.empty(len(rows), np.int64)
        done = 0
        readers: dict = {}
        values: dict = {}
        for block in unique:
            picked = np.flatnonzero(blocks == block)
            values = self._block(readers, int(block), fields)
            local = rows[picked] - self.block_start[block]
            for name in fields:
                value = values[name]
                parts[name].append(value.take(local) if isinstance(value, Ragged) else value[local])
            position[picked] = np.arange(done, done + len(picked))
            done += len(picked)
        values = {}
        readers.clear()  # the maps close once no view is left: copies only from here on
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
