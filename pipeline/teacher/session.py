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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from pipeline.teacher.external_data import external_data_files, external_data_locations
from pipeline.teacher.inputs import (
    DEFAULT_FIELD,
    Feed,
    FieldSpec,
    InputSpec,
    TeacherInputError,
    TeacherModelError,
    check_fields,
    check_lengths,
    fields_of,
    make_feed,
)
from pipeline.teacher.providers import (  # noqa: F401 (re-exported: the session's provider names)
    _QUIET_RUN,
    CPU,
    CUDA,
    PROVIDERS,
    TeacherProviderError,
    _open_session,
)


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


def _input_spec(value: onnx.ValueInfoProto) -> InputSpec:
    elem_type = value.type.tensor_type.elem_type
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, TypeError, ValueError):
        dtype = np.dtype(object)
    return InputSpec(value.name, dtype, tuple(_dims(value)))


def _check_names(
    model: onnx.ModelProto,
    path: Path,
    input_fields: Mapping[str, str],
    logits_name: str | None,
    tap_names: Sequence[str] | None,
) -> tuple[dict[str, InputSpec], tuple[str, ...]]:
    """The specs of the mapped inputs (in the mapping's order) and the taps; TeacherModelError for an
    input the mapping misses or names wrongly, an output that is not there; TeacherInputError for a
    non-numeric input or one without a dynamic batch axis."""
    initializers = {init.name for init in model.graph.initializer}
    inputs = {i.name: i for i in model.graph.input if i.name not in initializers}
    outputs = [o.name for o in model.graph.output]
    unknown = [name for name in input_fields if name not in inputs]
    if unknown:
        raise TeacherModelError(
            f"{path}: no input named {', '.join(map(repr, unknown))}; the model has inputs {sorted(inputs)}; "
            f"set teacher.inputs (ONNX input -> prepared field), or re-export with input_names={unknown!r}"
        )
    unfed = [name for name in inputs if name not in input_fields]
    if unfed:
        raise TeacherModelError(
            f"{path}: the teacher takes inputs {sorted(inputs)} but teacher.inputs feeds only "
            f"{sorted(input_fields)}; map {', '.join(map(repr, unfed))} to prepared fields in teacher.inputs"
        )
    taps = tuple(o for o in outputs if o != logits_name) if tap_names is None else tuple(tap_names)
    wanted = (*([logits_name] if logits_name is not None else []), *taps)
    missing = [name for name in wanted if name not in outputs]
    if missing:
        raise TeacherModelError(
            f"{path}: no output named {', '.join(map(repr, missing))}; the model has outputs "
            f"{outputs}; set teacher.logits_name / teacher.tap_names to some of those, or re-export "
            f"with output_names=[{logits_name!r}, ...]"
        )
    specs = {name: _input_spec(inputs[name]) for name in input_fields}
    for name, spec in specs.items():
        if spec.dtype.kind not in "biuf":
            raise TeacherInputError(
                f"{path}: input {name!r} is "
                f"{onnx.TensorProto.DataType.Name(inputs[name].type.tensor_type.elem_type)}, not a number "
                "type; the teacher's inputs must be numeric tensors (token ids, masks, pixels, floats)"
            )
        dims = list(spec.dims)
        if not dims:
            raise TeacherInputError(f"{path}: input {name!r} has no batch axis (shape {dims})")
        if isinstance(dims[0], int):
            raise TeacherInputError(
                f"{path}: input {name!r} has a fixed batch size of {dims[0]} (shape {dims}); "
                f"re-export with a dynamic batch axis: torch.onnx.export(..., dynamo=True, "
                f"dynamic_shapes=({{0: torch.export.Dim('batch')}},)) "
                f"or dynamic_axes={{{name!r}: {{0: 'batch'}}}}"
            )
    return specs, taps


@dataclass
class TeacherSession:
    """One validated ONNX Runtime session of the teacher.

    provider: the provider really in use, "CUDAExecutionProvider" or "CPUExecutionProvider".
    input_fields: ONNX input -> the prepared field it is fed from (`teacher.inputs`).
    input_specs: ONNX input -> its dtype and declared dims (batch first, dynamic).
    logits_name: the output holding raw logits (B, C) or (B, L, V); None for a teacher without logits.
    tap_names: the feature outputs cached beside the logits, e.g. ("embed", "conv").
    output_dims: output name -> declared shape (ints, symbolic names, or None), batch axis first.
    max_length: the longest sequence a symbolic sequence axis takes (`teacher.max_length`), or None.
    per_token: the outputs declared per token (`teacher.per_token`); None: detected from the dims.
    """

    path: Path
    provider: str
    input_fields: dict[str, str]
    input_specs: dict[str, InputSpec]
    logits_name: str | None
    tap_names: tuple[str, ...]
    output_dims: dict[str, list[int | str | None]]
    _session: ort.InferenceSession = field(repr=False)
    max_length: int | None = None
    per_token: tuple[str, ...] | None = None

    @property
    def output_names(self) -> tuple[str, ...]:
        """(logits_name, *tap_names) (no logits_name when None): the outputs `run` returns, in order."""
        return (*([self.logits_name] if self.logits_name is not None else []), *self.tap_names)

    @property
    def input_name(self) -> str:
        """The first ONNX input (the only one of a single-input teacher)."""
        return next(iter(self.input_specs))

    @property
    def input_dims(self) -> list[int | str | None]:
        """Declared dims of the first input, batch first."""
        return list(self.input_specs[self.input_name].dims)

    def check_fields(self, fields: Any, shown_ids: Any = None) -> None:
        """TeacherInputError (one line naming the input, the field and both dtypes/shapes) unless
        every input can be fed from its field of `fields` (a row source, or field name -> dense
        (N, ...) array or ragged values + offsets), and no ragged row is longer than the input takes."""
        source = fields_of(fields)
        check_fields(str(self.path), self.input_specs, self.input_fields, source.specs())
        check_lengths(str(self.path), self.input_specs, self.input_fields, source, self.max_length, shown_ids)

    def check_input(self, input_shape: Sequence[int]) -> None:
        """The single-field form of `check_fields`: rows of `input_shape` float32 in field `input`."""
        fields = {DEFAULT_FIELD: FieldSpec(np.dtype(np.float32), tuple(int(d) for d in input_shape))}
        check_fields(str(self.path), self.input_specs, self.input_fields, fields)

    def feed(self, fields: Any, rows: Any) -> Feed:
        """The teacher's named inputs for prepared rows `rows` of `fields` (ragged fields padded)."""
        return make_feed(self.input_specs, self.input_fields, fields, rows)

    def _named(self, inputs: Any) -> dict[str, np.ndarray]:
        """ONNX input -> contiguous numpy array in its dtype; a bare array feeds the single input."""
        if not isinstance(inputs, Mapping):
            inputs = {self.input_name: inputs}
        named = {}
        for name, value in inputs.items():
            if type(value).__module__.startswith("torch"):
                value = value.detach().cpu().numpy()
            named[name] = np.ascontiguousarray(value, dtype=self.input_specs[name].dtype)
        return named

    def every_output_shape(self, inputs: Any) -> dict[str, tuple[int, ...]]:
        """Per-row shape of every output of the model (not only logits_name and tap_names), in the
        model's order, from one run on `inputs` (an array for the single input, or ONNX input ->
        (B, ...) array; a row or two)."""
        names = [output.name for output in self._session.get_outputs()]
        values = self._session.run(names, self._named(inputs))
        return {name: tuple(int(d) for d in np.shape(value)[1:]) for name, value in zip(names, values)}

    def run(self, inputs: Any) -> dict[str, np.ndarray]:
        """Named inputs (ONNX input -> (B, ...) numpy array or torch tensor; a bare array or tensor
        feeds a single-input teacher) -> {logits_name: (B, C), tap: (B, ...)} as float32 numpy
        arrays on the CPU. Inputs are cast to each input's dtype (int64 ids stay int64)."""
        if self.provider == CUDA:
            return self._run_bound(inputs)
        values = self._session.run(list(self.output_names), self._named(inputs), _QUIET_RUN)
        return {name: np.asarray(value, dtype=np.float32) for name, value in zip(self.output_names, values)}

    def _run_bound(self, inputs: Any, device_type: str = "cuda") -> dict[str, np.ndarray]:
        """CUDA path: IO binding; each input goes to the GPU once (or is read in place from a CUDA
        torch tensor), outputs come back to CPU memory (docs/data_and_teacher.md). `device_type` "cpu"
        exercises the same binding calls on a machine without a GPU (tests)."""
        binding = self._session.io_binding()
        if not isinstance(inputs, Mapping):
            inputs = {self.input_name: inputs}
        keep_alive = []
        for name, value in inputs.items():
            dtype = self.input_specs[name].dtype
            if type(value).__module__.startswith("torch") and value.is_cuda:
                import torch  # only reached with a torch tensor in hand

                tensor = value.detach().to(getattr(torch, dtype.name)).contiguous()
                torch.cuda.current_stream(tensor.device).synchronize()  # ORT runs on its own stream
                binding.bind_input(
                    name,
                    device_type="cuda",
                    device_id=tensor.device.index or 0,
                    element_type=dtype.type,
                    shape=tuple(tensor.shape),
                    buffer_ptr=tensor.data_ptr(),
                )
                keep_alive.append(tensor)
            else:
                array = self._named({name: value})[name]
                ort_value = ort.OrtValue.ortvalue_from_numpy(array, device_type, 0)
                binding.bind_ortvalue_input(name, ort_value)
                keep_alive.append(ort_value)
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
    logits_name: str | None = "logits",
    tap_names: Sequence[str] | None = None,
    provider: str = "auto",
    intra_op_threads: int | None = None,
    inputs: Mapping[str, str] | None = None,
    max_length: int | None = None,
    per_token: Sequence[str] | None = None,
) -> TeacherSession:
    """Validate the ONNX file at `path` and open it on `provider` ("auto": CUDA when it really
    loads, else CPU, with one log line saying which; "cpu"/"cuda": that one or an error).

    inputs: ONNX input -> prepared field (`teacher.inputs`); None = {input_name: "input"}, the
    single-input form. logits_name None: a teacher without logits (only taps are cached).
    tap_names None = every output except `logits_name`. max_length: the longest sequence a
    symbolic sequence axis takes. per_token: outputs stored per token (None: those whose
    axis 1 is a ragged input's sequence axis). Raises TeacherModelError/TeacherInputError naming
    the problem and the fix, or TeacherProviderError."""
    path = Path(path)
    model = _load_graph(path)
    input_fields = dict(inputs) if inputs else {input_name: DEFAULT_FIELD}
    specs, taps = _check_names(model, path, input_fields, logits_name, tap_names)
    output_dims = {o.name: _dims(o) for o in model.graph.output}
    del model
    session = _open_session(path, provider, intra_op_threads)
    names = (*([logits_name] if logits_name is not None else []), *taps)
    return TeacherSession(
        path=path,
        provider=session.get_providers()[0],
        input_fields=input_fields,
        input_specs=specs,
        logits_name=logits_name,
        tap_names=taps,
        output_dims={name: output_dims[name] for name in names},
        _session=session,
        max_length=max_length,
        per_token=None if per_token is None else tuple(per_token),
    )


def onnx_parameter_count(path: str | Path) -> int:
    """Number of values in the model's initializers (its weights), read without external data."""
    model = onnx.load(str(path), load_external_data=False)
    return int(sum(int(np.prod(init.dims)) if len(init.dims) else 1 for init in model.graph.initializer))
