"""Labels as the user has them: integer class indices, or class names mapped to indices.

Class names (strings) are numbered in sorted order (Python's ordering of str: by Unicode code
point, so "Cat" < "cat" < "dog"), the names kept as `PreparedData.class_names` for every output that
shows a class. A missing label is -1 or NaN (numbers), null (Parquet) or "" (string arrays). Anything
else (fractions, true/false, a list per row, a (rows, 1) array) is a LabelTypeError that says how to
map it.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from pipeline.cache.batch import UNLABELLED
from pipeline.data.checks import DatasetError, few


class LabelTypeError(DatasetError):
    """Labels that are neither integer class indices nor class names (strings)."""


class ClassNameError(DatasetError):
    """A class named in params.yaml (e.g. prepare.omit_classes) that the labels do not have."""


@dataclass(frozen=True)
class ParsedLabels:
    """index: (N,) int64 class index, -1 where the row has no label.
    class_names: class index -> the user's label when the labels were strings, else None."""

    index: np.ndarray
    class_names: tuple[str, ...] | None = None


def parse_labels(values, source: str) -> ParsedLabels:
    """The user's labels (N,) of any dtype -> ParsedLabels, or LabelTypeError saying how to map them."""
    values = np.asarray(values)
    if values.ndim != 1:
        raise LabelTypeError(f"{source}: {_shape_advice(values.shape)}")
    kind = values.dtype.kind
    if kind in "iu":
        return ParsedLabels(values.astype(np.int64))
    if kind == "f":
        return ParsedLabels(_whole_numbers(values, source))
    if kind == "b":
        raise LabelTypeError(f"{source}: {_BOOL_ADVICE}")
    if kind in "UST":
        return _from_names([_name(v) for v in values.tolist()])
    if kind == "O":
        return _from_objects(values.tolist(), source)
    raise LabelTypeError(f"{source}: labels of dtype {values.dtype} are {_ONE_CLASS_PER_ROW}")


_ONE_CLASS_PER_ROW = (
    "not class labels; give one class per row: an integer class index (-1 or null for no label) "
    "or a class name (a string)"
)
_BOOL_ADVICE = (
    "labels are true/false; map them to classes: y.astype(int) (false 0, true 1), or class names "
    'np.where(y, "yes", "no")'
)


def _shape_advice(shape: tuple[int, ...]) -> str:
    if len(shape) == 2 and shape[1] == 1:
        return f"labels have shape {list(shape)}; give one label per row, shape (rows,): y.reshape(-1)"
    if len(shape) == 2:
        return (
            f"labels have shape {list(shape)}, several values per row; give the class of each row, "
            "shape (rows,): for one-hot or score rows, y.argmax(axis=1)"
        )
    return f"labels have shape {list(shape)}; give one label per row, shape (rows,)"


def _whole_numbers(values: np.ndarray, source: str) -> np.ndarray:
    """Float labels: NaN is no label; whole numbers are class indices; fractions are refused."""
    missing = np.isnan(values)
    fractional = np.flatnonzero(~missing & (values != np.round(values)))
    if len(fractional):
        raise LabelTypeError(
            f"{source}: labels must be class indices or class names, but rows {few(fractional)} hold "
            f"fractions ({few(values[fractional])}); map each row to one class: np.rint(y).astype(int) "
            "if they are indices stored as floats, or y.argmax(axis=1) on per-class scores"
        )
    return np.where(missing, UNLABELLED, values).astype(np.int64)


def _from_objects(items: list, source: str) -> ParsedLabels:
    """Labels read as Python objects (a Parquet column with nulls, a Zarr object array)."""
    strings, numbers_, other = [], [], []
    for row, item in enumerate(items):
        if item is None or (isinstance(item, float) and math.isnan(item)):
            continue
        if isinstance(item, (bool, np.bool_)):
            raise LabelTypeError(f"{source}: {_BOOL_ADVICE}")
        if isinstance(item, (str, bytes)):
            strings.append(row)
        elif isinstance(item, numbers.Real):
            numbers_.append(row)
        else:
            other.append(row)
    if other:
        kind = type(items[other[0]]).__name__
        raise LabelTypeError(
            f"{source}: labels of rows {few(other)} are {kind} values, not one class per row (multi-label "
            "data is not supported); give each row one class: an integer index or a class name"
        )
    if strings and numbers_:
        raise LabelTypeError(
            f"{source}: labels mix class names (rows {few(strings)}) and numbers (rows {few(numbers_)}); "
            "use one kind: names for every row, or integer indices for every row"
        )
    if strings:
        return _from_names([_name(item) for item in items])
    floats = np.array([math.nan if item is None else float(item) for item in items], dtype=np.float64)
    return ParsedLabels(_whole_numbers(floats, source))


def _name(item) -> str | None:
    """One label object of a column of class names -> the name, None where the row has none."""
    if item is None or isinstance(item, float) or item in ("", b""):
        return None
    return item.decode("utf-8") if isinstance(item, bytes) else str(item)


def _from_names(names: list[str | None]) -> ParsedLabels:
    """Class names per row (None: no label) -> indices into the sorted distinct names."""
    classes = tuple(sorted({name for name in names if name is not None}))
    position = {name: index for index, name in enumerate(classes)}
    index = np.array([UNLABELLED if name is None else position[name] for name in names], dtype=np.int64)
    return ParsedLabels(index, classes)


def class_indices(classes, class_names: tuple[str, ...] | None, key: str) -> list[int]:
    """Classes named in params.yaml (indices, or names when the labels were strings) -> indices;
    ClassNameError names `key` and the valid names for a name the labels do not have."""
    indices = []
    for value in classes:
        if isinstance(value, str):
            if not class_names or value not in class_names:
                valid = ", ".join(class_names) if class_names else "none (the labels are integers)"
                raise ClassNameError(f"{key}: no class named {value!r}; class names: {valid}")
            indices.append(class_names.index(value))
        else:
            indices.append(int(value))
    return indices
