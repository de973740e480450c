"""The host batches of an epoch: cached teacher rows beside the student's inputs, in order.

The main process reads the cache (its readers hold open stores and memory maps); a student of named
inputs may have its fields read and padded by `students.<s>.loader_workers` torch DataLoader
worker processes, `prefetch` batches ahead each, from the picklable prepared dataset. The batches
are cut from the epoch's rows before any worker starts and come back in that order, so the result
is the same with any number of workers (and resuming mid-epoch cuts the same rows as before).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import DataLoader, Dataset

from pipeline.cache.reader import iter_batches
from pipeline.students.inputs import FieldBatches


class _PreparedBatches(Dataset):
    """Batch i -> the padded named inputs of the prepared rows of batch i (runs in a worker)."""

    def __init__(self, fields: FieldBatches, batches: list[np.ndarray]) -> None:
        self.fields, self.batches = fields, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return self.fields(self.batches[index])


def _as_is(batch):
    """DataLoader's collate for batches made whole by the dataset: keep the numpy arrays."""
    return batch


def host_batches(data, rows: np.ndarray, micro_batch: int, workers: int = 0, prefetch: int = 2) -> Iterator:
    """(TeacherBatch, inputs) per `micro_batch` rows of `rows` ((n,) int64 cache rows, in order):
    inputs as `data.batch_inputs` gives them. workers > 0 (a student of named inputs): the inputs
    are read in that many DataLoader worker processes, `prefetch` batches ahead each."""
    teacher = iter_batches(data.reader, micro_batch, rows=rows)
    if workers == 0 or data.fields is None:
        return ((batch, data.batch_inputs(batch.rows)) for batch in teacher)
    rows = np.asarray(rows, np.int64)
    prepared = [
        data.position[rows[start : start + micro_batch]] for start in range(0, len(rows), micro_batch)
    ]
    loader = DataLoader(
        _PreparedBatches(data.fields, prepared),
        batch_size=None,
        num_workers=workers,
        prefetch_factor=prefetch,
        collate_fn=_as_is,
    )
    return zip(teacher, loader)
