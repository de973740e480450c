"""The `export:` section of params.yaml."""

from __future__ import annotations

from pipeline.config import Seed, StrictModel
from pipeline.teacher.params import ParityBatchSizes, ParityTolerance


class ExportParams(StrictModel):
    """`export: {seed: null, int8: false, rtol: 1.0e-4, atol: 1.0e-5, parity_batch_sizes: [1, 7, 64]}`.

    seed: which trained seed becomes `model.onnx` (null: the lowest seed number).
    int8: also write `model.int8.onnx` (ONNX Runtime dynamic quantisation) and report its accuracy change.
    rtol, atol: ONNX Runtime vs torch parity on each output, max|onnx - torch| <= atol + rtol *
    max|torch| (pipeline.teacher.export.PARITY_RULE), on `parity_batch_sizes` rows of the prepared
    data drawn with `parity_seed`.
    """

    seed: Seed | None = None
    int8: bool = False
    rtol: ParityTolerance = 1e-4
    atol: ParityTolerance = 1e-5
    parity_batch_sizes: ParityBatchSizes = (1, 7, 64)
    parity_seed: Seed = 0
