"""Optional int8 weights: ONNX Runtime dynamic quantisation and what it costs in accuracy.

`quantize_dynamic` stores weights as int8 and quantises activations on the fly (no calibration
data). Its shape inference trips over the `value_info` the torch dynamo exporter writes
("Inferred shape and existing shape differ"), so the intermediate shapes are dropped first; the
graph's inputs and outputs keep theirs.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.evaluate.metrics import accuracy, agreement


class _DropPreprocessingHint(logging.Filter):
    """quantize_dynamic logs "Please consider to run pre-processing before quantization" on the
    root logger at every call; that advice is for static (calibrated) quantisation."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def quantize_int8(source: str | Path, target: str | Path) -> Path:
    """Write the dynamically int8-quantised copy of the ONNX model `source` to `target`, atomically
    (the same input and output names; weights inside the file)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source, target = Path(source), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(source))
    del model.graph.value_info[:]
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".tmp-int8-") as scratch:
        cleaned, quantised = Path(scratch) / "fp32.onnx", Path(scratch) / "int8.onnx"
        onnx.save(model, str(cleaned))
        hint_filter = _DropPreprocessingHint()
        logging.getLogger().addFilter(hint_filter)
        try:
            quantize_dynamic(str(cleaned), str(quantised), weight_type=QuantType.QInt8)
        finally:
            logging.getLogger().removeFilter(hint_filter)
        os.replace(quantised, target)
    return target


def onnx_logits(
    path: str | Path, inputs: np.ndarray, batch_size: int = 256, output: str = "logits"
) -> np.ndarray:
    """(N, *input_shape) float32 -> (N, C) float32: the `output` of an ONNX model on the CPU provider."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    return np.concatenate(
        [
            session.run(
                [output], {input_name: np.ascontiguousarray(inputs[s : s + batch_size], dtype=np.float32)}
            )[0]
            for s in range(0, len(inputs), batch_size)
        ]
    )


def int8_report(
    fp32_path: str | Path, int8_path: str | Path, inputs: np.ndarray, labels: np.ndarray
) -> dict[str, Any]:
    """How the int8 model compares with the fp32 one on labelled rows inputs (N, ...), labels (N,):
    accuracy of each, the change (int8 - fp32, in accuracy points of [0, 1]), argmax agreement,
    the largest absolute logit difference and both file sizes."""
    fp32_logits = onnx_logits(fp32_path, inputs)
    int8_logits = onnx_logits(int8_path, inputs)
    fp32_accuracy, int8_accuracy = accuracy(fp32_logits, labels), accuracy(int8_logits, labels)
    return {
        "file": Path(int8_path).name,
        "rows": int(len(labels)),
        "accuracy_fp32": fp32_accuracy,
        "accuracy_int8": int8_accuracy,
        "accuracy_change": int8_accuracy - fp32_accuracy,
        "agreement_with_fp32": agreement(int8_logits, fp32_logits),
        "max_abs_logit_diff": float(np.abs(int8_logits - fp32_logits).max()),
        "bytes_fp32": os.path.getsize(fp32_path),
        "bytes_int8": os.path.getsize(int8_path),
    }
