"""Export a CausalLM to ONNX with int64 token inputs, and check ONNX Runtime against torch.

The file has inputs `input_ids` and `attention_mask` ((B, L) int64, both axes dynamic: "batch",
and "sequence" up to the model's context) and outputs `logits` (B, L, V) float32 and, with
`with_hidden`, `hidden` (B, L, D) float32 (the final hidden states: a feature tap). Written here
because pipeline/teacher/export.py's export_onnx takes one float32 input with only the batch axis
dynamic; the `distillery export-teacher` path (pipeline/teacher/from_torch.py) may replace this.
Recipe as there: `torch.onnx.export(dynamo=True, dynamic_shapes=..., external_data=False)`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from pipeline.errors import DistilleryError
from pipeline.teacher.export import OnnxExportError, write_onnx
from pipeline.text.lm import CausalLM

INPUT_NAMES = ("input_ids", "attention_mask")


class LMParityError(DistilleryError):
    """ONNX Runtime's outputs differ from torch's beyond the scaled tolerance."""


class _LogitsAndHidden(nn.Module):
    """(input_ids, attention_mask) -> (logits, hidden): the export's outputs as a tuple."""

    def __init__(self, model: CausalLM) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        hidden = self.model.hidden_states(input_ids, attention_mask)
        return self.model.head(hidden), hidden


class _Logits(_LogitsAndHidden):
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        return self.model(input_ids, attention_mask)


def export_lm_onnx(model: CausalLM, path: str | Path, with_hidden: bool = True) -> Path:
    """Write `model` (put in eval mode) as the single ONNX file `path`, atomically.

    Outputs `logits` (and `hidden` when with_hidden). Raises OnnxExportError with torch's message.
    """
    path = Path(path)
    model = model.eval()
    wrapper = (_LogitsAndHidden if with_hidden else _Logits)(model).eval()
    output_names = ["logits", "hidden"] if with_hidden else ["logits"]
    context = model.config.context
    length = min(16, context)  # an example longer than 1 on both axes keeps them symbolic
    example = (
        torch.zeros((2, length), dtype=torch.int64),
        torch.ones((2, length), dtype=torch.int64),
    )
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    sequence = torch.export.Dim("sequence", min=1, max=context)
    dynamic = ({0: batch, 1: sequence}, {0: batch, 1: sequence})
    try:
        return write_onnx(wrapper, example, path, INPUT_NAMES, output_names, dynamic)
    except OnnxExportError as error:  # name the model, not its wrapper
        raise OnnxExportError(str(error).replace(type(wrapper).__name__, type(model).__name__)) from error


def check_lm_parity(
    model: CausalLM,
    path: str | Path,
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    rtol: float = 1e-4,
    raise_on_mismatch: bool = True,
) -> dict:
    """Run `model` (torch, eval) and the ONNX file (ORT CPU, fp32) on each (input_ids,
    attention_mask) batch ((B, L) int64; use several B and L) and compare each output at the real
    positions: max |onnx - torch| <= rtol * max |torch| (float32 noise scales with the output).

    Returns {"passed", "rtol", "shapes": [[B, L], ...], "outputs": {name: {"max_abs_diff",
    "scale", "tolerance"}}} (the worst batch per output). LMParityError names the worst output.
    """
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    wrapper = (_LogitsAndHidden if "hidden" in names else _Logits)(model.eval()).eval()
    stats = {name: {"max_abs_diff": 0.0, "scale": 0.0, "tolerance": 0.0} for name in names}
    passed, shapes = True, []
    for input_ids, attention_mask in batches:
        ids = np.ascontiguousarray(input_ids, dtype=np.int64)
        mask = np.ascontiguousarray(attention_mask, dtype=np.int64)
        shapes.append(list(ids.shape))
        with torch.no_grad():
            expected = wrapper(torch.as_tensor(ids), torch.as_tensor(mask))
        expected = [expected] if isinstance(expected, torch.Tensor) else list(expected)
        actual = session.run(names, {"input_ids": ids, "attention_mask": mask})
        real = mask.astype(bool)
        for name, want, got in zip(names, expected, actual):
            want = want.numpy()
            if want.shape != got.shape:
                raise LMParityError(
                    f"{path}: output {name!r} is {got.shape} in ONNX Runtime, {want.shape} in torch"
                )
            diff = float(np.abs(got[real].astype(np.float64) - want[real]).max(initial=0.0))
            scale = float(np.abs(want[real]).max(initial=0.0))
            tolerance = rtol * max(scale, np.finfo(np.float32).tiny)
            passed &= diff <= tolerance
            if diff / tolerance >= stats[name]["max_abs_diff"] / max(stats[name]["tolerance"], 1e-300):
                stats[name] = {"max_abs_diff": diff, "scale": scale, "tolerance": tolerance}
    report = {"passed": bool(passed), "rtol": rtol, "shapes": shapes, "outputs": stats}
    if not passed and raise_on_mismatch:
        worst = max(stats, key=lambda n: stats[n]["max_abs_diff"] / max(stats[n]["tolerance"], 1e-300))
        raise LMParityError(
            f"{path}: ONNX Runtime differs from torch: output {worst!r} max abs diff "
            f"{stats[worst]['max_abs_diff']:.3g} > {rtol} x max |torch| {stats[worst]['scale']:.3g}; "
            f"re-export the model in eval mode"
        )
    return report
