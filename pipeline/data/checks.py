"""Checks on a dataset as loaded from any source, before it is split: each failure is its own
error type that names the bad rows and what to do about them."""

from __future__ import annotations

import numpy as np

from pipeline.cache.batch import UNLABELLED
from pipeline.errors import DistilleryError


class DatasetError(DistilleryError):
    """Base of every problem with the user's dataset."""


class DatasetFileNotFoundError(DatasetError):
    """The dataset file or directory named in params.yaml does not exist."""


class MissingColumnError(DatasetError):
    """A column (Parquet) or array (npz, Zarr) named in params.yaml is not in the dataset."""


class SampleIdTypeError(DatasetError):
    """Sample ids that are neither integers nor strings, or rows without an id."""


class LabelRangeError(DatasetError):
    """Labels below -1 or at/above num_classes."""


class DuplicateSampleIdError(DatasetError):
    """Two rows share a sample id, so the cache could not be joined to the dataset."""


class NonFiniteInputError(DatasetError):
    """Inputs contain NaN or infinity."""


class InputShapeError(DatasetError, ValueError):
    """Inputs of a shape that does not fit: rows of different sizes, an `input_shape` that does not
    fit the data, or a student architecture that cannot take it (a CNN given flat vectors)."""


class SplitValueError(DatasetError):
    """A split column holds values other than train/val/test/unlabelled."""


class DatasetFormatError(DatasetError):
    """A dataset file that is not in the format params.yaml names (or is truncated)."""


class EmptyDatasetError(DatasetError):
    """The dataset has no rows."""


class InputTypeError(DatasetError):
    """Inputs that are not numbers (strings, objects)."""


def check_rows(source: str, inputs: np.ndarray, **per_row) -> None:
    """The dataset's shape before anything else: at least one row, numeric inputs, and one value per
    row (shape (N,)) in each of `per_row` (ids=, labels=, split=; None = not given)."""
    if len(inputs) == 0:
        raise EmptyDatasetError(f"{source}: the dataset has no rows; point prepare.dataset at your data")
    if inputs.dtype.kind not in "fiub":
        raise InputTypeError(
            f"{source}: inputs must be numbers, got dtype {inputs.dtype}; convert them to floats "
            "(e.g. np.asarray(x, dtype=np.float32)) before saving"
        )
    for name, array in per_row.items():
        if array is not None and np.ndim(array) != 1:
            raise InputShapeError(
                f"{source}: {name} must be one value per row, shape ({len(inputs)},), got shape "
                f"{tuple(np.shape(array))}; flatten them (e.g. y.reshape(-1))"
            )


def few(values, limit: int = 5) -> str:
    """Up to `limit` values as "a, b, c, ... (N in all)", numpy scalars shown as Python values and
    floats to 6 significant digits."""
    values = [v.item() if isinstance(v, np.generic) else v for v in list(values)]
    shown = ", ".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in values[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def check_sample_ids(sample_id: np.ndarray, source: str) -> None:
    """Raise DuplicateSampleIdError naming a few ids that occur more than once."""
    values, counts = np.unique(sample_id, return_counts=True)
    duplicated = values[counts > 1]
    if len(duplicated):
        raise DuplicateSampleIdError(
            f"{source}: sample ids must be unique, but {few(duplicated)} occur more than once; "
            f"fix the id column, or set it to null to number rows by position"
        )


def check_labels(label: np.ndarray, num_classes: int, source: str) -> None:
    """Raise LabelRangeError unless every label is -1 (no label) or in [0, num_classes)."""
    bad = np.flatnonzero((label < UNLABELLED) | (label >= num_classes))
    if len(bad):
        raise LabelRangeError(
            f"{source}: labels must be in [0, {num_classes}) or missing (null / -1), but rows "
            f"{few(bad)} have {few(label[bad])}; fix the labels, or set num_classes in params.yaml "
            f"(prepare.dataset.num_classes) if there are more classes"
        )


def check_inputs_finite(inputs: np.ndarray, source: str) -> None:
    """Raise NonFiniteInputError naming the rows whose inputs hold NaN or infinity."""
    finite = np.isfinite(inputs.reshape(len(inputs), -1)).all(axis=1)
    bad = np.flatnonzero(~finite)
    if len(bad):
        raise NonFiniteInputError(
            f"{source}: inputs of rows {few(bad)} contain NaN or infinity; clean or drop those rows "
            f"(the teacher and the students would turn them into NaN losses)"
        )


def reshape_inputs(
    flat: np.ndarray, input_shape: list[int] | tuple[int, ...] | None, source: str
) -> np.ndarray:
    """(N, D) flat inputs -> (N, *input_shape); input_shape None keeps (N, D)."""
    if input_shape is None:
        return flat
    size = int(np.prod(input_shape))
    if flat.shape[1] != size:
        raise InputShapeError(
            f"{source}: each input has {flat.shape[1]} values but input_shape {list(input_shape)} "
            f"needs {size}; fix prepare.dataset.input_shape"
        )
    return flat.reshape(len(flat), *input_shape)


def infer_num_classes(label: np.ndarray, num_classes: int | None, source: str) -> int:
    """num_classes as given, or 1 + the largest label; an error if there is no label at all."""
    if num_classes is not None:
        return num_classes
    labelled = label[label != UNLABELLED]
    if not len(labelled):
        raise LabelRangeError(
            f"{source}: no row has a label, so the number of classes is unknown; "
            f"set prepare.dataset.num_classes"
        )
    return int(labelled.max()) + 1


def first_sentence(error: Exception) -> str:
    """The first sentence of a library error's message, on one line (pyarrow's run on for several)."""
    return " ".join(str(error).split()).split(". ")[0][:300]
