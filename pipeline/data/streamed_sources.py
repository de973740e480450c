"""Sources read in chunks, never whole: Parquet / Hugging Face (`save_to_disk`) columns kept as named
fields of any dtype, fixed or variable length, and image folders decoded with Pillow at prepare.

Each returns a `RawDataset` whose index (ids, labels, split) is in memory and whose field values come
from `chunks(rows_per_chunk)` in row order (docs/data_and_teacher.md §2 and §6)."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.data.checks import (
    DatasetError,
    DatasetFileNotFoundError,
    EmptyDatasetError,
    MissingColumnError,
    few,
)
from pipeline.data.fields import FieldSpec, Ragged
from pipeline.data.labels import parse_labels
from pipeline.data.params import HfDiskSource, ImageFolderSource, ParquetSource
from pipeline.data.sources import RawDataset, _column_values, _read_parquet, _require_file, finish_index

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
HF_SPLITS = {"train": "train", "validation": "val", "val": "val", "test": "test", "unlabelled": "unlabelled"}


class FieldColumnError(DatasetError):
    """An input column cannot be a field: not numbers, nulls, or rows of different sizes for a fixed shape."""


class ImageDecodeError(DatasetError):
    """An image of an image folder cannot be decoded."""


class EmptyClassError(DatasetError):
    """A class folder of an image folder holds no image."""


def _field_spec(name: str, column_type: pa.DataType, shapes: dict, source: str) -> FieldSpec:
    """The FieldSpec of an Arrow column: numbers -> (), fixed-size lists nest to their sizes, a list
    of varying length -> a variable first axis (unless `shapes` fixes it)."""
    dims: list[int | None] = []
    kind = column_type
    while pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        dims.append(kind.list_size if pa.types.is_fixed_size_list(kind) else None)
        kind = kind.value_type
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
        raise FieldColumnError(
            f"{source}: column {name!r} holds {column_type}, not numbers or lists of numbers; "
            f"leave it out of prepare.dataset.fields"
        )
    if None in dims[1:]:
        if name not in shapes:
            raise FieldColumnError(
                f"{source}: column {name!r} is a list of lists ({column_type}); give its per-row shape in "
                f"prepare.dataset.field_shapes.{name}"
            )
    dtype = str(np.dtype(kind.to_pandas_dtype()))
    if name in shapes:
        return FieldSpec(dtype, tuple(int(d) for d in shapes[name]))
    return FieldSpec(dtype, tuple(dims))


def _to_field(column, spec: FieldSpec, name: str, source: str, first_row: int):
    """A chunk of an Arrow column -> (n, *shape) array or Ragged in the field's dtype."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if column.null_count:
        rows = np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False)) + first_row
        raise FieldColumnError(f"{source}: column {name!r} is null in rows {few(rows)}; drop or fill them")
    n = len(column)
    if spec.variable:
        offsets = column.offsets.to_numpy().astype(np.int64)
        values = column.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
        while hasattr(values, "flatten") and not pa.types.is_primitive(values.type):
            values = values.flatten()
        flat = values.to_numpy(zero_copy_only=False).astype(spec.dtype, copy=False)
        return Ragged(flat.reshape(-1, *spec.inner_shape), offsets - offsets[0])
    flat = column
    while not pa.types.is_primitive(flat.type) and not pa.types.is_boolean(flat.type):
        flat = pc.list_flatten(flat)
    values = flat.to_numpy(zero_copy_only=False).astype(spec.dtype, copy=False)
    width = math.prod(spec.shape)
    if values.size != n * width:
        raise FieldColumnError(
            f"{source}: column {name!r} rows {first_row}..{first_row + n - 1} hold {values.size} values, "
            f"not {n} x {width} for shape {list(spec.shape)}; every row needs the same size"
        )
    return values.reshape(n, *spec.shape)


def _index_from_table(table: pa.Table, source, path: str, split) -> RawDataset:
    ids = _column_values(table.column(source.id_column)) if source.id_column else None
    labels = (
        parse_labels(_column_values(table.column(source.label_column)), path) if source.label_column else None
    )
    return finish_index(path, table.num_rows, ids, labels, source.num_classes, split)


def _check_columns(names: list[str], wanted: list[str], path: str) -> None:
    missing = [c for c in wanted if c not in names]
    if missing:
        raise MissingColumnError(
            f"{path}: no column {', '.join(map(repr, missing))}; it has columns {names}; fix "
            f"prepare.dataset.fields / id_column / label_column"
        )


def load_parquet_fields(source: ParquetSource) -> RawDataset:
    """A Parquet file's `fields` columns as named fields, read in row batches (bounded memory)."""
    import pyarrow.parquet as pq

    path = _require_file(source.path)
    schema = _read_parquet(pq.read_schema, path, source.path)
    index_columns = [c for c in (source.id_column, source.label_column, source.split_column) if c]
    _check_columns(schema.names, [*source.fields, *index_columns], source.path)
    specs = {n: _field_spec(n, schema.field(n).type, source.field_shapes, source.path) for n in source.fields}
    table = _read_parquet(pq.read_table, path, source.path, columns=index_columns)
    if pq.ParquetFile(path).metadata.num_rows == 0:
        raise EmptyDatasetError(f"{source.path}: the dataset has no rows; point prepare.dataset at your data")
    split = None
    if source.split_column:
        split = np.asarray(table.column(source.split_column).to_pylist(), dtype=object)
    index = _index_from_table(table, source, source.path, split)

    def chunks(rows_per_chunk: int):
        first = 0
        # pre_buffer off: with it, the reader's buffers grew with the file (740 MiB of Arrow pool at
        # 200k 3x32x32 rows, 300 at 50k); without, ~160 MiB at any size (benchmarks/bench_data.py pipeline)
        reader = pq.ParquetFile(path, pre_buffer=False)
        for batch in reader.iter_batches(batch_size=rows_per_chunk, columns=source.fields):
            yield {n: _to_field(batch.column(n), spec, n, source.path, first) for n, spec in specs.items()}
            first += batch.num_rows

    return _streamed(index, specs, chunks)


def _streamed(index: RawDataset, specs: dict, chunks) -> RawDataset:
    from dataclasses import replace

    return replace(index, fields=specs, chunks=chunks)


def load_hf_disk(source: HfDiskSource) -> RawDataset:
    """A `save_to_disk` directory, memory-mapped by `datasets` (its Arrow files are never read whole);
    a DatasetDict's splits become the split."""
    import datasets

    path = _require_file(source.path)
    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as error:
        raise DatasetFileNotFoundError(
            f"{source.path}: not a dataset saved with save_to_disk ({error}); point prepare.dataset.path at "
            "that directory"
        ) from None
    parts = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {None: loaded}
    unknown = [name for name in parts if name is not None and name not in HF_SPLITS]
    if unknown:
        raise DatasetError(
            f"{source.path}: DatasetDict splits {unknown} are not known; name them {', '.join(HF_SPLITS)}"
        )
    tables = [part.data.table for part in parts.values()]  # memory-mapped pyarrow tables
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    index_columns = [c for c in (source.id_column, source.label_column) if c]
    _check_columns(table.column_names, [*source.fields, *index_columns], source.path)
    if table.num_rows == 0:
        raise EmptyDatasetError(f"{source.path}: the dataset has no rows; point prepare.dataset at your data")
    split = None
    if None not in parts:
        split = np.concatenate(
            [np.full(len(part), HF_SPLITS[name], dtype=object) for name, part in parts.items()]
        )
    features = next(iter(parts.values())).features
    images = [n for n in source.fields if isinstance(features.get(n), datasets.Image)]
    specs = {
        n: _image_spec(n, source) if n in images else _field_spec(n, table.schema.field(n).type, source.field_shapes, source.path)
        for n in source.fields
    }
    index = _index_from_table(table.select(index_columns), source, source.path, split)

    def chunks(rows_per_chunk: int):
        fields = table.select(list(source.fields))
        for first in range(0, fields.num_rows, rows_per_chunk):
            batch = fields.slice(first, rows_per_chunk)
            yield {
                n: _decode_images(batch.column(n), spec, n, source, first)
                if n in images
                else _to_field(batch.column(n), spec, n, source.path, first)
                for n, spec in specs.items()
            }

    return _streamed(index, specs, chunks)


def _image_spec(name: str, source: HfDiskSource) -> FieldSpec:
    """The uint8 (C, H, W) FieldSpec of an `Image` column, from `image_size` and `image_mode`."""
    if source.image_size is None:
        raise FieldColumnError(
            f"{source.path}: column {name!r} holds images (a datasets Image feature); give the size to decode "
            "them to as prepare.dataset.image_size: [height, width] (and image_mode: RGB or L)"
        )
    return FieldSpec("uint8", (3 if source.image_mode == "RGB" else 1, *map(int, source.image_size)))


def _decode_images(column, spec: FieldSpec, name: str, source: HfDiskSource, first_row: int) -> np.ndarray:
    """A chunk of an `Image` column (Arrow struct of `bytes` and `path`) -> (n, C, H, W) uint8."""
    size = (int(spec.shape[1]), int(spec.shape[2]))
    decoded = []
    for offset, cell in enumerate(column.to_pylist()):
        where = f"{source.path}: column {name!r} row {first_row + offset}"
        if cell is None or (cell.get("bytes") is None and cell.get("path") is None):
            raise FieldColumnError(f"{where} has no image; drop or fill the row")
        image = io.BytesIO(cell["bytes"]) if cell.get("bytes") is not None else Path(cell["path"])
        decoded.append(decode_image(image, size, source.image_mode, where))
    return np.stack(decoded)


def decode_image(
    path: Path | BinaryIO, size: tuple[int, int], mode: str, name: str | None = None
) -> np.ndarray:
    """One image (a file, or its encoded bytes as a file object) -> (C, H, W) uint8 (`mode` RGB: C = 3,
    L: C = 1), resized to `size` (bilinear). ImageDecodeError naming the path (or `name`) when Pillow
    cannot read it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert(mode)
            if image.size != (size[1], size[0]):
                image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ImageDecodeError(
            f"{name or path}: cannot be decoded as an image ({error}); remove or replace the "
            + ("image" if name else "file")
        ) from None
    return array[None] if array.ndim == 2 else np.ascontiguousarray(array.transpose(2, 0, 1))


def load_image_folder(source: ImageFolderSource) -> RawDataset:
    """`path/<class>/<image>` -> field `source.field` uint8 (C, H, W); ids the relative paths, labels
    the class folder names (sorted). Decoded chunk by chunk at prepare."""
    root = _require_file(source.path)
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    if not classes:
        raise EmptyDatasetError(
            f"{source.path}: no class folders; put each class's images in a folder of its own "
            "(path/<class>/...)"
        )
    files, labels = [], []
    for folder in classes:
        images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not images:
            raise EmptyClassError(
                f"{folder}: class {folder.name!r} has no .png/.jpg/.jpeg image; add images or remove "
                "the folder"
            )
        # held as the relative path strings (the ids) only: a Path per image costs ~3x the memory
        files += [image.relative_to(root).as_posix() for image in images]
        labels += [folder.name] * len(images)
    ids = np.array(files, dtype=object)
    index = finish_index(
        source.path, len(files), ids, parse_labels(np.array(labels, dtype=object), source.path), None, None
    )
    size = (int(source.size[0]), int(source.size[1]))
    spec = FieldSpec("uint8", (3 if source.mode == "RGB" else 1, *size))

    def chunks(rows_per_chunk: int):
        for first in range(0, len(files), rows_per_chunk):
            part = files[first : first + rows_per_chunk]
            yield {source.field: np.stack([decode_image(root / p, size, source.mode) for p in part])}

    return _streamed(index, {source.field: spec}, chunks)
