"""Export any torch module to a single-file ONNX model with a dynamic batch axis, and check it
against torch with ONNX Runtime. Used for the built-in teacher and for every student's export.

The exported model has one input (`input_name`, (B, *shape) float32, B dynamic) and the outputs
`output_names` in the order the module returns them: `logits` first, then the feature taps, so the
file can be the teacher of the next cache (chains, docs/pipeline.md). Recipe (docs/data_and_teacher.md):
`torch.onnx.export(dynamo=True, dynamic_shapes=..., external_data=False)`; parity gate fp32 on the
ORT CPU provider, on real input rows, each output within atol + rtol of its own largest magnitude
(PARITY_RULE).
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
    return write_onnx(module, (example_input,), path, [input_name], output_names, ({0: batch},))


def write_onnx(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: str | Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_shapes: tuple[dict[int, Any], ...],
) -> Path:
    """`torch.onnx.export(module, args, dynamo=True)` into one file (no external data) written beside
    `path` and renamed onto it, so a failed or killed export leaves any earlier file as it was.
    dynamic_shapes: per input, axis -> torch.export.Dim. Returns `path`; OnnxExportError with
    torch's message when the export fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}.", suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings(), _QuietExporter():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                args,
                tmp,
                dynamo=True,
                external_data=False,
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_shapes=dynamic_shapes,
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


PARITY_RULE = "max|onnx - torch| <= atol + rtol * max|torch|, per output over every batch"
"""The parity gate. Float32 rounding in a layer scales with the magnitude of the values it sums, so
an element near zero of a large-valued output carries an error of the size of that output's large
elements; an elementwise rtol fails there on another CPU, and an absolute atol fails on any
unnormalised tap. Scaling by the output's largest magnitude makes the gate unit-free (a tap in
thousands gets the same relative budget as logits), and taking the max (not an L2 mean) still
catches a mistake confined to a few elements. docs/evaluation.md."""


def parity_batches(rows: np.ndarray, batch_sizes: Sequence[int], seed: int = 0) -> list[np.ndarray]:
    """One float32 batch per size, (b, *row_shape), of rows of `rows` (N, *row_shape) drawn by a
    generator seeded with `seed`: distinct rows while the batch fits in N, with replacement beyond.
    Real inputs give the activations a shipped model sees (the ranges, the zeros of ReLU), which
    standard-normal noise does not."""
    rows = rows if hasattr(rows, "shape") else np.asarray(rows)  # a view of rows on disk reads the drawn ones
    if len(rows) == 0:
        raise OnnxParityError("no input rows to check ONNX Runtime against torch on; give at least one")
    return [
        np.ascontiguousarray(rows[drawn], np.float32) for drawn in parity_draws(len(rows), batch_sizes, seed)
    ]


def parity_draws(count: int, batch_sizes: Sequence[int], seed: int = 0) -> list[np.ndarray]:
    """The positions ((b,) int64, into `count` >= 1 rows) of one parity batch per size, drawn by a
    generator seeded with `seed`: distinct while the batch fits in `count`, with replacement beyond.
    Every parity check draws its rows here, so the same seed picks the same rows."""
    rng = np.random.default_rng(seed)
    return [rng.choice(count, size=size, replace=size > count) for size in batch_sizes]


def compare_outputs(
    expected: Sequence[np.ndarray], actual: Sequence[np.ndarray], rtol: float, atol: float
) -> dict[str, float | bool | None]:
    """One output's batches, torch (`expected`) against ONNX Runtime (`actual`), under PARITY_RULE.

    Returns {"scale": max|torch|, "max_abs_diff": max|onnx - torch|, "tolerance": atol + rtol *
    scale, "relative_error": max_abs_diff / scale (None when scale is 0), "passed"}; float64 maths,
    NaN anywhere fails (the max of a NaN difference is NaN, and NaN <= tolerance is false).
    """
    scale, diff = 0.0, 0.0
    for want, got in zip(expected, actual):
        want = np.asarray(want, np.float64)
        scale = max(scale, float(np.abs(want).max(initial=0.0)))
        diff = max(diff, float(np.abs(np.asarray(got, np.float64) - want).max(initial=0.0)), key=_nan_first)
    tolerance = atol + rtol * scale
    return {
        "scale": scale,
        "max_abs_diff": diff,
        "tolerance": tolerance,
        "relative_error": diff / scale if scale > 0 else None,
        "passed": bool(diff <= tolerance),
    }


def worst_output(report: dict) -> tuple[str, dict]:
    """(name, stats) of the output of a parity report closest to (or furthest past) its tolerance."""
    return max(
        report["outputs"].items(), key=lambda item: _nan_first(item[1]["max_abs_diff"] / item[1]["tolerance"])
    )


def _nan_first(value: float) -> float:
    return float("inf") if value != value else value


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
    batch of `inputs_list` ((B, *input_shape) float32: real rows from `parity_batches`, several
    sizes, e.g. 1, 7, 64; or, for a model of several inputs, a mapping input name -> array, passed
    to `module` positionally in that order) and compare each output under PARITY_RULE
    (`compare_outputs`).

    Returns {"rule", "batch_sizes": [...], "passed": bool, "rtol", "atol", "outputs": {name:
    {"scale", "max_abs_diff", "tolerance", "relative_error", "passed"}}}, output names read from the
    ONNX file in order. Raises OnnxParityError naming the worst output (largest diff / tolerance)
    when a comparison fails (unless raise_on_mismatch is False).
    """
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    module = module.eval()
    expected: dict[str, list[np.ndarray]] = {name: [] for name in names}
    actual: dict[str, list[np.ndarray]] = {name: [] for name in names}
    batch_sizes = []
    for batch in inputs_list:
        feeds = _feeds(batch, input_name)
        tensors = [torch.as_tensor(value) for value in feeds.values()]
        batch_sizes.append(int(tensors[0].shape[0]))
        with torch.no_grad():
            want = [t.detach().float().numpy() for t in _as_tuple(_torch_outputs(module, tensors, names))]
        got = session.run(names, feeds)
        for name, torch_value, onnx_value in zip(names, want, got):
            if torch_value.shape != onnx_value.shape:
                raise OnnxParityError(
                    f"{path}: output {name!r} has shape {list(onnx_value.shape)} in ONNX Runtime but "
                    f"{list(torch_value.shape)} in torch; re-export the model"
                )
            expected[name].append(torch_value)
            actual[name].append(onnx_value)
    stats = {name: compare_outputs(expected[name], actual[name], rtol, atol) for name in names}
    passed = all(s["passed"] for s in stats.values())
    report = {
        "rule": PARITY_RULE,
        "batch_sizes": batch_sizes,
        "passed": passed,
        "rtol": rtol,
        "atol": atol,
        "outputs": stats,
    }
    if not passed and raise_on_mismatch:
        name, worst = worst_output(report)
        raise OnnxParityError(
            f"{path}: ONNX Runtime differs from torch on output {name!r}: max |onnx - torch| "
            f"{worst['max_abs_diff']:.3g} > tolerance {worst['tolerance']:.3g} (atol {atol:g} + "
            f"rtol {rtol:g} x max |torch| {worst['scale']:.3g}); look for a layer left in train mode "
            "(dropout, batch norm: call .eval() before export) or an op exported wrongly"
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
