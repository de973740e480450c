"""The prepared dataset held whole in memory (`PreparedData`): the form small data (the digits
default) takes in every stage. On disk it is format 2 (pipeline/data/writer.py, docs/architecture.md);
`load_prepared` reads it whole, `open_prepared` (pipeline/data/dataset.py) reads it in blocks.
The fingerprint is what the cache compares to refuse a cache built on other data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.cache.batch import SPLITS
from pipeline.data.dataset import PreparedDataError, PreparedDataset, open_prepared, split_rows
from pipeline.data.fields import FieldSpec
from pipeline.data.fingerprint import LEGACY_FIELD, Fingerprinter
from pipeline.data.writer import META_FILE, class_counts, write_arrays

__all__ = [
    "PreparedData",
    "PreparedDataError",
    "load_prepared",
    "make_prepared",
    "open_for_reading",
    "open_for_training",
    "open_prepared",
    "write_prepared",
]


@dataclass(frozen=True)
class PreparedData:
    """The prepared dataset, aligned by row.

    sample_id: (N,) int64, unique: the key joining dataset, cache and evaluation (the user's id
        when it is an integer, else the 63-bit hash of the user's string id).
    split: (N,) int8 codes into `SPLITS` ("train", "val", "test", "unlabelled").
    label: (N,) int64 class index in [0, num_classes), or -1 where the row has no label.
    inputs: (N, *input_shape) float32.
    num_classes: C.
    fingerprint: sha256 hex of ids, splits, labels and inputs (see `dataset_fingerprint`).
    user_id: (N,) object array of str, the user's ids when they were strings; None when
        `sample_id` is the user's id. Messages and outputs show these (`shown_ids`).
    class_names: class index -> the user's label when the labels were strings, else None.
    """

    sample_id: np.ndarray
    split: np.ndarray
    label: np.ndarray
    inputs: np.ndarray
    num_classes: int
    fingerprint: str
    user_id: np.ndarray | None = None
    class_names: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.sample_id)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Per-row input shape, e.g. (1, 8, 8)."""
        return tuple(self.inputs.shape[1:])

    def rows(self, split: str, labelled_only: bool = False) -> np.ndarray:
        """(n,) int64 row numbers of one split, ascending; only rows with a label if asked."""
        return split_rows(self.split, self.label, split, labelled_only)

    def shown_ids(self, rows) -> list[int | str]:
        """The user's ids of `rows` (row numbers), as Python ints or strs, for messages."""
        rows = np.asarray(rows, dtype=np.int64)
        source = self.sample_id if self.user_id is None else self.user_id
        return [value.item() if isinstance(value, np.generic) else value for value in source[rows]]

    def ids_of(self, sample_ids) -> list[int | str]:
        """The user's ids of the int64 keys `sample_ids`; a key the data does not hold is shown as
        `key <n>` (only string ids differ from their keys)."""
        keys = np.asarray(sample_ids, dtype=np.int64)
        if self.user_id is None:
            return [int(k) for k in keys]
        order = np.argsort(self.sample_id, kind="stable")
        position = np.clip(np.searchsorted(self.sample_id[order], keys), 0, max(len(order) - 1, 0))
        found = (self.sample_id[order][position] == keys) if len(order) else np.zeros(len(keys), bool)
        return [
            str(self.user_id[order[p]]) if hit else f"key {int(k)}"
            for k, p, hit in zip(keys, position, found)
        ]

    def class_name(self, index: int) -> str:
        """The user's name of class `index` ("3" when the labels were integers)."""
        return self.class_names[index] if self.class_names else str(int(index))

    def class_counts(self) -> dict[str, dict[str, int]]:
        """Per split: rows per class label as a string ("-1" counts rows without a label)."""
        return class_counts(self.split, self.label)


def dataset_fingerprint(
    sample_id: np.ndarray,
    split: np.ndarray,
    label: np.ndarray,
    inputs: np.ndarray,
    num_classes: int,
    user_id: np.ndarray | None = None,
    class_names: tuple[str, ...] | None = None,
) -> str:
    """The fingerprint of in-memory data with one float32 field `input` (`Fingerprinter`: format 1's
    hash, unchanged: the digits default keeps its value)."""
    inputs = np.ascontiguousarray(inputs, dtype=np.float32)
    fields = {LEGACY_FIELD: FieldSpec("float32", tuple(int(d) for d in inputs.shape[1:]))}
    hasher = Fingerprinter(sample_id, split, label, num_classes, fields, None, user_id, class_names)
    hasher.update({LEGACY_FIELD: inputs})
    return hasher.hexdigest()


def make_prepared(
    sample_id: np.ndarray,
    split: np.ndarray,
    label: np.ndarray,
    inputs: np.ndarray,
    num_classes: int,
    user_id: np.ndarray | None = None,
    class_names: tuple[str, ...] | list[str] | None = None,
) -> PreparedData:
    """A `PreparedData` with canonical dtypes and its fingerprint computed.

    split may be int8 codes or split names; inputs (N, *input_shape) any real dtype (-> float32);
    user_id (N,) strings (the user's ids, `sample_id` their keys) or None; class_names or None.
    """
    split = np.asarray(split)
    if split.dtype.kind in "USO":
        split = split_codes(split)
    arrays = (
        np.ascontiguousarray(sample_id, dtype=np.int64),
        split.astype(np.int8),
        np.ascontiguousarray(label, dtype=np.int64),
        np.ascontiguousarray(inputs, dtype=np.float32),
    )
    if user_id is not None:
        user_id = np.array([str(v) for v in np.asarray(user_id).tolist()], dtype=object)
    if class_names is not None:
        class_names = tuple(str(name) for name in class_names)
    fingerprint = dataset_fingerprint(*arrays, num_classes, user_id, class_names)
    return PreparedData(
        *arrays,
        num_classes=int(num_classes),
        fingerprint=fingerprint,
        user_id=user_id,
        class_names=class_names,
    )


def split_codes(names: np.ndarray) -> np.ndarray:
    """(N,) split names -> (N,) int8 codes into SPLITS; an unknown name is a ValueError."""
    names = np.asarray(names).astype(str)
    unknown = sorted(set(names.tolist()) - set(SPLITS))
    if unknown:
        raise ValueError(f"unknown split names {', '.join(unknown)}; valid: {', '.join(SPLITS)}")
    values, inverse = np.unique(names, return_inverse=True)
    return np.array([SPLITS.index(v) for v in values], dtype=np.int8)[inverse.reshape(-1)]


def write_prepared(data: PreparedData, directory: str | Path) -> None:
    """Write in-memory `data` as format 2 (one float32 field `input`) at `directory`, atomically: the
    files are written into a scratch directory beside it, which then replaces it whole."""
    write_arrays(
        directory,
        data.sample_id,
        data.split,
        data.label,
        data.num_classes,
        {LEGACY_FIELD: np.ascontiguousarray(data.inputs, np.float32)},
        user_id=data.user_id,
        class_names=data.class_names,
    )


def load_prepared(directory: str | Path) -> PreparedData:
    """The prepared data at `directory` whole in memory (small data: the digits default), its
    content checked against its fingerprint. Large data: `open_prepared` reads it in blocks."""
    dataset = open_prepared(directory)
    verify_fingerprint(dataset)
    return dataset.to_memory()


def verify_fingerprint(dataset: PreparedDataset) -> None:
    """Recompute the fingerprint of every stored value, block by block; PreparedDataError when it
    differs from meta.json's (files changed or mixed up after prepare wrote them)."""
    hasher = Fingerprinter(
        dataset.sample_id,
        dataset.split,
        dataset.label,
        dataset.num_classes,
        dataset.fields,
        {k: list(v) for k, v in dataset.transforms.items()},
        dataset.user_id,
        dataset.class_names,
    )
    for start in range(0, len(dataset), dataset.block_rows):
        hasher.update(
            dataset.read(np.arange(start, min(start + dataset.block_rows, len(dataset))), transform=False)
        )
    found = hasher.hexdigest()
    if found != dataset.fingerprint:
        raise PreparedDataError(
            f"{dataset.directory}: content fingerprint {found[:12]}.. does not match {META_FILE} "
            f"({dataset.fingerprint[:12]}..); the files were changed or mixed up: re-run `distillery prepare`"
        )


IN_MEMORY_MAX_BYTES = 1 << 30
"""Prepared inputs up to this size (as float32) are held whole; larger ones are read in blocks."""


def open_for_reading(directory: str | Path, in_memory_max_bytes: int = IN_MEMORY_MAX_BYTES):
    """The prepared data at `directory` for a stage that reads its inputs by row ranges: a
    `PreparedData` held whole when its float32 inputs fit `in_memory_max_bytes` (the digits default:
    exactly what `load_prepared` gives), else the `PreparedDataset` itself, whose `inputs` reads only
    the rows asked for (bounded memory); also for data whose fields have their own names (`pixels`,
    token ids): a consumer that feeds fields by name (a user's ONNX teacher) finds them."""
    dataset = open_prepared(directory)
    if dataset.input_field != LEGACY_FIELD or dataset.in_memory_bytes() > in_memory_max_bytes:
        return dataset
    verify_fingerprint(dataset)
    return dataset.to_memory()


def open_for_training(directory: str | Path, whole_if_small: bool = True) -> tuple[PreparedData, PreparedDataset | None]:
    """(index, source) for a stage that trains students: small single-input data (the digits default)
    whole in memory and no source, exactly as `load_prepared`; else (or when not `whole_if_small`:
    a student of named fields) the index only (inputs (N, 0): ids, splits, labels, fingerprint) and
    the `PreparedDataset` its inputs are read from per batch, its content checked first."""
    data = open_for_reading(directory) if whole_if_small else open_prepared(directory)
    if isinstance(data, PreparedData):
        return data, None
    verify_fingerprint(data)
    return data.to_index(), data
