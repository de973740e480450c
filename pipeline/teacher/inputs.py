"""The teacher's inputs by name: each ONNX input fed from one prepared field, checked up front.

`teacher.inputs` maps every ONNX input to a field of the prepared rows (`{input: input}` for the
built-in digits teacher). A field is either a dense array (N, *row_shape), any numeric dtype, or a
ragged one (`values` (M, *inner) + `offsets` (N + 1,) int64, row r = values[offsets[r]:offsets[r+1]]:
variable-length token ids, say), which a batch pads with zeros to its longest row (or to the ONNX
input's fixed length). Before the teacher runs on anything, every input is checked against its field:
the field exists, the dtypes are equal, the ranks agree, fixed sizes match, and no row is longer than
the model takes (`teacher.max_length`, or a fixed sequence axis), each with one line naming the input,
the field and both dtypes/shapes. Rows of a batch keep their real lengths (`Feed.lengths`), which say
which positions of a per-token output (B, L, ...) are real tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.errors import DistilleryError

DEFAULT_FIELD = "input"
"""The field of the built-in data path: PreparedData.inputs, (N, *input_shape) float32."""


class TeacherModelError(DistilleryError):
    """The teacher ONNX file is missing, unreadable, or lacks the named inputs/outputs."""


class TeacherInputError(TeacherModelError):
    """The teacher's inputs do not fit the data (a missing field, dtype, rank, sizes, a sequence too
    long) or have a fixed batch size."""


@dataclass(frozen=True)
class InputSpec:
    """One ONNX graph input: name, numpy dtype, declared dims (batch first; ints fixed, strings
    symbolic, None unknown)."""

    name: str
    dtype: np.dtype
    dims: tuple[int | str | None, ...]

    def describe(self) -> str:
        """`int64 [batch, sequence]`: for messages."""
        return f"{self.dtype.name} [{', '.join('?' if d is None else str(d) for d in self.dims)}]"


@dataclass(frozen=True)
class FieldSpec:
    """A prepared field's dtype and per-row shape; None marks the variable-length first axis of a
    ragged field."""

    dtype: np.dtype
    row_shape: tuple[int | None, ...]

    def describe(self) -> str:
        """`int64 [rows, length]`: for messages."""
        dims = ["rows", *("length" if d is None else str(d) for d in self.row_shape)]
        return f"{self.dtype.name} [{', '.join(dims)}]"


def is_ragged(value: Any) -> bool:
    """Whether a field is ragged (has `values` and `offsets`)."""
    return hasattr(value, "values") and hasattr(value, "offsets")


def field_spec(value: Any) -> FieldSpec:
    """The FieldSpec of a dense (N, ...) array or a ragged field."""
    if is_ragged(value):
        values = np.asarray(value.values)
        return FieldSpec(values.dtype, (None, *(int(d) for d in values.shape[1:])))
    array = np.asarray(value) if not hasattr(value, "dtype") else value
    return FieldSpec(np.dtype(array.dtype), tuple(int(d) for d in array.shape[1:]))


def row_lengths(value: Any) -> np.ndarray:
    """(N,) int64 length of every row of a ragged field."""
    return np.diff(np.asarray(value.offsets, np.int64))


class FieldSource:
    """The named fields of a row source, read by rows, whatever holds them:

    - a prepared dataset on disk (`pipeline.data.open_prepared`: `fields` maps names to specs and
      `read(rows, names)` returns dense arrays (after read-time transforms) or Ragged);
    - in-memory fields (`fields` maps names to (N, ...) arrays or ragged values + offsets);
    - the single `input` field of an in-memory PreparedData (`inputs`, (N, *input_shape) float32).
    """

    def __init__(self, data: Any) -> None:
        self.data = data
        fields = data if isinstance(data, Mapping) else getattr(data, "fields", None)
        self.on_disk = callable(getattr(data, "read", None)) and fields is not None
        self.arrays = (
            None if self.on_disk else dict(fields) if fields is not None else {DEFAULT_FIELD: data.inputs}
        )

    def names(self) -> list[str]:
        """The field names."""
        return list(self.data.fields if self.on_disk else self.arrays)

    def specs(self) -> dict[str, FieldSpec]:
        """Field name -> dtype and per-row shape as a consumer reads it (after read-time transforms)."""
        if not self.on_disk:
            return {name: field_spec(value) for name, value in self.arrays.items()}
        specs = {}
        for name, stored in self.data.fields.items():
            shape = tuple(stored.shape)
            dtype = np.dtype(stored.dtype)
            if (
                shape
                and shape[0] is not None
                and getattr(self.data, "transforms", {}).get(name)
                and len(self.data)
            ):
                probe = self.data.read(np.zeros(1, np.int64), [name])[name]  # a transform may change both
                dtype, shape = probe.dtype, tuple(int(d) for d in probe.shape[1:])
            specs[name] = FieldSpec(dtype, shape)
        return specs

    def read(self, rows: np.ndarray, names: list[str]) -> dict[str, Any]:
        """Rows (B,) int64 of the fields `names`: dense (B, ...) arrays or ragged values + offsets."""
        rows = np.asarray(rows, np.int64)
        if self.on_disk:
            return self.data.read(rows, list(dict.fromkeys(names)))
        out = {}
        for name in names:
            value = self.arrays[name]
            if is_ragged(value):
                offsets = np.asarray(value.offsets, np.int64)
                lengths = offsets[rows + 1] - offsets[rows]
                picked = (
                    np.concatenate([np.arange(offsets[r], offsets[r + 1]) for r in rows]) if len(rows) else []
                )
                values = np.asarray(value.values)[np.asarray(picked, np.int64)]
                out[name] = _Ragged(values, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
            else:
                out[name] = np.asarray(value[rows])
        return out

    def lengths(self, name: str, rows_per_read: int = 65536) -> np.ndarray:
        """(N,) int64 row lengths of ragged field `name` (read in blocks from disk)."""
        if not self.on_disk:
            return row_lengths(self.arrays[name])
        count = len(self.data.sample_id)
        parts = [
            row_lengths(self.data.read(np.arange(start, min(start + rows_per_read, count)), [name])[name])
            for start in range(0, count, rows_per_read)
        ]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)


@dataclass(frozen=True)
class _Ragged:
    values: np.ndarray
    offsets: np.ndarray


def num_rows(value: Any) -> int:
    """Row count of one in-memory field (dense or ragged)."""
    return len(value.offsets) - 1 if is_ragged(value) else len(value)


def fields_of(data: Any) -> FieldSource:
    """The FieldSource of a row source (see FieldSource)."""
    return data if isinstance(data, FieldSource) else FieldSource(data)


def check_fields(
    where: str,
    specs: Mapping[str, InputSpec],
    mapping: Mapping[str, str],
    fields: Mapping[str, FieldSpec],
) -> None:
    """TeacherInputError unless each ONNX input `specs[name]` can be fed from field `mapping[name]`
    of `fields` (field name -> FieldSpec): present, same dtype, same rank, equal fixed sizes.
    where: the teacher file, for the message."""
    for name, spec in specs.items():
        field_name = mapping[name]
        if field_name not in fields:
            raise TeacherInputError(
                f"{where}: input {name!r} is fed from field {field_name!r} (teacher.inputs.{name}) but the "
                f"prepared data has no such field; it has {sorted(fields)}: set teacher.inputs.{name} to one "
                "of those, or prepare the field"
            )
        field = fields[field_name]
        rank_ok = len(field.row_shape) == len(spec.dims) - 1
        sizes_ok = rank_ok and all(
            not (isinstance(d, int) and s is not None and d != s)
            for d, s in zip(spec.dims[1:], field.row_shape)
        )
        if field.dtype != spec.dtype or not sizes_ok:
            what = "dtype" if field.dtype != spec.dtype else "rank" if not rank_ok else "shape"
            raise TeacherInputError(
                f"{where}: input {name!r} takes {spec.describe()} but field {field_name!r} is "
                f"{field.describe()} (the {what} differs); prepare the field as the model takes it "
                f"(prepare.dataset), or map teacher.inputs.{name} to another field"
            )


def max_lengths(specs: Mapping[str, InputSpec], max_length: int | None) -> dict[str, int | None]:
    """ONNX input -> the longest sequence it takes: its fixed axis 1 when fixed, else `max_length`."""
    return {
        name: spec.dims[1] if len(spec.dims) > 1 and isinstance(spec.dims[1], int) else max_length
        for name, spec in specs.items()
    }


def check_lengths(
    where: str,
    specs: Mapping[str, InputSpec],
    mapping: Mapping[str, str],
    source: FieldSource,
    max_length: int | None,
    shown_ids: Callable[[np.ndarray], list] | None = None,
) -> None:
    """TeacherInputError when a ragged field's row is longer than the input it feeds takes, or when
    the ragged fields one teacher reads disagree on a row's length (input_ids vs attention_mask).
    shown_ids: rows -> the user's ids, for the message."""
    shown = shown_ids or (lambda rows: rows.tolist())
    limits = max_lengths(specs, max_length)
    first: tuple[str, np.ndarray] | None = None
    field_specs = source.specs()
    for name in specs:
        spec = field_specs[mapping[name]]
        if not spec.row_shape or spec.row_shape[0] is not None:
            continue
        lengths = source.lengths(mapping[name])
        limit = limits[name]
        if limit is not None and len(lengths) and int(lengths.max()) > limit:
            long_rows = np.flatnonzero(lengths > limit)
            source = (
                "its fixed sequence axis" if isinstance(specs[name].dims[1], int) else "teacher.max_length"
            )
            raise TeacherInputError(
                f"{where}: field {mapping[name]!r} has rows of up to {int(lengths.max())} tokens "
                f"({len(long_rows)} row(s) longer than {limit}: sample_id "
                f"{', '.join(map(str, shown(long_rows[:5])))}) but input {name!r} takes at most {limit} "
                f"({source}); truncate the sequences in prepare, or raise teacher.max_length"
            )
        if first is None:
            first = (mapping[name], lengths)
        elif not np.array_equal(first[1], lengths):
            bad = np.flatnonzero(first[1] != lengths)
            raise TeacherInputError(
                f"{where}: fields {first[0]!r} and {mapping[name]!r} differ in length on {len(bad)} row(s) "
                f"(sample_id {', '.join(map(str, shown(bad[:5])))}); the fields of one sequence must have "
                "one length per row: re-run prepare"
            )


@dataclass(frozen=True)
class Feed:
    """One teacher batch: arrays (ONNX input -> (B, ...) in the input's dtype, ragged fields padded
    with zeros), lengths ((B,) int64 real tokens per row, None when no field is ragged) and ragged
    (the inputs fed from ragged fields)."""

    arrays: dict[str, np.ndarray]
    lengths: np.ndarray | None = None
    ragged: tuple[str, ...] = ()


def _pad(value: Any, length: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Ragged rows -> ((B, L, ...) zero-padded, (B,) int64 lengths); L = the longest row, or `length`."""
    offsets = np.asarray(value.offsets, np.int64)
    lengths = np.diff(offsets)
    width = int(lengths.max(initial=0)) if length is None else int(length)
    values = np.asarray(value.values)
    out = np.zeros((len(lengths), width, *values.shape[1:]), values.dtype)
    out[np.arange(width)[None, :] < lengths[:, None]] = values
    return out, lengths


def make_feed(
    specs: Mapping[str, InputSpec],
    mapping: Mapping[str, str],
    fields: Any,
    rows: slice | np.ndarray,
) -> Feed:
    """The teacher's inputs for prepared rows `rows` (a slice or (B,) int array) of `fields` (a row
    source or FieldSource): each input's field read (ragged fields padded to the batch's longest
    row, or to the input's fixed length) and made contiguous in the input's dtype."""
    source = fields_of(fields)
    if isinstance(rows, slice):
        rows = np.arange(rows.start, rows.stop, dtype=np.int64)
    values = source.read(np.asarray(rows, np.int64), [mapping[name] for name in specs])
    limits = max_lengths(specs, None)
    arrays, lengths, ragged = {}, None, []
    for name, spec in specs.items():
        value = values[mapping[name]]
        if is_ragged(value):
            array, lengths = _pad(value, limits[name])
            ragged.append(name)
        else:
            array = value
        arrays[name] = np.ascontiguousarray(array, dtype=spec.dtype)
    return Feed(arrays, lengths, tuple(ragged))
