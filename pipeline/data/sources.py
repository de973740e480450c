"""Where the rows come from: the built-in digits, or the user's Parquet, NumPy `.npz` or Zarr data.

Each loader returns a `RawDataset` (ids, inputs, labels, and the user's split if they brought one)
after the checks of `pipeline.data.checks`, so every source fails the same way on the same bad data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.cache.batch import SPLITS, UNLABELLED
from pipeline.data.checks import (
    DatasetError,
    DatasetFileNotFoundError,
    DatasetFormatError,
    EmptyDatasetError,
    InputShapeError,
    InputTypeError,
    MissingColumnError,
    SplitValueError,
    check_inputs_finite,
    check_labels,
    check_rows,
    check_sample_ids,
    few,
    first_sentence,
    infer_num_classes,
    reshape_inputs,
)
from pipeline.data.fields import spec_of
from pipeline.data.ids import sample_keys
from pipeline.data.labels import LabelTypeError, ParsedLabels, parse_labels
from pipeline.data.params import (
    ArraySource,
    DatasetSource,
    DigitsSource,
    HfDiskSource,
    ImageFolderSource,
    NpzSource,
    ParquetSource,
    ZarrSource,
)


class ObjectArrayError(DatasetError):
    """An npz array of Python objects: loading it would unpickle, which we never do."""


@dataclass(frozen=True)
class RawDataset:
    """A dataset before splitting.

    sample_id: (N,) int64 unique keys (the user's integer ids, or the hashes of string ids).
    inputs: (N, *input_shape) float32, finite, for sources read whole (digits, npz, zarr, a Parquet
        `input_column`); None for streamed sources, whose values come from `chunks`.
    label: (N,) int64 in [0, num_classes) or -1 (no label).
    num_classes: C.
    split: (N,) split names from the user's data, or None when we split.
    user_id: (N,) the user's string ids (object array of str), or None for integer ids.
    class_names: class index -> name when the labels were strings, else None.
    fields: {name: FieldSpec} of a streamed source (None: one float32 field `input` = inputs).
    chunks: rows_per_chunk -> iterator of {field: (n, *shape) array or Ragged} in row order, all N rows.
    """

    sample_id: np.ndarray
    inputs: np.ndarray | None
    label: np.ndarray
    num_classes: int
    split: np.ndarray | None = None
    user_id: np.ndarray | None = None
    class_names: tuple[str, ...] | None = None
    fields: dict | None = None
    chunks: Callable[[int], Iterator[dict]] | None = None

    def field_specs(self) -> dict:
        """{name: FieldSpec} of the values `iter_chunks` yields."""
        if self.fields is not None:
            return dict(self.fields)
        return {"input": spec_of(self.inputs)}

    def iter_chunks(self, rows_per_chunk: int) -> Iterator[dict]:
        """Every row's field values, `rows_per_chunk` rows at a time, in row order."""
        if self.chunks is not None:
            yield from self.chunks(rows_per_chunk)
            return
        for start in range(0, len(self.inputs), rows_per_chunk):
            yield {"input": self.inputs[start : start + rows_per_chunk]}


def load_source(source: DatasetSource) -> RawDataset:
    """Load and check the dataset `source` (one of the `prepare.dataset` kinds)."""
    if isinstance(source, DigitsSource):
        return load_digits()
    if isinstance(source, ParquetSource):
        if source.fields is not None:
            from pipeline.data.streamed_sources import load_parquet_fields

            return load_parquet_fields(source)
        return load_parquet(source)
    if isinstance(source, HfDiskSource):
        from pipeline.data.streamed_sources import load_hf_disk

        return load_hf_disk(source)
    if isinstance(source, ImageFolderSource):
        from pipeline.data.streamed_sources import load_image_folder

        return load_image_folder(source)
    if isinstance(source, (NpzSource, ZarrSource)):
        return load_arrays(source)
    if source.kind == "sentences":  # the offline corpus, tokenised (pipeline/data/sentence_source.py)
        from pipeline.data.sentence_source import load_sentences

        return load_sentences(source)
    raise TypeError(f"unknown dataset source {source!r}")


def load_digits() -> RawDataset:
    """scikit-learn digits: 1797 images (1, 8, 8) scaled from 0..16 to [0, 1], 10 classes, id = row."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]
    return RawDataset(
        sample_id=np.arange(len(images), dtype=np.int64),
        inputs=images,
        label=bunch.target.astype(np.int64),
        num_classes=10,
    )


def _require_file(path: str) -> Path:
    resolved = Path(path)
    if not resolved.exists():
        raise DatasetFileNotFoundError(
            f"{path}: no such dataset file; fix prepare.dataset.path in params.yaml "
            f"(paths are relative to the project root)"
        )
    return resolved


def _finish(
    source_name: str, sample_id, inputs, label: ParsedLabels | None, num_classes, split
) -> RawDataset:
    """Common checks and canonical dtypes for every user source."""
    n = len(inputs)
    check_rows(
        source_name,
        np.asarray(inputs),
        ids=sample_id,
        labels=None if label is None else label.index,
        split=split,
    )
    inputs = np.ascontiguousarray(inputs, dtype=np.float32)
    raw = finish_index(source_name, n, sample_id, label, num_classes, split, inputs=inputs)
    check_inputs_finite(inputs, source_name)
    return raw


def finish_index(
    source_name: str, n: int, sample_id, label: ParsedLabels | None, num_classes, split, **values
) -> RawDataset:
    """The checks of every source's index (ids, labels, split; n rows) -> RawDataset(**values)."""
    sample_id = np.arange(n, dtype=np.int64) if sample_id is None else np.asarray(sample_id)
    label = ParsedLabels(np.full(n, UNLABELLED, dtype=np.int64)) if label is None else label
    for name, array in (("ids", sample_id), ("labels", label.index), ("split", split)):
        if array is not None and len(array) != n:
            raise InputShapeError(f"{source_name}: {n} inputs but {len(array)} {name}; give one per row")
    keys, user_id = sample_keys(sample_id, source_name)
    check_sample_ids(keys if user_id is None else user_id, source_name)  # named as the user wrote them
    num_classes = _class_count(label, num_classes, source_name)
    check_labels(label.index, num_classes, source_name)
    if split is not None:
        split = _as_str(split)
        unknown = sorted(set(split.tolist()) - set(SPLITS))
        if unknown:
            raise SplitValueError(
                f"{source_name}: split values {few([repr(v) for v in unknown])} are not known; use "
                f"{', '.join(SPLITS)} "
                f"(or set the split column to null to let prepare split the data)"
            )
    values.setdefault("inputs", None)
    return RawDataset(
        keys,
        label=label.index,
        num_classes=num_classes,
        split=split,
        user_id=user_id,
        class_names=label.class_names,
        **values,
    )


def _class_count(label: ParsedLabels, num_classes: int | None, source_name: str) -> int:
    """num_classes as given or inferred; with class names, the number of names (a different
    prepare.dataset.num_classes is refused: the names are the classes)."""
    if label.class_names is None:
        return infer_num_classes(label.index, num_classes, source_name)
    if num_classes is not None and num_classes != len(label.class_names):
        raise LabelTypeError(
            f"{source_name}: the labels name {len(label.class_names)} classes ({few(label.class_names)}) "
            f"but prepare.dataset.num_classes is {num_classes}; with class names the classes are the "
            "names present: remove num_classes"
        )
    return len(label.class_names)


def _as_str(values) -> np.ndarray:
    """Split names of any string dtype (fixed, bytes, object, numpy StringDType from Zarr) -> str."""
    values = np.asarray(values)
    if values.dtype.kind == "S":
        return np.char.decode(values, "utf-8")
    return values.astype(object).astype(str)


def load_parquet(source: ParquetSource) -> RawDataset:
    """Rows of a Parquet file: `id_column`, `label_column` (null = no label), `input_column` (a list of
    numbers per row, same length in every row), optional `split_column`."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    path = _require_file(source.path)
    schema_names = _read_parquet(pq.read_schema, path, source.path).names
    wanted = [
        c for c in (source.id_column, source.label_column, source.input_column, source.split_column) if c
    ]
    missing = [c for c in wanted if c not in schema_names]
    if missing:
        raise MissingColumnError(
            f"{source.path}: no column {', '.join(map(repr, missing))}; the file has columns "
            f"{schema_names}; set prepare.dataset.id_column / label_column / input_column / "
            f"split_column to the names you use (id_column or label_column may be null)"
        )
    table = _read_parquet(pq.read_table, path, source.path, columns=wanted)
    if table.num_rows == 0:
        raise EmptyDatasetError(f"{source.path}: the dataset has no rows; point prepare.dataset at your data")
    column = table.column(source.input_column).combine_chunks()
    value_type = getattr(column.type, "value_type", None)
    if value_type is None or not (pa.types.is_integer(value_type) or pa.types.is_floating(value_type)):
        raise InputTypeError(
            f"{source.path}: column {source.input_column!r} must hold a list of numbers per row, got "
            f"{column.type}; write the inputs as lists of floats"
        )
    if column.null_count:
        rows = np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))
        raise InputShapeError(f"{source.path}: rows {rows[:5].tolist()} have no input; drop them")
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    if len(lengths) and (lengths != lengths[0]).any():
        odd = np.flatnonzero(lengths != lengths[0])
        raise InputShapeError(
            f"{source.path}: column {source.input_column!r} has inputs of different sizes: row 0 has "
            f"{lengths[0]} values but rows {odd[:5].tolist()} have {lengths[odd[:5]].tolist()}; "
            f"every input must have the same shape"
        )
    width = int(lengths[0]) if len(lengths) else 0
    if width == 0:
        raise InputShapeError(
            f"{source.path}: column {source.input_column!r} holds empty lists; every row needs its input"
        )
    flat_values = pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(np.float32)
    inputs = reshape_inputs(flat_values.reshape(len(column), width), source.input_shape, source.path)
    ids = _column_values(table.column(source.id_column)) if source.id_column else None
    labels = None
    if source.label_column:
        labels = parse_labels(_column_values(table.column(source.label_column)), source.path)
    split = (
        np.asarray(table.column(source.split_column).to_pylist(), dtype=object)
        if source.split_column
        else None
    )
    return _finish(source.path, ids, inputs, labels, source.num_classes, split)


def _read_parquet(read, path: Path, shown: str, **kwargs):
    """`read(path, **kwargs)` (pq.read_schema, pq.read_table), a file that is not Parquet (or is
    truncated) refused as DatasetFormatError."""
    import pyarrow as pa

    try:
        return read(path, **kwargs)
    except (pa.ArrowException, OSError) as error:
        raise DatasetFormatError(
            f"{shown}: not a readable Parquet file ({first_sentence(error)}); point "
            "prepare.dataset.path at a Parquet file, or set prepare.dataset.kind to your format"
        ) from None


def _column_values(column) -> np.ndarray:
    """A Parquet column as a numpy array: numbers (nulls as NaN), strings and anything nested as
    objects (nulls as None); a dictionary-encoded (categorical) column as its values."""
    import pyarrow as pa

    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        return column.to_numpy()
    values = np.empty(len(column), dtype=object)
    for row, item in enumerate(column.to_pylist()):  # item by item: a list per row stays one object
        values[row] = item
    return values


def _read_array(store, name: str, path: str) -> np.ndarray:
    """Array `name` of an npz archive or a Zarr group, read whole; an npz object array (which would
    need pickle to load) is refused with the way to save it."""
    try:
        return np.asarray(store[name][...])
    except ValueError as error:
        if "allow_pickle" not in str(error):
            raise
        raise ObjectArrayError(
            f"{path}: array {name!r} is an object array, which cannot be loaded without pickle; save "
            f"strings as a string array, e.g. np.savez(path, {name}=np.asarray(values, dtype=str))"
        ) from None


def _open_arrays(source: ArraySource):
    """The named arrays of an npz archive or a Zarr group, as a mapping name -> array-like."""
    path = _require_file(source.path)
    if isinstance(source, NpzSource):
        try:
            archive = np.load(path, allow_pickle=False)
        except Exception as error:
            raise DatasetFileNotFoundError(
                f"{source.path}: not a readable .npz archive ({error}); save it with np.savez"
            ) from None
        if not hasattr(archive, "files"):
            raise DatasetFileNotFoundError(
                f"{source.path}: holds one array, not an .npz archive of named arrays; "
                f"save it with np.savez(path, x=..., y=...)"
            )
        return archive
    import zarr

    try:
        return zarr.open_group(str(path), mode="r")
    except Exception as error:  # zarr raises several types for "not a group"
        raise DatasetFileNotFoundError(
            f"{source.path}: not a Zarr group ({error}); point prepare.dataset.path at the group "
            f"holding the arrays"
        ) from None


def load_arrays(source: ArraySource) -> RawDataset:
    """Arrays of an `.npz` archive or Zarr group: `x_array` (N, *shape), `y_array` (N,) with -1 or
    NaN for no label, `id_array` (N,) integers, `split_array` (N,) strings (each but x may be null)."""
    store = _open_arrays(source)
    present = sorted(store.files) if hasattr(store, "files") else sorted(store.array_keys())
    wanted = [a for a in (source.x_array, source.y_array, source.id_array, source.split_array) if a]
    missing = [a for a in wanted if a not in present]
    if missing:
        raise MissingColumnError(
            f"{source.path}: no array {', '.join(map(repr, missing))}; it has arrays {present}; set "
            f"prepare.dataset.x_array / y_array / id_array / split_array to your names "
            f"(null for y_array, id_array or split_array you do not have)"
        )
    inputs = _read_array(store, source.x_array, source.path)
    if inputs.ndim < 2:
        raise InputShapeError(
            f"{source.path}: array {source.x_array!r} has shape {inputs.shape}; expected (rows, *input_shape)"
        )
    labels = None
    if source.y_array:
        labels = parse_labels(_read_array(store, source.y_array, source.path), source.path)
    ids = _read_array(store, source.id_array, source.path) if source.id_array else None
    split = _read_array(store, source.split_array, source.path) if source.split_array else None
    return _finish(source.path, ids, inputs, labels, source.num_classes, split)
