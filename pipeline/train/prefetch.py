"""Batches from the host onto the training device, the next one copied while the current one trains.

The batch source (the cache reader joined to the prepared inputs) yields host batches; the step
wants tensors on its device. On the CPU that is a wrap of the numpy inputs, as it always was. On
CUDA a copy from pageable memory blocks the Python thread until the GPU has drained its queue (the
driver stages it through a pinned buffer), which would stall the step's launches once per batch.
So each host batch is copied into pinned memory and sent with `non_blocking=True` on a side
stream, one batch ahead: batch i+1's copy runs while the kernels of step i run. The training
stream waits on an event recorded after that batch's copy only, and each tensor is marked as used
by the training stream (`record_stream`) so the caching allocator does not reuse its memory early.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.cache.batch import SparseLogits, TeacherBatch


@dataclass(frozen=True)
class DeviceBatch:
    """One batch ready for the step.

    rows: (B,) int64 cache rows, on the CPU (the CRD bank sampler compares them there).
    teacher: the cached teacher outputs, every tensor on the training device.
    inputs: (B, *input_shape) float32 student inputs on the training device.
    """

    rows: torch.Tensor
    teacher: TeacherBatch
    inputs: torch.Tensor


def device_batches(
    host: Iterable[tuple[TeacherBatch, np.ndarray]], device: torch.device
) -> Iterator[DeviceBatch]:
    """`host` yields (teacher batch on the CPU, inputs (B, *input_shape) float32 numpy); the same
    batches come out, in order, on `device` (on CUDA: pinned, non-blocking, one batch ahead)."""
    if device.type != "cuda":
        for teacher, inputs in host:
            yield DeviceBatch(
                torch.from_numpy(np.asarray(teacher.rows, np.int64)),
                teacher.to(device),
                torch.from_numpy(inputs).to(device),
            )
        return
    stream = torch.cuda.Stream(device)
    pending = None
    for teacher, inputs in host:
        queued = _copy_ahead(teacher, inputs, device, stream)
        if pending is not None:
            yield _ready(*pending)
        pending = queued
    if pending is not None:
        yield _ready(*pending)


def _map(teacher: TeacherBatch, function) -> TeacherBatch:
    """`teacher` with `function` applied to each of its tensors."""
    sparse = teacher.sparse
    return TeacherBatch(
        rows=teacher.rows,
        sample_id=teacher.sample_id,
        split=teacher.split,
        label=function(teacher.label),
        logits=function(teacher.logits),
        features={name: function(value) for name, value in teacher.features.items()},
        sparse=None
        if sparse is None
        else SparseLogits(function(sparse.values), function(sparse.indices), function(sparse.logsumexp)),
    )


def _pinned(tensor: torch.Tensor) -> torch.Tensor:
    return tensor if tensor.is_pinned() else tensor.pin_memory()


def _copy_ahead(
    teacher: TeacherBatch, inputs: np.ndarray, device: torch.device, stream: torch.cuda.Stream
) -> tuple[DeviceBatch, torch.cuda.Event]:
    """Start the copy of one batch on `stream`; the event marks its end."""
    pinned_inputs = _pinned(torch.from_numpy(np.ascontiguousarray(inputs)))
    pinned = _map(teacher, _pinned)
    with torch.cuda.stream(stream):
        batch = DeviceBatch(
            torch.from_numpy(np.asarray(teacher.rows, np.int64)),
            _map(pinned, lambda tensor: tensor.to(device, non_blocking=True)),
            pinned_inputs.to(device, non_blocking=True),
        )
        done = torch.cuda.Event()
        done.record(stream)
    return batch, done


def _ready(batch: DeviceBatch, done: torch.cuda.Event) -> DeviceBatch:
    """Make the training (current) stream wait for this batch's copy, and own its memory."""
    current = torch.cuda.current_stream(batch.inputs.device)
    current.wait_event(done)
    teacher = batch.teacher
    sparse = (
        ()
        if teacher.sparse is None
        else (teacher.sparse.values, teacher.sparse.indices, teacher.sparse.logsumexp)
    )
    for tensor in (batch.inputs, teacher.label, teacher.logits, *teacher.features.values(), *sparse):
        tensor.record_stream(current)
    return batch
