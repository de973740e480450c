"""The teacher as an ONNX Runtime session: validated on open, on the best provider that really works.

`open_teacher` checks the file before ONNX Runtime sees it (it exists, parses, has the named input
with a dynamic batch axis and float32 elements, has the named outputs) so each mistake gets its own
message, then picks the execution provider. `onnxruntime-gpu` lists the CUDA provider whether or
not CUDA can load and silently falls back to CPU while printing errors (onnxruntime#23372;
docs/data_and_teacher.md, "Where it runs"), so the provider really in use is read back from the
session, logged in one line, and ONNX Runtime's own messages are silenced while probing.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from pipeline.errors import DistilleryError
from pipeline.teacher.external_data import external_data_files, external_data_locations

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
CUDA_OPTIONS = {"cudnn_conv_algo_search": "HEURISTIC", "use_tf32": 0}
"""HEURISTIC: EXHAUSTIVE re-benchmarks every new batch shape; use_tf32 0: fp32 results comparable
with the CPU (docs/data_and_teacher.md, "Where it runs")."""
PROVIDERS = ("auto", "cpu", "cuda")
_ORT_DEFAULT_SEVERITY = 2  # warnings and above: ONNX Runtime's own default
_QUIET_RUN = ort.RunOptions()
_QUIET_RUN.log_severity_level = 4  # a failing run raises with the same text; ORT's log line would repeat it


class TeacherModelError(DistilleryError):
    """The teacher ONNX file is missing, unreadable, or lacks the named inputs/outputs."""


class TeacherInputError(TeacherModelError):
    """The teacher's input does not fit the data (dtype, rank, sizes) or has a fixed batch size."""


class TeacherProviderError(DistilleryError):
    """The requested execution provider (e.g. cuda) cannot run here."""


def _hash_file(digest: Any, path: Path) -> None:
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)


def teacher_sha256(path: str | Path) -> str:
    """sha256 hex of the teacher (what the cache records and compares): the ONNX file's bytes, then,
    for a model with external weight data, each data file's location and bytes (so new weights
    under an unchanged .onnx are a new teacher). A single-file model hashes as its bytes alone."""
    path = Path(path)
    digest = hashlib.sha256()
    _hash_file(digest, path)
    try:
        locations = external_data_locations(onnx.load(str(path), load_external_data=False))
    except Exception:  # not a readable ONNX file: its bytes are all there is to hash
        locations = []
    for location in locations:
        digest.update(f"\0{location}\0".encode())
        _hash_file(digest, path.parent / location)
    return digest.hexdigest()


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str | None]:
    """Shape of a graph input/output: ints for fixed dims, names for symbolic ones, None unknown."""
    dims = []
    for dim in value_info.type.tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(int(dim.dim_value))
        elif dim.HasField("dim_param"):
            dims.append(dim.dim_param)
        else:
            dims.append(None)
    return dims


def _load_graph(path: Path) -> onnx.ModelProto:
    if not path.exists():
        raise TeacherModelError(
            f"{path}: no such teacher ONNX file; set teacher.onnx in params.yaml to your exported "
            f"model, or leave it null and run `dvc repro teacher` to build the built-in teacher"
        )
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf DecodeError and friends
        raise TeacherModelError(
            f"{path}: not a readable ONNX model ({type(error).__name__}: {error}); re-export it, "
            f"e.g. torch.onnx.export(model, (x,), path, dynamo=True, external_data=False)"
        ) from None
    external_data_files(model, path)  # a missing or escaping weights file: its own message, before ORT
    return model


def _check_names(
    model: onnx.ModelProto, path: Path, input_name: str, logits_name: str, tap_names: Sequence[str] | None
) -> tuple[onnx.ValueInfoProto, tuple[str, ...]]:
    initializers = {init.name for init in model.graph.initializer}
    inputs = {i.name: i for i in model.graph.input if i.name not in initializers}
    outputs = [o.name for o in model.graph.output]
    if input_name not in inputs:
        raise TeacherModelError(
            f"{path}: no input named {input_name!r}; the model has inputs {sorted(inputs)}; set "
            f"teacher.input_name, or re-export with input_names=[{input_name!r}]"
        )
    if len(inputs) != 1:
        raise TeacherModelError(
            f"{path}: the teacher must take one input, it takes {sorted(inputs)}; export a wrapper "
            f"taking only {input_name!r}"
        )
    taps = tuple(o for o in outputs if o != logits_name) if tap_names is None else tuple(tap_names)
    missing = [name for name in (logits_name, *taps) if name not in outputs]
    if missing:
        raise TeacherModelError(
            f"{path}: no output named {', '.join(map(repr, missing))}; the model has outputs "
            f"{outputs}; set teacher.logits_name / teacher.tap_names to some of those, or re-export "
            f"with output_names=[{logits_name!r}, ...]"
        )
    value = inputs[input_name]
    elem_type = value.type.tensor_type.elem_type
    if elem_type != onnx.TensorProto.FLOAT:
        raise TeacherInputError(
            f"{path}: input {input_name!r} is {onnx.TensorProto.DataType.Name(elem_type)}, the "
            f"teacher must take float32; re-export from a float32 model (cast inside if needed)"
        )
    dims = _dims(value)
    if not dims:
        raise TeacherInputError(f"{path}: input {input_name!r} has no batch axis (shape {dims})")
    if isinstance(dims[0], int):
        raise TeacherInputError(
            f"{path}: input {input_name!r} has a fixed batch size of {dims[0]} (shape {dims}); "
            f"re-export with a dynamic batch axis: torch.onnx.export(..., dynamo=True, "
            f"dynamic_shapes=({{0: torch.export.Dim('batch')}},)) "
            f"or dynamic_axes={{{input_name!r}: {{0: 'batch'}}}}"
        )
    return value, taps


def _cuda_plausible() -> tuple[bool, str]:
    """Whether the CUDA provider could load here, and if not, why (cheap checks, no session)."""
    if CUDA not in ort.get_available_providers():
        return False, "this onnxruntime build has no CUDA provider (install onnxruntime-gpu)"
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False, "CUDA_VISIBLE_DEVICES hides every GPU"
    if not (Path("/dev/nvidiactl").exists() or Path("/dev/dxg").exists()):
        return False, "no NVIDIA GPU device on this machine"
    return True, ""


def _session_options(intra_op_threads: int | None, quiet: bool) -> ort.SessionOptions:
    options = ort.SessionOptions()
    if intra_op_threads:
        options.intra_op_num_threads = int(intra_op_threads)
    if quiet:
        options.log_severity_level = 3
    return options


def _create(path: Path, providers: list, intra_op_threads: int | None, quiet: bool) -> ort.InferenceSession:
    """An ORT session; `quiet` silences ORT's own provider-loading messages (default logger at 4)."""
    if quiet:
        ort.set_default_logger_severity(4)
    try:
        return ort.InferenceSession(str(path), _session_options(intra_op_threads, quiet), providers=providers)
    except Exception as error:  # ORT raises Fail/InvalidGraph/InvalidArgument/NotImplemented
        raise TeacherModelError(
            f"{path}: ONNX Runtime cannot load the model ({type(error).__name__}: {error}); "
            f"re-export it with an opset and IR version this onnxruntime {ort.__version__} supports "
            f"(torch.onnx.export with dynamo=True writes IR 10)"
        ) from None
    finally:
        if quiet:
            ort.set_default_logger_severity(_ORT_DEFAULT_SEVERITY)


def _open_session(path: Path, provider: str, intra_op_threads: int | None) -> ort.InferenceSession:
    if provider not in PROVIDERS:
        raise TeacherProviderError(f"provider {provider!r} is not known; valid: {', '.join(PROVIDERS)}")
    if provider == "cpu":
        session = _create(path, [CPU], intra_op_threads, quiet=False)
        log.info("teacher runs on %s (requested)", CPU)
        return session
    plausible, reason = _cuda_plausible()
    if provider == "cuda" and not plausible:
        raise TeacherProviderError(
            f"teacher.provider is cuda but {reason}; run on a machine with an NVIDIA GPU or set "
            f"teacher.provider: auto or cpu"
        )
    if not plausible:
        session = _create(path, [CPU], intra_op_threads, quiet=False)
        log.info("teacher runs on %s (CUDA provider unavailable: %s)", CPU, reason)
        return session
    session = _create(path, [(CUDA, dict(CUDA_OPTIONS)), CPU], intra_op_threads, quiet=True)
    used = session.get_providers()[0]
    if used == CUDA:
        log.info("teacher runs on %s", CUDA)
        return session
    reason = reason or "the CUDA provider failed to load (it needs the CUDA 13 and cuDNN 9 libraries)"
    if provider == "cuda":
        raise TeacherProviderError(
            f"teacher.provider is cuda but {reason}; install the CUDA libraries "
            f"(pip install 'onnxruntime-gpu[cuda,cudnn]') or set teacher.provider: auto or cpu"
        )
    log.info("teacher runs on %s (CUDA provider unavailable: %s)", used, reason)
    return session


@dataclass
class TeacherSession:
    """One validated ONNX Runtime session of the teacher.

    provider: the provider really in use, "CUDAExecutionProvider" or "CPUExecutionProvider".
    input_name: the graph input, (B, *input_shape) float32 with a dynamic batch axis B.
    logits_name: the output holding raw logits (B, C).
    tap_names: the feature outputs cached beside the logits, e.g. ("embed", "conv").
    input_dims: the declared input shape (ints, symbolic names, or None), batch axis first.
    output_dims: output name -> declared shape, same convention.
    """

    path: Path
    provider: str
    input_name: str
    logits_name: str
    tap_names: tuple[str, ...]
    input_dims: list[int | str | None]
    output_dims: dict[str, list[int | str | None]]
    _session: ort.InferenceSession = field(repr=False)

    @property
    def output_names(self) -> tuple[str, ...]:
        """(logits_name, *tap_names): the outputs `run` returns, in that order."""
        return (self.logits_name, *self.tap_names)

    def check_input(self, input_shape: Sequence[int]) -> None:
        """Raise TeacherInputError unless per-row inputs of `input_shape` (e.g. (1, 8, 8)) fit the
        model's input (same rank; fixed sizes equal, symbolic ones accept anything)."""
        declared = self.input_dims[1:]
        wrong = len(declared) != len(input_shape) or any(
            isinstance(d, int) and d != s for d, s in zip(declared, input_shape)
        )
        if wrong:
            raise TeacherInputError(
                f"{self.path}: input {self.input_name!r} has shape {self.input_dims} (batch first) but "
                f"the prepared data has rows of shape {list(input_shape)}; export the teacher for "
                f"inputs (batch, {', '.join(map(str, input_shape))}) or reshape the data in prepare "
                f"(prepare.dataset.input_shape)"
            )

    def every_output_shape(self, inputs: np.ndarray) -> dict[str, tuple[int, ...]]:
        """Per-row shape of every output of the model (not only logits_name and tap_names), in the
        model's order, from one run on `inputs` (B, *input_shape) float32 (a row or two)."""
        names = [output.name for output in self._session.get_outputs()]
        array = np.ascontiguousarray(inputs, dtype=np.float32)
        values = self._session.run(names, {self.input_name: array})
        return {name: tuple(int(d) for d in np.shape(value)[1:]) for name, value in zip(names, values)}

    def run(self, inputs: Any) -> dict[str, np.ndarray]:
        """(B, *input_shape) float32 inputs (numpy, or a torch tensor on CPU or CUDA) ->
        {logits_name: (B, C), tap: (B, ...)} as float32 numpy arrays on the CPU."""
        if self.provider == CUDA:
            return self._run_bound(inputs)
        if type(inputs).__module__.startswith("torch"):
            inputs = inputs.detach().cpu().numpy()
        array = np.ascontiguousarray(inputs, dtype=np.float32)
        values = self._session.run(list(self.output_names), {self.input_name: array}, _QUIET_RUN)
        return dict(zip(self.output_names, values))

    def _run_bound(self, inputs: Any, device_type: str = "cuda") -> dict[str, np.ndarray]:
        """CUDA path: IO binding; the input goes to the GPU once (or is read in place from a CUDA
        torch tensor), outputs come back to CPU memory (docs/data_and_teacher.md). `device_type` "cpu"
        exercises the same binding calls on a machine without a GPU (tests)."""
        binding = self._session.io_binding()
        keep_alive = None
        if type(inputs).__module__.startswith("torch") and inputs.is_cuda:
            keep_alive = inputs.detach().float().contiguous()
            import torch  # only reached with a torch tensor in hand

            torch.cuda.current_stream(keep_alive.device).synchronize()  # ORT runs on its own stream
            binding.bind_input(
                self.input_name,
                device_type="cuda",
                device_id=keep_alive.device.index or 0,
                element_type=np.float32,
                shape=tuple(keep_alive.shape),
                buffer_ptr=keep_alive.data_ptr(),
            )
        else:
            if type(inputs).__module__.startswith("torch"):
                inputs = inputs.detach().cpu().numpy()
            keep_alive = ort.OrtValue.ortvalue_from_numpy(
                np.ascontiguousarray(inputs, dtype=np.float32), device_type, 0
            )
            binding.bind_ortvalue_input(self.input_name, keep_alive)
        for name in self.output_names:
            binding.bind_output(name, "cpu")
        binding.synchronize_inputs()
        self._session.run_with_iobinding(binding, _QUIET_RUN)
        values = binding.copy_outputs_to_cpu()
        del keep_alive
        return {name: np.asarray(value, dtype=np.float32) for name, value in zip(self.output_names, values)}


def open_teacher(
    path,
    input_name: str = "input",
    logits_name: str = "logits",
    tap_names: Sequence[str] | None = None,
    provider: str = "auto",
    intra_op_threads: int | None = None,
) -> TeacherSession:
    """Validate the ONNX file at `path` and open it on `provider` ("auto": CUDA when it really
    loads, else CPU, with one log line saying which; "cpu"/"cuda": that one or an error).
    tap_names None = every output except `logits_name`. Raises TeacherModelError/TeacherInputError
    naming the problem and the fix, or TeacherProviderError."""
    path = Path(path)
    model = _load_graph(path)
    input_value, taps = _check_names(model, path, input_name, logits_name, tap_names)
    output_dims = {o.name: _dims(o) for o in model.graph.output}
    del model
    session = _open_session(path, provider, intra_op_threads)
    return TeacherSession(
        path=path,
        provider=session.get_providers()[0],
        input_name=input_name,
        logits_name=logits_name,
        tap_names=taps,
        input_dims=_dims(input_value),
        output_dims={name: output_dims[name] for name in (logits_name, *taps)},
        _session=session,
    )


def onnx_parameter_count(path: str | Path) -> int:
    """Number of values in the model's initializers (its weights), read without external data."""
    model = onnx.load(str(path), load_external_data=False)
    return int(sum(int(np.prod(init.dims)) if len(init.dims) else 1 for init in model.graph.initializer))
