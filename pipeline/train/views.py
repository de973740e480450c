"""Training on the views of a view cache (`students.<s>.views: k`): which view each epoch, exact replay.

A view cache (`cache.views`, pipeline/cache/views.py) holds every sample's original row (view -1)
and K views of each sample a student may train on, each with its drawn params. A student asking
for k <= K views trains on views 0..k-1 of every training sample:

- **Which view, each epoch.** Epochs come in cycles of k; in cycle c each sample's k views are put
  in an order drawn from (seed, c), and epoch c * k + j trains on the j-th of them: each view once
  per cycle, without replacement. The choice is a function of (seed, epoch) alone, so a resumed
  run needs only (epoch, step in epoch), as before; the batch order within the epoch is today's
  permutation of those rows.
- **Exact replay.** A row's input is `apply(spec, its record, its sample's input, its partner's
  input)` with the spec the cache records: the very pixels the teacher saw (the same code,
  `pipeline.cache.views.view_inputs`). Validation reads the originals.
- **Labels of a mixed view** (mixup/cutmix, lam < 1) are no class: hard-label terms see them as
  unlabelled (-1); soft terms use the teacher's output on the mixed view (function matching).
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from pipeline.cache.batch import UNLABELLED, TeacherBatch
from pipeline.cache.build import recorded_views
from pipeline.cache.views import ORIGINAL_VIEW, PartnerIndex, output_shape, view_inputs
from pipeline.errors import DistilleryError
from pipeline.transforms import TransformError, check_view_count

VIEW_ORDER_TAG = 0x76696577
"""Seeds the per-cycle view order apart from the epoch's batch order (which uses (seed, epoch))."""


class ViewsMismatchError(DistilleryError):
    """A student asks for views the cache does not hold, or asks for none of a cache that holds them."""


def check_student_views(path: Any, view_count: int | None, requested: int | None, student: str) -> None:
    """ViewsMismatchError (one line, the fix) unless the student's `views` fits the cache's views:
    none for a single-view cache, 1..K for a cache of K views per sample."""
    key = f"students.{student}.views"
    if view_count is None and requested is not None:
        raise ViewsMismatchError(
            f"{key} is {requested} but the cache at {path} holds no views; set cache.views "
            "({count, seed, transforms}) and re-run `dvc repro cache`, or drop views from the student"
        )
    if view_count is not None and requested is None:
        raise ViewsMismatchError(
            f"the cache at {path} holds {view_count} views per sample but {key} is not set; set it to "
            f"1..{view_count} to train on them, or point students.{student}.cache at a single-view cache"
        )
    if requested is not None:
        try:
            check_view_count(requested, view_count, key)
        except TransformError as error:
            raise ViewsMismatchError(str(error)) from None


def originals(reader: Any) -> SimpleNamespace:
    """The original rows (view -1) of a view cache as a reader-like (sample_id, split, label, rows)."""
    rows = np.flatnonzero(np.asarray(reader.view) == ORIGINAL_VIEW).astype(np.int64)
    return SimpleNamespace(
        rows=rows,
        sample_id=np.asarray(reader.sample_id)[rows],
        split=np.asarray(reader.split)[rows],
        label=np.asarray(reader.label)[rows],
    )


class ViewReplay:
    """The views a student trains on and their inputs, replayed from the cache's records.

    reader: a view cache; spec: the transforms it records; views: the k asked for; inputs: the
    prepared inputs (N, *input_shape); source: (R,) int64 prepared row of every cache row;
    sample_rows: (n,) int64 original cache rows of the training samples.
    """

    def __init__(
        self,
        reader: Any,
        spec: Any,
        views: int,
        inputs: np.ndarray,
        source: np.ndarray,
        sample_rows: np.ndarray,
        partners: PartnerIndex,
    ) -> None:
        self.reader, self.spec, self.views = reader, tuple(spec), int(views)
        self.inputs, self.source, self.partners = inputs, np.asarray(source, np.int64), partners
        self.mixes = any(step.kind in ("mixup", "cutmix") for step in self.spec)
        self.shape = output_shape(self.spec, tuple(inputs.shape[1:]))
        view = np.asarray(reader.view)
        table = np.full((len(inputs), self.views), -1, np.int64)
        chosen = np.flatnonzero((view >= 0) & (view < self.views))
        table[self.source[chosen], view[chosen]] = chosen
        self.view_rows = table[self.source[np.asarray(sample_rows, np.int64)]]
        if (self.view_rows < 0).any():
            raise ViewsMismatchError(
                "the view cache lacks views of some training samples (is it damaged?); re-run "
                "`dvc repro cache`"
            )

    def epoch_rows(self, seed: int, epoch: int) -> np.ndarray:
        """(n,) int64 cache rows trained on in `epoch`: one view per training sample, each of its
        k views once per cycle of k epochs, the order of a cycle drawn from (seed, cycle)."""
        cycle, position = divmod(int(epoch), self.views)
        rng = np.random.default_rng([int(seed), cycle, VIEW_ORDER_TAG])
        order = rng.permuted(np.tile(np.arange(self.views), (len(self.view_rows), 1)), axis=1)
        return self.view_rows[np.arange(len(self.view_rows)), order[:, position]]

    def batch_inputs(self, rows: np.ndarray) -> np.ndarray:
        """(B, *shape) float32 inputs of cache rows `rows`, bit-equal to what the teacher saw."""
        rows = np.asarray(rows, np.int64)
        return view_inputs(
            self.spec,
            self.reader.view_records(rows),
            np.asarray(self.reader.view)[rows],
            self.inputs,
            self.source[rows],
            self.partners,
            self.mixes,
        )


class MixedLabelsUnlabelled:
    """A view cache reader whose batches give mixed views (lam < 1) the label -1: their input is
    two samples, so hard-label terms mask them. Everything else is the wrapped reader's."""

    def __init__(self, reader: Any) -> None:
        self._reader = reader

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)

    def __len__(self) -> int:
        return len(self._reader)

    def batch(self, rows: np.ndarray) -> TeacherBatch:
        """The wrapped reader's batch, with mixed views unlabelled."""
        batch = self._reader.batch(rows)
        mixed = self._reader.view_records(np.asarray(rows, np.int64))["lam"] < 1
        if not mixed.any():
            return batch
        label = batch.label.clone()
        label[torch.from_numpy(mixed)] = UNLABELLED
        return dataclasses.replace(batch, label=label)


def recorded_spec(reader: Any) -> tuple[Any, ...]:
    """The transforms a view cache was built with (its cache.json), parsed."""
    metadata = getattr(reader, "metadata", None)
    views = None if metadata is None else recorded_views(metadata)
    if views is None:
        raise ViewsMismatchError(
            "the cache holds views but records no transforms (a reader without cache.json); open it "
            "with pipeline.cache.open.open_cache"
        )
    return tuple(views.transforms)
