"""The `export:` section of params.yaml."""

from __future__ import annotations

from pydantic import Field

from pipeline.config import Seed, StrictModel


class ExportParams(StrictModel):
    """`export: {seed: null, int8: false, rtol: 1.0e-4, atol: 1.0e-5, parity_batch_sizes: [1, 7, 64]}`.

    seed: which trained seed becomes `model.onnx` (null: the lowest seed number).
    int8: also write `model.int8.onnx` (ONNX Runtime dynamic quantisation) and report its accuracy change.
    rtol, atol: ONNX Runtime vs torch parity, |onnx - torch| <= atol + rtol * |torch| elementwise.
    """

    seed: Seed | None = None
    int8: bool = False
    rtol: float = Field(default=1e-4, gt=0)
    atol: float = Field(default=1e-5, gt=0)
    parity_batch_sizes: tuple[int, ...] = Field(default=(1, 7, 64), min_length=1)
    parity_seed: Seed = 0
