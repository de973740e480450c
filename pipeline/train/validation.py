"""The labelled val rows of a training run and the members' accuracy on them after each epoch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.cache.reader import iter_batches
from pipeline.students.inputs import call_student, to_tensors
from pipeline.train.data import TrainingData


@dataclass(frozen=True)
class ValidationSet:
    """The labelled val rows, read from the cache once per run (not once per epoch): inputs
    (n, *input_shape) float32 (or argument -> (n, ...) tensor), labels (n,) int64 and the cached
    teacher's top-1 (n,) int64, on the training device. Named inputs are held per eval batch
    (`batches`), each padded to its own longest row as in training; a single input read from the
    shards is read per eval batch at each evaluation (`batches` reads on demand)."""

    inputs: torch.Tensor
    labels: torch.Tensor
    teacher_top1: torch.Tensor
    batches: tuple = ()

    def batch(self, begin: int, batch_size: int):
        """The inputs of val rows begin:begin + batch_size (begin a multiple of the eval batch size
        `read` was given)."""
        return self.batches[begin // batch_size] if self.batches else self.inputs[begin : begin + batch_size]

    @classmethod
    def read(cls, data: TrainingData, batch_size: int, device) -> ValidationSet:
        """The labelled rows of `data.val_rows`, in order, read in batches of `batch_size`."""
        rows = data.val_rows[np.asarray(data.reader.label)[data.val_rows] >= 0]
        batches = list(iter_batches(data.reader, batch_size, rows=rows)) if len(rows) else []
        if not batches:
            empty = torch.zeros(0, dtype=torch.int64)
            return cls(torch.zeros((0, *data.input_shape)), empty, empty)
        order = np.concatenate([np.asarray(b.rows) for b in batches])
        labels = torch.cat([b.label for b in batches]).to(device)
        top1 = torch.cat([b.logits.argmax(1) for b in batches]).to(device)
        chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        if data.fields is not None:
            held = tuple(to_tensors(data.batch_inputs(chunk), device) for chunk in chunks)
            return cls(torch.zeros((len(order), 0)), labels, top1, held)
        if data.replay is None and not isinstance(data.inputs, np.ndarray):  # on disk: read per epoch
            return cls(torch.zeros((len(order), 0)), labels, top1, _ReadPerBatch(data, chunks, device))
        return cls(torch.from_numpy(data.batch_inputs(order)).to(device), labels, top1)


class _ReadPerBatch:
    """The val inputs of data read from the shards, batch i read when asked for (memory stays
    bounded however large the val split)."""

    def __init__(self, data: TrainingData, chunks: list[np.ndarray], device) -> None:
        self.data, self.chunks, self.device = data, chunks, device

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, index: int):
        return to_tensors(self.data.batch_inputs(self.chunks[index]), self.device)


@torch.no_grad()
def evaluate_members(members: list, val: ValidationSet, batch_size: int) -> list[dict[str, float]]:
    """Per member (pipeline/train/loop.py `Member`, its `.model`): `val/acc` (against the labels)
    and `val/teacher_agreement` (top-1 match with the cached teacher) over the labelled val rows;
    an empty mapping when there are none."""
    if len(val.labels) == 0:
        return [{} for _ in members]
    correct = np.zeros(len(members))
    agree = np.zeros(len(members))
    for member in members:
        member.model.eval()
    for begin in range(0, len(val.labels), batch_size):
        inputs = val.batch(begin, batch_size)
        for index, member in enumerate(members):
            predicted = call_student(member.model, inputs).logits.argmax(1)
            correct[index] += (predicted == val.labels[begin : begin + batch_size]).sum().item()
            agree[index] += (predicted == val.teacher_top1[begin : begin + batch_size]).sum().item()
    for member in members:
        member.model.train()
    return [
        {"val/acc": float(c / len(val.labels)), "val/teacher_agreement": float(a / len(val.labels))}
        for c, a in zip(correct, agree)
    ]
