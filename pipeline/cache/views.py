"""The rows of a view cache (`cache.views`): every sample's original, then K drawn views per sample.

Function matching (Beyer et al. 2022, "Knowledge distillation: A good teacher is patient and
consistent", arXiv:2106.05237) needs the student to see the teacher's output on the very view it
trains on; FKD (Shen & Xing 2022, "A Fast Knowledge Distillation Framework for Visual
Recognition", arXiv:2112.01528) caches each view's parameters beside its soft labels. Cache rows,
keyed by (sample_id, view):

    rows [0, N)          view -1: every prepared row as it is (read-time steps of the spec only),
                         in the prepared order: the single-view cache's rows, for validation,
                         evaluation and the report
    rows [N, N + P * K)  views 0..K-1 of each of the P samples a student may train on (splits
                         `train` and `unlabelled`, prepared order), sample-major

A view row's input is `apply(spec, record, input, partner's input)` with its record drawn by a
`ViewDrawer` from (seed, sample id, view) alone: the partners come from those P samples (never
val or test). `ViewRows` is a RowSource over those rows for the build; its `inputs` are made per
teacher batch, never held whole.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from pipeline.cache.batch import SPLITS
from pipeline.transforms import (
    VIEW_DTYPE,
    PartnerPool,
    TransformError,
    ViewDrawer,
    ViewParams,
    ViewsParams,
    apply_batch,
    step_shapes,
    without_augmentations,
)

ORIGINAL_VIEW = -1
"""The `view` of a row holding the sample as it is (no augmentation)."""

POOL_SPLITS = ("train", "unlabelled")
"""The splits whose samples get views and give mixing partners: what a student trains on."""


def pool_mask(split: np.ndarray) -> np.ndarray:
    """(N,) bool: the rows of `split` ((N,) int8 split codes) that get views (POOL_SPLITS)."""
    return np.isin(np.asarray(split), [SPLITS.index(name) for name in POOL_SPLITS])


def view_row_plan(split: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(source, view), each (N + P * count,): the prepared row and the view index (-1 = original)
    of every cache row of a view cache over prepared rows with split codes `split` ((N,) int8)."""
    n = len(split)
    pooled = np.flatnonzero(pool_mask(split)).astype(np.int64)
    source = np.concatenate([np.arange(n, dtype=np.int64), np.repeat(pooled, count)])
    view = np.concatenate(
        [np.full(n, ORIGINAL_VIEW, np.int32), np.tile(np.arange(count, dtype=np.int32), len(pooled))]
    )
    return source, view


def output_shape(spec: Any, input_shape: tuple[int, ...]) -> tuple[int, ...]:
    """One view's shape after `spec`, refused (TransformError) when it differs from the original's
    after the read-time steps: original and view rows share the teacher, the student and the cache."""
    shape = step_shapes(spec, input_shape)[-1]
    original = step_shapes(without_augmentations(spec), input_shape)[-1]
    if shape != original:
        raise TransformError(
            f"cache.views.transforms: a view is {list(shape)} but an original input is {list(original)}; "
            "views and originals share the teacher and the student, so keep the size (crop with padding, "
            "or resized_crop to the input size)"
        )
    return shape


class PartnerIndex:
    """Partner sample id -> row of the prepared inputs (ids sorted once)."""

    def __init__(self, sample_id: np.ndarray) -> None:
        ids = np.asarray(sample_id, np.int64)
        self._order = np.argsort(ids, kind="stable")
        self._sorted = ids[self._order]

    def rows(self, partner_id: np.ndarray) -> np.ndarray:
        """(B,) int64 prepared rows of the (B,) int64 partner ids (each must be a sample id)."""
        position = np.searchsorted(self._sorted, np.asarray(partner_id, np.int64))
        return self._order[np.clip(position, 0, len(self._order) - 1)]


def view_inputs(
    spec: Any,
    records: np.ndarray,
    view: np.ndarray,
    inputs: np.ndarray,
    source: np.ndarray,
    partners: PartnerIndex,
    mixes: bool,
) -> np.ndarray:
    """The inputs of B cache rows: (B, *shape) float32, bit-equal at cache and train time.

    records (B,) VIEW_DTYPE, view (B,) int (-1 = original), source (B,) int64 rows of `inputs`
    ((N, *input_shape), the prepared inputs). Originals get the spec's read-time steps; views the
    whole spec with their record and their partner's input when the spec mixes.
    """
    source = np.asarray(source, np.int64)
    originals = np.asarray(view) == ORIGINAL_VIEW
    out = None
    for mask, steps in ((originals, without_augmentations(spec)), (~originals, spec)):
        if not mask.any():
            continue
        rows = source[mask]
        partner = inputs[partners.rows(records["partner_id"][mask])] if mixes and steps is spec else None
        values = apply_batch(steps, records[mask], inputs[rows], partner) if steps else inputs[rows]
        if out is None:
            out = np.empty((len(source), *values.shape[1:]), np.float32)
        out[mask] = values
    return out


class ViewRows:
    """A RowSource over the rows of a view cache (see the module docstring), for the build.

    data: the prepared rows (sample_id, split, label (N,), inputs (N, *input_shape)); views: the
    `cache.views` params. sample_id / split / label / view are (R,) per cache row; `records(rows)`
    draws the VIEW_DTYPE records of a slice of rows; `inputs[rows]` makes their inputs.
    """

    def __init__(self, data: Any, views: ViewsParams) -> None:
        self.data, self.views, self.spec = data, views, tuple(views.transforms)
        self.source, self.view = view_row_plan(data.split, views.count)
        self.sample_id = np.asarray(data.sample_id, np.int64)[self.source]
        self.split = np.asarray(data.split)[self.source]
        self.label = np.asarray(data.label)[self.source]
        if hasattr(data, "num_classes"):
            self.num_classes = data.num_classes
        input_shape = tuple(int(d) for d in np.shape(data.inputs)[1:])
        self.shape = output_shape(self.spec, input_shape)
        pool = np.asarray(data.sample_id, np.int64)[pool_mask(data.split)]
        self.mixes = any(step.kind in ("mixup", "cutmix") for step in self.spec)
        self.drawer = ViewDrawer(self.spec, views.seed, input_shape, PartnerPool(pool) if len(pool) else None)
        self.partners = PartnerIndex(data.sample_id)
        self.inputs = _ViewInputs(self)
        self._memo: tuple[int, int, np.ndarray] | None = None

    def shown_ids(self, rows: np.ndarray) -> list:
        """Cache rows -> the ids messages show (the user's ids)."""
        shown: Callable = getattr(self.data, "shown_ids", None) or (
            lambda rows: np.asarray(self.data.sample_id)[rows].tolist()
        )
        return shown(self.source[np.asarray(rows, np.int64)])

    def records(self, rows: slice) -> np.ndarray:
        """(n,) VIEW_DTYPE records of the cache rows `rows`: drawn for view rows, the untouched
        record for originals. The last slice drawn is kept, so a shard's teacher batches reuse it."""
        if self._memo is not None and self._memo[0] <= rows.start and rows.stop <= self._memo[1]:
            start = self._memo[0]
            return self._memo[2][rows.start - start : rows.stop - start]
        table = np.zeros(rows.stop - rows.start, VIEW_DTYPE)
        table[:] = ViewParams().values()
        for offset, row in enumerate(range(rows.start, rows.stop)):
            if self.view[row] != ORIGINAL_VIEW:
                table[offset] = self.drawer.draw(int(self.sample_id[row]), int(self.view[row])).values()
        self._memo = (rows.start, rows.stop, table)
        return table


class _ViewInputs:
    """`ViewRows.inputs`: made per slice of cache rows (R rows of `shape`), never held whole."""

    def __init__(self, rows: ViewRows) -> None:
        self._rows = rows
        self.shape = (len(rows.source), *rows.shape)
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice | np.ndarray) -> np.ndarray:
        """(R, *shape) float32 inputs of cache rows `rows`: a slice, or (R,) int64 row numbers (the
        teacher's field reader asks by index; a run of consecutive rows is read as one slice)."""
        source = self._rows
        if not isinstance(rows, slice):
            rows = np.asarray(rows, np.int64)
            if len(rows) == 0:
                return np.empty((0, *source.shape), np.float32)
            if not np.all(np.diff(rows) == 1):
                return np.concatenate([self[slice(int(r), int(r) + 1)] for r in rows])
            rows = slice(int(rows[0]), int(rows[-1]) + 1)
        rows = slice(*rows.indices(len(self)))
        return view_inputs(
            source.spec,
            source.records(rows),
            source.view[rows],
            np.asarray(source.data.inputs),
            source.source[rows],
            source.partners,
            source.mixes,
        )


def view_rows(data: Any, views: ViewsParams | None) -> Any:
    """The RowSource a build caches: `data` itself without views, else its `ViewRows`."""
    return data if views is None else ViewRows(data, views)
