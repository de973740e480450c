"""A student of named inputs (`students.<s>.inputs`) as ONNX: one graph input per forward argument.

The graph's inputs are the student's arguments in the order of `student.json`'s `inputs`, each in
the dtype it was trained on, with a dynamic batch axis and, for a field padded per batch (token
ids, their mask), a dynamic `sequence` axis shared by all of them; outputs `logits` then the taps.
Parity is checked as for a single-input student (`pipeline.teacher.export.PARITY_RULE`) on batches
of prepared rows padded exactly as at train time (pipeline/students/inputs.py `FieldBatches`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.students.inputs import FieldBatches

MAX_SEQUENCE = 1 << 20
"""Upper bound of the exported sequence axis (torch.export needs one; far above any real model)."""


class _NamedForward(nn.Module):
    """forward(*arrays) in `arguments` order -> (logits, tap...) of a student taking keywords."""

    def __init__(self, student: nn.Module, arguments: Sequence[str], taps: Sequence[str]) -> None:
        super().__init__()
        self.student, self.arguments, self.taps = student, tuple(arguments), tuple(taps)

    def forward(self, *inputs: torch.Tensor):
        output = self.student(**dict(zip(self.arguments, inputs)))
        return (output.logits, *(output.features[name] for name in self.taps))


def parity_feeds(
    batches: FieldBatches, rows: np.ndarray, batch_sizes: Sequence[int], seed: int = 0
) -> list[dict[str, np.ndarray]]:
    """One padded batch (argument -> array) per size, of prepared `rows` ((N,) int64) drawn by
    `pipeline.teacher.export.parity_draws`, as every parity check draws them."""
    from pipeline.teacher.export import OnnxParityError, parity_draws

    rows = np.asarray(rows, np.int64)
    if len(rows) == 0:
        raise OnnxParityError("no prepared rows to check ONNX Runtime against torch on; give at least one")
    return [batches(rows[drawn]) for drawn in parity_draws(len(rows), batch_sizes, seed)]


def export_named_student(
    student: nn.Module,
    inputs: Mapping[str, Mapping[str, Any]],
    source: Any,
    path: str | Path,
    parity_batch_sizes: Sequence[int] = (1, 7, 64),
    rtol: float = 1e-4,
    atol: float = 1e-5,
    seed: int = 0,
    rows: np.ndarray | None = None,
) -> dict:
    """Export `student` (forward by keywords) to `path` and check it against torch; the parity report.

    inputs: `student.json`'s `inputs` (argument -> {field, dtype, shape}); source: the prepared
    fields (a PreparedDataset, or in-memory fields); rows: the prepared rows parity draws from
    (default: all). Written to a temporary sibling, checked, then renamed onto `path`: a failed
    export leaves `path` as it was. Raises OnnxExportError / OnnxParityError as `export_student`.
    """
    from pipeline.export.student_onnx import output_names, student_tap_names
    from pipeline.teacher.export import MAX_BATCH, check_onnx_parity, write_onnx

    path = Path(path)
    arguments = list(inputs)
    batches = FieldBatches(source, {argument: spec["field"] for argument, spec in inputs.items()})
    if rows is None:
        rows = np.arange(len(batches.source.data.sample_id), dtype=np.int64)
    taps = student_tap_names(student)
    module = _NamedForward(student.eval(), arguments, taps).eval()
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    # a student with a context (learned positions: a causal LM) bounds the axis by it
    longest = getattr(student, "max_sequence", MAX_SEQUENCE)
    sequence = torch.export.Dim("sequence", min=1, max=longest)
    dynamic = tuple(
        {0: batch, 1: sequence} if spec["shape"] and spec["shape"][0] is None else {0: batch}
        for spec in inputs.values()
    )
    example = parity_feeds(batches, rows, (2,), seed + 1)[0]
    for argument in arguments:  # one more padded position: torch.export specialises an axis of size 1
        if batches.padded[argument] and example[argument].shape[1] < longest:
            value = example[argument]
            example[argument] = np.concatenate([value, np.zeros_like(value[:, :1])], axis=1)
    temporary = path.with_name(f".tmp-{path.name}.{os.getpid()}")
    try:
        write_onnx(
            module,
            tuple(torch.from_numpy(np.ascontiguousarray(example[a])) for a in arguments),
            temporary,
            arguments,
            output_names(taps),
            (dynamic,),
        )
        report = check_onnx_parity(
            module, temporary, parity_feeds(batches, rows, parity_batch_sizes, seed), rtol=rtol, atol=atol
        )
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return {
        "inputs": {
            "source": "prepared rows",
            "seed": seed,
            "fields": {a: dict(s) for a, s in inputs.items()},
        },
        "output_names": output_names(taps),
        **report,
    }
