"""Prepared data opened lazily (format 2, docs/data_and_teacher.md §6): the per-row index in memory,
the field values read from the shards on demand, read-time transforms applied as they are read.

```python
data = open_prepared("data/prepared")
data.fields                      # {"pixels": FieldSpec("uint8", (3, 32, 32))}
batch = data.read(rows, ["pixels"])          # {"pixels": (n, 3, 32, 32) float32 after prepare.transforms}
data.inputs[0:256]               # the single-input view every classic consumer reads, float32
for rows, values in data.iter_blocks(block_order(data.rows("train"), data.block_rows, seed=0), 256): ...
```
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.cache.batch import SPLITS, UNLABELLED
from pipeline.data.checks import first_sentence
from pipeline.data.fields import FieldSpec, MissingFieldError, Ragged
from pipeline.data.fingerprint import LEGACY_FIELD
from pipeline.data.shards import BlockReader, ShardReadError
from pipeline.data.writer import FORMAT_VERSION, INDEX_FILE, META_FILE
from pipeline.errors import DistilleryError

RERUN = "re-run `distillery prepare` (or `dvc repro prepare`)"


class PreparedDataError(DistilleryError):
    """`data/prepared` is missing, incomplete or does not match its own fingerprint."""


def read_time(spec: Sequence, values: np.ndarray) -> np.ndarray:
    """(n, *shape) values through the read-time steps `spec` (pipeline.transforms; none: unchanged)."""
    if not spec or len(values) == 0:
        return values
    from pipeline.transforms import ViewParams, apply_batch

    views = np.repeat(ViewParams().to_array()[None], len(values))
    return apply_batch(spec, views, values)


class FieldView:
    """Array-like over one fixed field, float32 after its read-time transforms: `view[slice]`,
    `view[int array]` read only those rows; len, shape, dtype, ndim as a numpy array would have."""

    def __init__(self, dataset: PreparedDataset, name: str, position: np.ndarray | None = None):
        self.dataset, self.name = dataset, name
        self.position = None if position is None else np.asarray(position, np.int64)
        spec = dataset.fields[name]
        probe = dataset.read(np.zeros(1, np.int64), [name])[name] if len(dataset) else None
        inner = tuple(probe.shape[1:]) if probe is not None else spec.shape
        self.shape = (len(dataset) if position is None else len(self.position), *inner)
        self.dtype = np.dtype(np.float32)
        self.ndim = len(self.shape)

    def at(self, position: np.ndarray) -> FieldView:
        """The view whose row i is this view's row `position[i]` ((n,) int64): the inputs of the
        cache rows, say, read only when asked for."""
        position = np.asarray(position, np.int64)
        return FieldView(self.dataset, self.name, position if self.position is None else self.position[position])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, tuple):
            return self[key[0]][(slice(None), *key[1:])]
        if isinstance(key, slice):
            rows = np.arange(*key.indices(len(self)), dtype=np.int64)
        elif np.isscalar(key):
            return self[np.array([key])][0]
        else:
            rows = np.asarray(key)
            rows = np.flatnonzero(rows) if rows.dtype == bool else rows.astype(np.int64)
            rows = np.where(rows < 0, rows + len(self), rows)
        if self.position is not None:
            rows = self.position[rows]
        values = self.dataset.read(rows, [self.name])[self.name]
        return np.ascontiguousarray(values, dtype=np.float32)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype)


def split_rows(split: np.ndarray, label: np.ndarray, name: str, labelled_only: bool = False) -> np.ndarray:
    """(n,) int64 row numbers of split `name` (split: (N,) int8 codes, label: (N,) int64), ascending;
    only rows with a label if asked. ValueError for an unknown split name."""
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; valid: {', '.join(SPLITS)}")
    mask = split == SPLITS.index(name)
    if labelled_only:
        mask &= label != UNLABELLED
    return np.flatnonzero(mask).astype(np.int64)


class PreparedDataset:
    """Prepared data on disk (see the module docstring and docs/architecture.md)."""

    def __init__(self, directory: str | Path, meta: dict, sample_id, split, label, user_id):
        self.directory, self.meta = Path(directory), meta
        self.sample_id, self.split, self.label, self.user_id = sample_id, split, label, user_id
        self.num_classes = int(meta["num_classes"])
        names = meta.get("class_names")
        self.class_names = None if names is None else tuple(str(n) for n in names)
        self.fingerprint = str(meta["fingerprint"])
        self.fields = {name: FieldSpec.from_json(value) for name, value in meta["fields"].items()}
        self.transforms = {name: tuple(steps) for name, steps in meta.get("transforms", {}).items()}
        self.block_rows = int(meta["block_rows"])
        self.blocks = BlockReader(self.directory, meta["shards"], self.block_rows, self.fields)
        fixed = [name for name, spec in self.fields.items() if not spec.variable]
        self.input_field = (
            LEGACY_FIELD if LEGACY_FIELD in self.fields else (fixed[0] if len(fixed) == 1 else None)
        )
        self._inputs: FieldView | None = None

    def __len__(self) -> int:
        return len(self.sample_id)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_inputs"] = None
        return state

    @property
    def inputs(self) -> FieldView:
        """The single-input view (`input_field`), float32 after its transforms."""
        if self._inputs is None:
            if self.input_field is None:
                raise MissingFieldError(
                    f"{self.directory}: a single-input consumer needs one fixed field (or one named "
                    f"'input') but the prepared data has {', '.join(self.fields)}; name the field to read"
                )
            self._inputs = FieldView(self, self.input_field)
        return self._inputs

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Per-row shape of `inputs` (after transforms)."""
        return tuple(self.inputs.shape[1:])

    def field_view(self, name: str) -> FieldView:
        """An array-like over fixed field `name` (float32 after its transforms)."""
        return FieldView(self, name)

    def read(
        self, rows, fields: Sequence[str] | None = None, transform: bool = True
    ) -> dict[str, np.ndarray | Ragged]:
        """Rows (n,) int64 in the given order -> {field: (n, *shape) array or Ragged}; fixed fields
        go through their read-time transforms unless `transform` is False (then the stored dtype)."""
        names = tuple(self.fields) if fields is None else tuple(fields)
        unknown = [n for n in names if n not in self.fields]
        if unknown:
            raise MissingFieldError(
                f"{self.directory}: no field {', '.join(map(repr, unknown))}; it has {', '.join(self.fields)}"
            )
        rows = np.asarray(rows, np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"rows outside 0..{len(self) - 1}")
        try:
            values = self.blocks.read(rows, names)
        except ShardReadError as error:  # a shard truncated or replaced after prepare wrote it
            raise PreparedDataError(
                f"{error.path}: not a readable Arrow IPC file ({first_sentence(error.cause)}); {RERUN}"
            ) from None
        if transform:
            for name in names:
                if self.transforms.get(name) and not isinstance(values[name], Ragged):
                    values[name] = read_time(self.transforms[name], values[name])
        return values

    def iter_blocks(
        self, order, rows_per_batch: int, fields: Sequence[str] | None = None, transform: bool = True
    ) -> Iterator[tuple[np.ndarray, dict]]:
        """(rows, values) batches of `rows_per_batch` rows along `order` ((n,) int64): streamed, each
        block of the files read once when `order` comes from `block_order`."""
        order = np.asarray(order, np.int64)
        for start in range(0, len(order), rows_per_batch):
            rows = order[start : start + rows_per_batch]
            yield rows, self.read(rows, fields, transform)

    def rows(self, split: str, labelled_only: bool = False) -> np.ndarray:
        """(n,) int64 row numbers of one split, ascending; only rows with a label if asked."""
        return split_rows(self.split, self.label, split, labelled_only)

    def shown_ids(self, rows) -> list[int | str]:
        """The user's ids of `rows` (row numbers), as Python ints or strs, for messages."""
        return self.to_index().shown_ids(rows)

    def ids_of(self, sample_ids) -> list[int | str]:
        """The user's ids of the int64 keys `sample_ids` (see PreparedData.ids_of)."""
        return self.to_index().ids_of(sample_ids)

    def class_name(self, index: int) -> str:
        """The user's name of class `index` ("3" when the labels were integers)."""
        return self.class_names[index] if self.class_names else str(int(index))

    def class_counts(self) -> dict[str, dict[str, int]]:
        """Per split: rows per class label as a string ("-1" counts rows without a label)."""
        return {k: dict(v) for k, v in self.meta["class_counts"].items()}

    def in_memory_bytes(self) -> int:
        """Bytes `to_memory` would hold for the inputs (float32)."""
        return int(np.prod(self.inputs.shape)) * 4

    def to_index(self):
        """A PreparedData holding the index only (inputs (N, 0)): for ids and messages."""
        from pipeline.data.prepared import PreparedData

        return PreparedData(
            self.sample_id,
            self.split,
            self.label,
            np.zeros((len(self), 0), np.float32),
            self.num_classes,
            self.fingerprint,
            self.user_id,
            self.class_names,
        )

    def to_memory(self):
        """The whole dataset as a PreparedData (inputs (N, *input_shape) float32): small data only."""
        from pipeline.data.prepared import PreparedData

        inputs = (
            self.inputs[:] if len(self) else np.zeros((0, *self.fields[self.input_field].shape), np.float32)
        )
        return PreparedData(
            self.sample_id,
            self.split,
            self.label,
            inputs,
            self.num_classes,
            self.fingerprint,
            self.user_id,
            self.class_names,
        )


def block_order(rows, block_rows: int, seed: int, epoch: int = 0) -> np.ndarray:
    """`rows` ((n,) int64 row numbers) in a seeded block-shuffled order: the blocks of `block_rows`
    file rows they fall in are permuted, then the rows within each block; every row exactly once.
    A function of (rows, block_rows, seed, epoch) only."""
    rows = np.asarray(rows, np.int64)
    rng = np.random.default_rng([int(seed), int(epoch), 0x5EED])
    blocks = rows // int(block_rows)
    unique = np.unique(blocks)
    rank = np.empty(unique.max() + 1 if len(unique) else 0, np.int64)
    rank[unique] = rng.permutation(len(unique))
    within = rng.random(len(rows))
    return rows[np.lexsort((within, rank[blocks]))]


def open_prepared(directory: str | Path) -> PreparedDataset:
    """Open what `PreparedWriter` wrote: the index and meta.json read, the fields left on disk.
    PreparedDataError when missing, damaged, or of another format."""
    directory = Path(directory)
    meta_path, index_path = directory / META_FILE, directory / INDEX_FILE
    if not meta_path.exists():
        raise PreparedDataError(f"{meta_path}: missing; run `distillery prepare` (or `dvc repro prepare`)")
    try:
        meta = json.loads(meta_path.read_text())
        version = meta.get("format_version")
        meta["fields"], meta["shards"], meta["num_classes"], meta["fingerprint"]  # noqa: B018 - or damaged
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        if isinstance(error, KeyError) and version != FORMAT_VERSION:
            raise PreparedDataError(
                f"{directory}: prepared data of format {version}, this version reads format "
                f"{FORMAT_VERSION}; {RERUN}"
            ) from None
        raise PreparedDataError(f"{meta_path}: damaged ({type(error).__name__}: {error}); {RERUN}") from None
    for shard in [{"file": INDEX_FILE}, *meta["shards"]]:
        if not (directory / shard["file"]).exists():
            raise PreparedDataError(f"{directory / shard['file']}: missing; {RERUN}")
    try:
        table = pq.read_table(index_path)
    except (pa.ArrowException, OSError) as error:
        raise PreparedDataError(
            f"{index_path}: not a readable Parquet file ({first_sentence(error)}); {RERUN}"
        ) from None
    split = pc.index_in(table.column("split"), value_set=pa.array(SPLITS))
    if split.null_count:
        raise PreparedDataError(f"{index_path}: split values outside {', '.join(SPLITS)}; {RERUN}")
    user_id = None
    if "user_id" in table.column_names:
        user_id = np.array(table.column("user_id").to_pylist(), dtype=object)
    dataset = PreparedDataset(
        directory,
        meta,
        table.column("sample_id").to_numpy().astype(np.int64),
        split.to_numpy(zero_copy_only=False).astype(np.int8),
        table.column("label").to_numpy().astype(np.int64),
        user_id,
    )
    if dataset.blocks.num_rows != len(dataset) or int(meta.get("rows", len(dataset))) != len(dataset):
        raise PreparedDataError(
            f"{directory}: the shards hold {dataset.blocks.num_rows} rows, the index {len(dataset)}; {RERUN}"
        )
    return dataset
