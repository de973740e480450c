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

from pipeline.cache.batch import SparseLogits, TeacherBatch, TokenBatch


@dataclass(frozen=True)
class DeviceBatch:
    """One batch ready for the step.

    rows: (B,) int64 cache rows, on the CPU (the CRD bank sampler compares them there).
    teacher: the cached teacher outputs, every tensor on the training device.
    inputs: (B, *input_shape) float32 student inputs on the training device, or, for a student of
        named inputs, argument -> (B, ...) tensor.
    """

    rows: torch.Tensor
    teacher: TeacherBatch
    inputs: torch.Tensor | dict[str, torch.Tensor]


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
                _each(inputs, lambda array: torch.from_numpy(array).to(device)),
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
        logits=None if teacher.logits is None else function(teacher.logits),
        features={name: function(value) for name, value in teacher.features.items()},
        sparse=None
        if sparse is None
        else SparseLogits(function(sparse.values), function(sparse.indices), function(sparse.logsumexp)),
        tokens=None if teacher.tokens is None else _map_tokens(teacher.tokens, function),
    )


def _map_tokens(tokens: TokenBatch, function) -> TokenBatch:
    """`tokens` with `function` applied to each of its tensors."""
    return TokenBatch(
        function(tokens.lengths),
        function(tokens.mask),
        {name: function(value) for name, value in tokens.padded.items()},
        {name: function(value) for name, value in tokens.flat.items()},
    )


def _each(inputs, function):
    """`function` applied to the inputs array, or to each array of named inputs."""
    if isinstance(inputs, dict):
        return {name: function(value) for name, value in inputs.items()}
    return function(inputs)


def _pinned(tensor: torch.Tensor) -> torch.Tensor:
    return tensor if tensor.is_pinned() else tensor.pin_memory()


def _copy_ahead(
    teacher: TeacherBatch, inputs: np.ndarray, device: torch.device, stream: torch.cuda.Stream
) -> tuple[DeviceBatch, torch.cuda.Event]:
    """Start the copy of one batch on `stream`; the event marks its end."""
    pinned_inputs = _each(inputs, lambda array: _pinned(torch.from_numpy(np.ascontiguousarray(array))))
    pinned = _map(teacher, _pinned)
    with torch.cuda.stream(stream):
        batch = DeviceBatch(
            torch.from_numpy(np.asarray(teacher.rows, np.int64)),
            _map(pinned, lambda tensor: tensor.to(device, non_blocking=True)),
            _each(pinned_inputs, lambda tensor: tensor.to(device, non_blocking=True)),
        )
        done = torch.cuda.Event()
        done.record(stream)
    return batch, done


def _ready(batch: DeviceBatch, done: torch.cuda.Event) -> DeviceBatch:
    """Make the training (current) stream wait for this batch's copy, and own its memory."""
    current = torch.cuda.current_stream(batch.teacher.label.device)
    current.wait_event(done)
    teacher = batch.teacher
    sparse = (
        ()
        if teacher.sparse is None
        else (teacher.sparse.values, teacher.sparse.indices, teacher.sparse.logsumexp)
    )
    inputs = tuple(batch.inputs.values()) if isinstance(batch.inputs, dict) else (batch.inputs,)
    tokens = (
        ()
        if teacher.tokens is None
        else (
            teacher.tokens.lengths,
            teacher.tokens.mask,
            *teacher.tokens.padded.values(),
            *teacher.tokens.flat.values(),
        )
    )
    for tensor in (*inputs, teacher.label, teacher.logits, *teacher.features.values(), *sparse, *tokens):
        if tensor is not None:
            tensor.record_stream(current)
    return batch
