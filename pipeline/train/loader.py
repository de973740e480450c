"""The host batches of an epoch: cached teacher rows beside the student's inputs, in order.

The main process reads the cache (its readers hold open stores and memory maps); the inputs of a
student may be read (and, for named fields, padded) by `students.<s>.loader_workers` torch
DataLoader worker processes, `prefetch` batches ahead each, from the picklable prepared dataset:
its named fields, or its single input when that is read from the prepared shards on disk (a
`FieldView`, with its read-time transforms). Inputs held in memory (digits) and the views of a
view cache are gathered in the loop: there is no file to read in a worker. The batches
are cut from the epoch's rows before any worker starts and come back in that order, so the result
is the same with any number of workers (and resuming mid-epoch cuts the same rows as before).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset

from pipeline.cache.reader import iter_batches
from pipeline.data.dataset import FieldView


class _PreparedBatches(Dataset):
    """Batch i -> `read(batches[i])`: the padded named inputs of the prepared rows of batch i, or the
    (B, *input_shape) float32 single inputs of its cache rows (runs in a worker)."""

    def __init__(self, read: Callable[[np.ndarray], Any], batches: list[np.ndarray]) -> None:
        self.read, self.batches = read, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int):
        return self.read(self.batches[index])


def _as_is(batch):
    """DataLoader's collate for batches made whole by the dataset: keep the numpy arrays."""
    return batch


def host_batches(data, rows: np.ndarray, micro_batch: int, workers: int = 0, prefetch: int = 2) -> Iterator:
    """(TeacherBatch, inputs) per `micro_batch` rows of `rows` ((n,) int64 cache rows, in order):
    inputs as `data.batch_inputs` gives them. workers > 0: the inputs are read in that many
    DataLoader worker processes, `prefetch` batches ahead each, when they come from files (named
    fields, or a single input on disk); else in the loop."""
    teacher = iter_batches(data.reader, micro_batch, rows=rows)
    rows = np.asarray(rows, np.int64)
    cuts = [rows[start : start + micro_batch] for start in range(0, len(rows), micro_batch)]
    if workers and data.fields is not None:
        read, batches = data.fields, [data.position[cut] for cut in cuts]
    elif workers and data.replay is None and isinstance(data.inputs, FieldView):
        read, batches = data.inputs.__getitem__, cuts
    else:
        return ((batch, data.batch_inputs(batch.rows)) for batch in teacher)
    loader = DataLoader(
        _PreparedBatches(read, batches),
        batch_size=None,
        num_workers=workers,
        prefetch_factor=prefetch,
        collate_fn=_as_is,
    )
    return zip(teacher, loader)
