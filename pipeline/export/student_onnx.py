"""A trained student as an ONNX file that can be the teacher of the next cache (chains).

The graph has input `input` (batch, *input_shape) float32 with a dynamic batch axis, and outputs
`logits` (batch, C) followed by every feature tap of the student, by name, so
`pipeline.teacher.session.open_teacher` reads it like the built-in teacher. The torch -> ONNX
conversion and the ONNX Runtime comparison are the teacher's (`pipeline.teacher.export`, which
takes a module returning `StudentOutput` as it is); this module names the student's outputs and
installs the file only once it has passed the parity check.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

LOGITS = "logits"
INPUT = "input"


def output_names(tap_names: Sequence[str]) -> list[str]:
    """The ONNX output names of a student: `logits`, then its taps."""
    return [LOGITS, *tap_names]


def student_tap_names(student: nn.Module) -> tuple[str, ...]:
    """The taps a student exposes (`student.tap_shapes`, in its order); logits excluded."""
    return tuple(getattr(student, "tap_shapes", {}) or {})


def standard_normal_rows(input_shape: Sequence[int], count: int = 64, seed: int = 0) -> np.ndarray:
    """(count, *input_shape) float32 seeded standard-normal rows: parity inputs only for a caller
    with no data at hand (the export stage passes the prepared rows)."""
    return np.random.default_rng(seed).standard_normal((count, *input_shape)).astype(np.float32)


def _temporary_sibling(path: Path) -> Path:
    return path.with_name(f".tmp-{path.name}.{os.getpid()}")


def export_student(
    student: nn.Module,
    input_shape: Sequence[int],
    path: str | Path,
    tap_names: Sequence[str] | None = None,
    parity_batch_sizes: Sequence[int] = (1, 7, 64),
    rtol: float = 1e-4,
    atol: float = 1e-5,
    seed: int = 0,
    parity_rows: np.ndarray | None = None,
) -> dict:
    """Export `student` to `path` and check it against torch; returns the parity report.

    The file is written to a temporary sibling, checked with ONNX Runtime on one batch of each of
    `parity_batch_sizes`, drawn with `seed` from `parity_rows` ((N, *input_shape) float32: the
    prepared data's inputs; seeded standard-normal rows when None, recorded as such), every output
    under `pipeline.teacher.export.PARITY_RULE`, and only then renamed onto `path`: a killed or
    failed export leaves `path` as it was. Raises `pipeline.teacher.export.OnnxParityError`
    (naming the worst output) when the check fails and `OnnxExportError` when torch cannot export
    the student.
    """
    from pipeline.teacher.export import OnnxExportError, check_onnx_parity, export_onnx, parity_batches

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tap_names = student_tap_names(student) if tap_names is None else tuple(tap_names)
    student = student.eval()
    temporary = _temporary_sibling(path)
    source = "prepared rows" if parity_rows is not None else "standard normal"
    rows = standard_normal_rows(input_shape, seed=seed) if parity_rows is None else parity_rows
    if tuple(np.shape(rows)[1:]) != tuple(input_shape):
        raise OnnxExportError(
            f"parity rows have shape {list(np.shape(rows)[1:])} but the student takes {list(input_shape)}; "
            "export it with the prepared data it was trained on"
        )
    try:
        example = torch.from_numpy(parity_batches(rows, (2,), seed)[0])
        export_onnx(student, example, temporary, output_names(tap_names), input_name=INPUT)
        report = check_onnx_parity(
            student,
            temporary,
            parity_batches(rows, parity_batch_sizes, seed),
            rtol=rtol,
            atol=atol,
            input_name=INPUT,
        )
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return {
        "input": INPUT,
        "input_shape": list(input_shape),
        "output_names": output_names(tap_names),
        "inputs": {"source": source, "seed": seed},
        **report,
    }
