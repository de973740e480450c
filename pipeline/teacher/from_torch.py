"""Any torch module as the teacher: exported to ONNX with its taps as named outputs (`distillery
export-teacher`), checked against torch, ready for `teacher.onnx` in params.yaml.

The module is made the way students are (pipeline/students/external.py: a `pkg.module:attr`
factory, a timm name or a Hugging Face class) and its taps are read by module path with forward
hooks (pipeline/students/taps.py). The ONNX graph has one input per `InputSpec` (name, dtype,
per-row shape; the batch axis is always dynamic, and an axis given a name, such as `seq`, is
dynamic too and shared by every input that names it), and the outputs `logits` then each tap.
Weights of 1 GiB or more (protobuf caps a file at 2 GiB), or any size with `external_data:
always`, go to `<name>.data` beside the .onnx. The file is written in a scratch directory beside
the target, checked with `check_onnx_parity` (on real prepared rows when given), and only then
moved into place, data file first.
"""

from __future__ import annotations

import inspect
import os
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from onnx.external_data_helper import set_external_data
from torch import nn

from pipeline.data.prepared import PreparedData
from pipeline.errors import DistilleryError
from pipeline.names import check_name
from pipeline.students.external import make_module
from pipeline.students.taps import TappedModel, measure
from pipeline.students.zoo import brief
from pipeline.teacher.export import (
    MAX_BATCH,
    OnnxExportError,
    _QuietExporter,
    check_onnx_parity,
    parity_batches,
)
from pipeline.teacher.export_options import InputSpec, TeacherExportError, default_input

WEIGHT_TYPES = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.BFLOAT16,
    onnx.TensorProto.DOUBLE,
}
"""Initializer types written to the external data file (the weights)."""
EXTERNAL_DATA_FROM = 1 << 30
"""Weight bytes from which `external_data: auto` writes a data file: well under protobuf's 2 GiB."""
DYNAMIC_SIZES = (8, 5, 12)
"""Sizes given to named dynamic axes: the first traces the export, each parity batch takes the next."""
EXAMPLE_BATCH = 3
SCRATCH_PREFIX = ".tmp-export-teacher-"


class _TeacherGraph(nn.Module):
    """forward(*inputs, in InputSpec order) -> (logits, *taps): what torch.onnx.export traces and
    check_onnx_parity runs. Inputs go by keyword when the model's forward has every input's name
    (a Hugging Face model: input_ids, attention_mask), else by position."""

    def __init__(self, tapped: TappedModel, input_names: Sequence[str]) -> None:
        super().__init__()
        self.tapped = tapped
        self.input_names = tuple(input_names)
        try:
            parameters = inspect.signature(tapped.model.forward).parameters
        except (TypeError, ValueError):
            parameters = {}
        self.by_keyword = tapped.input_keyword is None and all(n in parameters for n in self.input_names)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """inputs in InputSpec order -> (logits (B, C), tap (B, ...) for each tap)."""
        if self.by_keyword:
            output = self.tapped(**dict(zip(self.input_names, inputs)))
        else:
            output = self.tapped(*inputs)
        return (output.logits, *output.features.values())


def _remove_stale_scratch(directory: Path) -> None:
    """Remove the scratch directories of killed exports (their process is gone) beside the target."""
    for scratch in directory.glob(f"{SCRATCH_PREFIX}*"):
        pid = scratch.name[len(SCRATCH_PREFIX) :]
        try:
            os.kill(int(pid), 0)
            alive = int(pid) != os.getpid()
        except (ValueError, ProcessLookupError):
            alive = False
        except PermissionError:  # another user's live process
            alive = True
        if not alive:
            shutil.rmtree(scratch, ignore_errors=True)


def weight_bytes(module: nn.Module) -> int:
    """Bytes of every parameter and buffer of `module` (what the ONNX initializers will hold)."""
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def _dynamic_shapes(specs: Sequence[InputSpec]) -> tuple:
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    named: dict[str, Any] = {}
    per_input = tuple(
        {
            0: batch,
            **{
                axis: named.setdefault(d, torch.export.Dim(d))
                for axis, d in enumerate(s.shape, 1)
                if isinstance(d, str)
            },
        }
        for s in specs
    )
    return (per_input,)  # forward(*inputs): one entry, the tuple of the inputs' shapes


def _export(
    graph: _TeacherGraph, specs: Sequence[InputSpec], example, output_names, path: Path, external: bool
):
    """torch.onnx.export into `path`; with `external`, every initializer moved to `<name>.data`."""
    raw = path.parent / "raw" / path.name
    raw.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings(), _QuietExporter():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph,
                tuple(example),
                str(raw),
                dynamo=True,
                external_data=external,
                input_names=[s.name for s in specs],
                output_names=list(output_names),
                dynamic_shapes=_dynamic_shapes(specs),
                verbose=False,
            )
    except Exception as error:
        raise OnnxExportError(
            f"torch.onnx.export failed for {type(graph.tapped.model).__name__} ({brief(error, 600)})"
        ) from error
    if not external:
        os.replace(raw, path)
        return
    # torch leaves small tensors inline; re-save with every floating-point initializer (the weights) in
    # one data file of a known name. Integer constants (axes, shapes) stay inline: ONNX Runtime's
    # shape inference reads them before it loads external data.
    model = onnx.load(str(raw))
    for tensor in model.graph.initializer:
        if tensor.data_type in WEIGHT_TYPES:
            if not tensor.HasField("raw_data"):  # values held in typed fields: move them to raw bytes
                tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name))
            set_external_data(tensor, location=f"{path.name}.data")
    onnx.save(model, str(path))


def _parity_batches(
    specs: Sequence[InputSpec], batch_sizes: Sequence[int], prepared: PreparedData | None, seed: int
) -> tuple[list[Any], str]:
    """(batches, "prepared"): real prepared rows, for a single float32 input that fits them; else
    (batches, "seeded"): seeded examples per spec, each batch with the next of DYNAMIC_SIZES on the
    dynamic axes (so a size the export fixed by mistake shows up here)."""
    fits = prepared is not None and len(specs) == 1 and specs[0].dtype == "float32"
    if fits and specs[0].shape == tuple(prepared.input_shape):
        return [
            batch.astype(np.float32) for batch in parity_batches(prepared.inputs, list(batch_sizes), seed)
        ], "prepared"
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for index, size in enumerate(batch_sizes):
        dynamic = DYNAMIC_SIZES[(index + 1) % len(DYNAMIC_SIZES)]
        batches.append({s.name: s.example(size, dynamic, generator).numpy() for s in specs})
    return batches if len(specs) > 1 else [b[specs[0].name] for b in batches], "seeded"


def export_teacher(
    arch: Any,
    path: str | Path,
    inputs: Sequence[InputSpec] | None = None,
    prepared: PreparedData | None = None,
    logits_name: str = "logits",
    external_data: str = "auto",
    parity_batch_sizes: Sequence[int] = (1, 7, 64),
    rtol: float = 1e-4,
    atol: float = 1e-5,
    seed: int = 0,
) -> dict[str, Any]:
    """Export the module `arch` describes (a PythonArchParams, TimmArchParams or HFArchParams) with
    its taps to the ONNX file `path`, check it against torch, and return the report.

    inputs: the graph inputs (default: `input`, float32, the prepared rows' shape). prepared: real
    rows for the parity check, and the classes the logits must have. external_data: "auto" (weights
    of EXTERNAL_DATA_FROM bytes or more), "always" or "never". Returns {"file", "inputs",
    "output_names", "tap_shapes", "external_data": [file names], "weight_bytes", "parameters",
    "parity": check_onnx_parity's report + "rows" ("prepared" or "seeded")}.
    Raises TeacherExportError, OnnxExportError, OnnxParityError, or the students' build errors.
    """
    path = Path(path)
    if inputs is None:
        if prepared is None:
            raise TeacherExportError(
                "give the inputs (--input name:dtype:shape) or the prepared data (--prepared)"
            )
        inputs = [default_input(prepared)]
    if external_data not in ("auto", "always", "never"):
        raise TeacherExportError(f"external_data {external_data!r}: use auto, always or never")
    check_name(logits_name, "logits output")
    if logits_name in arch.taps:
        raise TeacherExportError(f"tap {logits_name!r} has the name of the logits output; rename the tap")
    zoo = arch.kind != "python"  # timm/hf teachers keep their own heads: never resized to the data
    model = make_module(
        arch,
        None if zoo or prepared is None else prepared.num_classes,
        None if zoo or prepared is None else tuple(prepared.input_shape),
    )
    tapped = TappedModel(model, arch.taps, arch.logits, arch.input)
    graph = _TeacherGraph(tapped, [s.name for s in inputs]).eval()
    generator = torch.Generator().manual_seed(seed)
    example = [s.example(EXAMPLE_BATCH, DYNAMIC_SIZES[0], generator) for s in inputs]
    if graph.by_keyword:
        classes = measure(tapped, (), EXAMPLE_BATCH, dict(zip(graph.input_names, example)))
    else:
        classes = measure(tapped, example, EXAMPLE_BATCH)
    if prepared is not None and classes != prepared.num_classes:
        raise TeacherExportError(
            f"the teacher gives {classes} logits per row but the prepared data has {prepared.num_classes} "
            "classes; export the teacher trained on these classes"
        )
    output_names = [logits_name, *arch.taps]
    external = external_data == "always" or (
        external_data == "auto" and weight_bytes(graph) >= EXTERNAL_DATA_FROM
    )
    _remove_stale_scratch(path.parent)
    scratch = path.parent / f"{SCRATCH_PREFIX}{os.getpid()}"
    try:
        staged = scratch / path.name
        _export(graph, inputs, example, output_names, staged, external)
        batches, rows = _parity_batches(inputs, parity_batch_sizes, prepared, seed)
        try:
            parity = check_onnx_parity(
                graph, staged, batches, rtol=rtol, atol=atol, input_name=inputs[0].name
            )
        except DistilleryError:
            raise
        except Exception as error:  # ONNX Runtime refuses the graph (an op or a type it lacks)
            raise OnnxExportError(
                f"ONNX Runtime cannot run the exported {type(model).__name__} ({brief(error)}); "
                "check the inputs' dtypes and shapes (--input), or simplify the module's forward"
            ) from error
        data_files = [f"{path.name}.data"] if external else []
        for name in data_files:
            os.replace(scratch / name, path.parent / name)
        os.replace(staged, path)
        if not external:  # a data file left by an earlier export of this name would be stale
            (path.parent / f"{path.name}.data").unlink(missing_ok=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {
        "file": path.name,
        "source": arch.model_dump(mode="json"),
        "inputs": [{"name": s.name, "dtype": s.dtype, "shape": ["batch", *s.shape]} for s in inputs],
        "output_names": output_names,
        "tap_shapes": {name: list(shape) for name, shape in tapped.tap_shapes.items()},
        "external_data": data_files,
        "weight_bytes": weight_bytes(graph),
        "parameters": sum(p.numel() for p in graph.parameters()),
        "parity": parity | {"rows": rows},
    }
