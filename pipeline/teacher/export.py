"""Export any torch module to a single-file ONNX model with a dynamic batch axis, and check it
against torch with ONNX Runtime. Used for the built-in teacher and for every student's export.

The exported model has one input (`input_name`, (B, *shape) float32, B dynamic) and the outputs
`output_names` in the order the module returns them: `logits` first, then the feature taps, so the
file can be the teacher of the next cache (chains, docs/pipeline.md). Recipe (docs/data_and_teacher.md):
`torch.onnx.export(dynamo=True, dynamic_shapes=..., external_data=False)`; parity gate fp32 on the
ORT CPU provider at rtol 1e-4, atol 1e-5.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from pipeline.errors import DistilleryError

MAX_BATCH = 1 << 20


class OnnxExportError(DistilleryError):
    """torch could not export the module, or the exported outputs do not match the names."""


class OnnxParityError(DistilleryError):
    """ONNX Runtime's outputs differ from torch's beyond the tolerance."""


class _TupleOutputs(nn.Module):
    """Adapts a module returning an object with `.logits` and `.features` (StudentOutput) to the
    tuple (logits, features[tap] for each tap) that export needs."""

    def __init__(self, module: nn.Module, tap_names: Sequence[str]) -> None:
        super().__init__()
        self.module = module
        self.tap_names = tuple(tap_names)

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        output = self.module(inputs)
        return (output.logits, *(output.features[name] for name in self.tap_names))


def _as_tuple(values: Any) -> tuple[torch.Tensor, ...]:
    if isinstance(values, torch.Tensor):
        return (values,)
    if hasattr(values, "logits") and hasattr(values, "features"):
        return (values.logits, *values.features.values())
    return tuple(values)


def export_onnx(
    module: nn.Module,
    example_input: torch.Tensor,
    path: str | Path,
    output_names: Sequence[str],
    input_name: str = "input",
) -> Path:
    """Export `module` (eval mode; forward(x) -> logits, or a tuple (logits, tap...), or an object
    with `.logits` and `.features` such as StudentOutput) to the single ONNX file `path`, atomically.

    example_input: (B, *input_shape) float32, B >= 2 recommended; the batch axis is exported as
    dynamic ("batch"), every other axis fixed. output_names: names of the outputs in order, e.g.
    ("logits", "embed", "conv"); for an object output, the taps are taken by these names.
    Returns `path`. Raises OnnxExportError with torch's message if export fails.
    """
    path = Path(path)
    module = module.eval()
    with torch.no_grad():
        sample = module(example_input)
    if hasattr(sample, "logits") and hasattr(sample, "features"):
        module = _TupleOutputs(module, output_names[1:]).eval()
        sample = module(example_input)
    produced = len(_as_tuple(sample))
    if produced != len(output_names):
        raise OnnxExportError(
            f"the module returns {produced} outputs but {len(output_names)} names were given "
            f"({list(output_names)}); give one name per output, logits first"
        )
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}.", suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings(), _QuietExporter():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (example_input,),
                tmp,
                dynamo=True,
                external_data=False,
                input_names=[input_name],
                output_names=list(output_names),
                dynamic_shapes=({0: batch},),
                verbose=False,
            )
        os.replace(tmp, path)
    except Exception as error:
        raise OnnxExportError(f"torch.onnx.export failed for {type(module).__name__}: {error}") from error
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


class _QuietExporter:
    """Silence the exporter's INFO progress lines and the torchvision notice (harmless, noisy)."""

    names = ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript", "onnx_ir", "torch._export")

    def __enter__(self):
        self.levels = {n: logging.getLogger(n).level for n in self.names}
        for name in self.names:
            logging.getLogger(name).setLevel(logging.ERROR)

    def __exit__(self, *exc):
        for name, level in self.levels.items():
            logging.getLogger(name).setLevel(level)


def check_onnx_parity(
    module: nn.Module,
    path: str | Path,
    inputs_list: Iterable[np.ndarray | torch.Tensor],
    rtol: float = 1e-4,
    atol: float = 1e-5,
    input_name: str = "input",
    raise_on_mismatch: bool = True,
) -> dict:
    """Run `module` (torch, eval, no grad) and the ONNX file (ORT CPU provider, fp32) on each
    batch of `inputs_list` ((B, *input_shape) float32; use several sizes, e.g. 1, 7, 64; or, for a
    model of several inputs, a mapping input name -> array, passed to `module` positionally in
    that order) and compare
    every output elementwise: |onnx - torch| <= atol + rtol * |torch|.

    Returns {"batch_sizes": [...], "passed": bool, "rtol", "atol",
             "outputs": {name: {"max_abs_diff": float, "max_rel_diff": float}}},
    output names read from the ONNX file in order. Raises OnnxParityError naming the worst output
    when a comparison fails (unless raise_on_mismatch is False).
    """
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    module = module.eval()
    stats = {name: {"max_abs_diff": 0.0, "max_rel_diff": 0.0} for name in names}
    passed, batch_sizes = True, []
    for batch in inputs_list:
        feeds = _feeds(batch, input_name)
        tensors = [torch.as_tensor(value) for value in feeds.values()]
        batch_sizes.append(int(tensors[0].shape[0]))
        with torch.no_grad():
            expected = [t.detach().float().numpy() for t in _as_tuple(_torch_outputs(module, tensors, names))]
        actual = session.run(names, feeds)
        for name, want, got in zip(names, expected, actual):
            if want.shape != got.shape:
                raise OnnxParityError(
                    f"{path}: output {name!r} has shape {got.shape} in ONNX Runtime but "
                    f"{want.shape} in torch; re-export the model"
                )
            abs_diff = np.abs(got.astype(np.float64) - want)
            rel_diff = abs_diff / np.maximum(np.abs(want), np.finfo(np.float32).tiny)
            stats[name]["max_abs_diff"] = max(stats[name]["max_abs_diff"], float(abs_diff.max(initial=0.0)))
            stats[name]["max_rel_diff"] = max(stats[name]["max_rel_diff"], float(rel_diff.max(initial=0.0)))
            passed &= bool(np.all(abs_diff <= atol + rtol * np.abs(want)))
    report = {"batch_sizes": batch_sizes, "passed": passed, "rtol": rtol, "atol": atol, "outputs": stats}
    if not passed and raise_on_mismatch:
        worst = max(stats, key=lambda n: stats[n]["max_abs_diff"])
        raise OnnxParityError(
            f"{path}: ONNX Runtime differs from torch beyond rtol={rtol}, atol={atol}: output {worst!r} "
            f"max abs diff {stats[worst]['max_abs_diff']:.3g}; check for train-mode layers "
            f"(call .eval()), non-deterministic ops, or export with a newer opset"
        )
    return report


def _feeds(batch: Any, input_name: str) -> dict[str, np.ndarray]:
    """One batch as ONNX Runtime feeds: an array (float32) under `input_name`, or a mapping of every
    input name to its array (dtypes kept: int64 token ids beside float masks), in the module's order."""
    if isinstance(batch, Mapping):
        return {name: np.ascontiguousarray(value) for name, value in batch.items()}
    return {input_name: np.ascontiguousarray(batch, dtype=np.float32)}


def _torch_outputs(module: nn.Module, tensors: Sequence[torch.Tensor], names: Sequence[str]):
    output = module(*tensors)
    if hasattr(output, "logits") and hasattr(output, "features"):
        return (output.logits, *(output.features[name] for name in names[1:]))
    return output
