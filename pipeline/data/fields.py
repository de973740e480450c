"""Named fields of a prepared row: their declared type (`FieldSpec`), variable-length values
(`Ragged`), and the checks a consumer runs against what it declared (docs/data_and_teacher.md §6)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from pipeline.data.checks import few
from pipeline.errors import DistilleryError

NUMERIC_KINDS = "biuf"


class MissingFieldError(DistilleryError):
    """A consumer needs a field the prepared data does not have."""


class FieldTypeError(DistilleryError):
    """A field's dtype or rank is not what its consumer declared."""


@dataclass(frozen=True)
class FieldSpec:
    """One field as stored: `dtype` a numpy dtype name ("uint8", "int64", "float32", ...); `shape`
    the per-row shape, its first axis None for a variable-length field (e.g. (None,) for token ids)."""

    dtype: str
    shape: tuple[int | None, ...]

    @property
    def variable(self) -> bool:
        """True when the first axis varies from row to row (stored as `Ragged`)."""
        return len(self.shape) > 0 and self.shape[0] is None

    @property
    def inner_shape(self) -> tuple[int, ...]:
        """The shape of one item of a variable-length row (shape[1:]); the row shape when fixed."""
        return tuple(self.shape[1:]) if self.variable else tuple(self.shape)  # type: ignore[arg-type]

    def to_json(self) -> dict:
        """{dtype, shape} with null for a variable axis (meta.json)."""
        return {"dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, value: Mapping) -> FieldSpec:
        """The inverse of `to_json`."""
        return cls(
            str(np.dtype(value["dtype"])), tuple(None if d is None else int(d) for d in value["shape"])
        )

    def describe(self) -> str:
        """e.g. `uint8 (3, 32, 32)` or `int64 (*,)` (a variable axis shown as *)."""
        dims = ", ".join("*" if d is None else str(d) for d in self.shape)
        return f"{self.dtype} ({dims}{',' if len(self.shape) == 1 else ''})"


@dataclass(frozen=True)
class Ragged:
    """n variable-length rows: `values` (total, *inner) concatenated, `offsets` (n + 1,) int64 with
    row i = values[offsets[i]:offsets[i + 1]]."""

    values: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        """(n,) int64 items per row."""
        return np.diff(self.offsets)

    def row(self, index: int) -> np.ndarray:
        """Row `index`: (length, *inner)."""
        return self.values[self.offsets[index] : self.offsets[index + 1]]

    def take(self, rows) -> Ragged:
        """The rows `rows` ((k,) int), in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        lengths = self.lengths()[rows]
        offsets = np.zeros(len(rows) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        if len(rows) == 0:
            return Ragged(self.values[:0], offsets)
        starts = self.offsets[rows]
        index = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
        return Ragged(self.values[index], offsets)

    @classmethod
    def from_rows(cls, rows, dtype=None) -> Ragged:
        """From a sequence of (length_i, *inner) arrays (or lists)."""
        arrays = [np.asarray(r, dtype=dtype) for r in rows]
        offsets = np.zeros(len(arrays) + 1, np.int64)
        np.cumsum([len(a) for a in arrays], out=offsets[1:])
        values = np.concatenate(arrays) if arrays else np.zeros(0, dtype or np.float32)
        return cls(values, offsets)

    @classmethod
    def concat(cls, parts: list[Ragged]) -> Ragged:
        """The rows of `parts`, one after the other."""
        offsets = [np.zeros(1, np.int64)]
        total = 0
        for part in parts:
            offsets.append(part.offsets[1:] - part.offsets[0] + total)
            total += int(part.offsets[-1] - part.offsets[0])
        values = [p.values[p.offsets[0] : p.offsets[-1]] for p in parts]
        return cls(np.concatenate(values) if values else np.zeros(0), np.concatenate(offsets))


def spec_of(values: np.ndarray | Ragged) -> FieldSpec:
    """The FieldSpec of a chunk of values ((n, *shape) array or Ragged)."""
    if isinstance(values, Ragged):
        return FieldSpec(str(values.values.dtype), (None, *values.values.shape[1:]))
    return FieldSpec(str(values.dtype), tuple(int(d) for d in values.shape[1:]))


def require_fields(
    fields: Mapping[str, FieldSpec], wanted: Mapping[str, FieldSpec | None], consumer: str
) -> None:
    """Check that every field `consumer` wants exists (MissingFieldError names the fields there are)
    and, where a FieldSpec is given, has its dtype and rank (FieldTypeError). `fields`: a
    PreparedDataset's `.fields`; a declared variable axis (None) matches any length."""
    have = ", ".join(f"{name} {spec.describe()}" for name, spec in fields.items())
    missing = [name for name in wanted if name not in fields]
    if missing:
        raise MissingFieldError(
            f"{consumer} needs field{'s' if len(missing) > 1 else ''} {few(missing)} but the prepared data "
            f"has {have}; map the {consumer}'s inputs to these fields or prepare the missing ones"
        )
    for name, declared in wanted.items():
        if declared is None:
            continue
        stored = fields[name]
        same_rank = len(declared.shape) == len(stored.shape)
        dims_match = same_rank and all(
            d is None or s is None or d == s for d, s in zip(declared.shape, stored.shape)
        )
        if np.dtype(declared.dtype) != np.dtype(stored.dtype) or not dims_match:
            raise FieldTypeError(
                f"{consumer} declares field {name!r} as {declared.describe()} but the prepared data holds "
                f"{stored.describe()}; add a cast/layout in prepare.transforms or fix the "
                f"{consumer}'s declaration"
            )
