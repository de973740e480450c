"""What a student reads: one float32 tensor (the default), or named prepared fields.

`students.<s>.inputs` maps each argument of the student's `forward` to a prepared field, as
`teacher.inputs` maps ONNX inputs (a list `[input_ids, attention_mask]` means each argument reads
the field of its own name). A variable-length field is padded per batch with zeros to the batch's
longest row (pipeline/data/collate.py); `<field>_mask` names its (B, L) bool mask, True on real
items, when the prepared data holds no field of that name. Without `inputs` the student is called
as it always was, `model(inputs)` on (B, *input_shape) float32. docs/architecture.md pins this.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipeline.data.collate import MASK_SUFFIX, collate
from pipeline.data.fields import Ragged
from pipeline.errors import DistilleryError
from pipeline.teacher.inputs import fields_of, is_ragged

StudentInputs = dict[str, np.ndarray] | np.ndarray
"""A host batch of student inputs: (B, *input_shape) float32, or argument -> (B, ...) array."""


class StudentInputError(DistilleryError):
    """A student's declared inputs do not fit the prepared fields or its forward."""


def input_map(declared: Mapping[str, str] | Sequence[str] | None) -> dict[str, str] | None:
    """`students.<s>.inputs` as forward argument -> field; a list maps each name to itself;
    None (the default single float32 input) stays None."""
    if declared is None:
        return None
    if isinstance(declared, Mapping):
        return {str(k): str(v) for k, v in declared.items()}
    return {str(name): str(name) for name in declared}


def call_student(model: torch.nn.Module, inputs: Any):
    """`model(**inputs)` for named inputs (a mapping), else `model(inputs)`."""
    return model(**inputs) if isinstance(inputs, Mapping) else model(inputs)


def to_tensors(inputs: StudentInputs, device) -> Any:
    """Host inputs -> tensors on `device` (a mapping stays a mapping)."""
    if isinstance(inputs, Mapping):
        return {name: torch.from_numpy(np.ascontiguousarray(v)).to(device) for name, v in inputs.items()}
    return torch.from_numpy(inputs).to(device)


def _readable(specs: Mapping[str, Any]) -> dict[str, tuple[str, int]]:
    """Field name -> (dtype name, per-row rank) of every field a student may name: the stored
    fields (specs with `dtype` and `row_shape`, None on a variable axis) and the `<field>_mask` of
    each variable one (bool, rank 1)."""
    out = {name: (np.dtype(spec.dtype).name, len(spec.row_shape)) for name, spec in specs.items()}
    for name, spec in specs.items():
        if _variable(spec) and name + MASK_SUFFIX not in specs:
            out[name + MASK_SUFFIX] = ("bool", 1)
    return out


def _variable(spec: Any) -> bool:
    return len(spec.row_shape) > 0 and spec.row_shape[0] is None


_KIND_NAMES = {"b": "bool", "i": "int", "u": "uint", "f": "float"}


def check_student_inputs(
    student: str, mapping: Mapping[str, str], specs: Mapping[str, Any], model: torch.nn.Module
) -> None:
    """StudentInputError (one line naming the student, the argument, the field and the fix) unless
    every argument of `mapping` is taken by `model.forward`, every required argument is mapped,
    each field exists (`specs`: a FieldSource's `specs()`), and a model declaring `input_kinds`
    (argument -> (numpy dtype kinds such as "iu", per-row rank)) gets fields of those kinds and rank."""
    readable = _readable(specs)
    parameters = list(inspect.signature(model.forward).parameters.values())
    takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters)
    named = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    where = f"student {student!r}"
    for argument, field in mapping.items():
        if argument not in named and not takes_any:
            raise StudentInputError(
                f"{where}: students.{student}.inputs names argument {argument!r} but its forward takes "
                f"{sorted(named)}; map those arguments to fields"
            )
        if field not in readable:
            raise StudentInputError(
                f"{where}: input {argument!r} reads field {field!r} (students.{student}.inputs.{argument}) "
                f"but the prepared data has {sorted(readable)}; map it to one of those, or prepare the field"
            )
    positional = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    missing = [p.name for p in parameters if p.default is p.empty and p.kind in positional]
    missing = [name for name in missing if name not in mapping]
    if missing:
        raise StudentInputError(
            f"{where}: its forward needs {missing} but students.{student}.inputs maps only "
            f"{sorted(mapping)}; add `{missing[0]}: <field>` to students.{student}.inputs"
        )
    for argument, (allowed, wanted_rank) in getattr(model, "input_kinds", {}).items():
        if argument not in mapping:
            continue
        dtype, rank = readable[mapping[argument]]
        if np.dtype(dtype).kind not in allowed or rank != wanted_rank:
            takes = "/".join(_KIND_NAMES[k] for k in allowed)
            raise StudentInputError(
                f"{where}: input {argument!r} takes {takes} rows of rank {wanted_rank} but field "
                f"{mapping[argument]!r} is {dtype} of rank {rank}; map students.{student}.inputs.{argument} "
                "to such a field, or cast it in prepare.transforms"
            )


class FieldBatches:
    """Student inputs of prepared rows: each mapped field read from `source` (anything `fields_of`
    reads), variable fields padded per batch with zeros plus their `<field>_mask`.

    __call__(rows) with (B,) int64 prepared row numbers -> argument -> (B, ...) array in the field's
    dtype ((B, L, ...) for a padded field, L the batch's longest row; masks (B, L) bool). Picklable
    when its source is (a PreparedDataset is), for DataLoader workers."""

    def __init__(self, source: Any, mapping: Mapping[str, str]) -> None:
        self.source = fields_of(source)
        self.mapping = dict(mapping)
        specs = self.source.specs()
        self.reads = list(
            dict.fromkeys(
                field if field in specs else field[: -len(MASK_SUFFIX)] for field in mapping.values()
            )
        )
        self.padded = {
            argument: field not in specs or _variable(specs[field]) for argument, field in mapping.items()
        }
        """argument -> whether its axis 1 is padded per batch (a variable field or a mask)."""

    def __call__(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        values = self.source.read(np.asarray(rows, np.int64), self.reads)
        batch = {
            name: Ragged(np.asarray(v.values), np.asarray(v.offsets, np.int64)) if is_ragged(v) else v
            for name, v in values.items()
        }
        collated = collate(batch)
        return {argument: np.asarray(collated[field]) for argument, field in self.mapping.items()}

    def describe(self, rows: np.ndarray) -> dict[str, dict]:
        """argument -> {field, dtype, shape} as a batch of `rows` has them (shape per row, null on a
        padded axis), for student.json: what export and evaluate rebuild the inputs from."""
        batch = self(rows)
        return {
            argument: {
                "field": field,
                "dtype": str(batch[argument].dtype),
                "shape": [
                    None if self.padded[argument] and axis == 0 else int(d)
                    for axis, d in enumerate(batch[argument].shape[1:])
                ],
            }
            for argument, field in self.mapping.items()
        }


@dataclass(frozen=True)
class PreparedRows:
    """Rows of prepared data whose fields are not one float32 array (named, variable-length):
    `source` (what `fields_of` reads: a PreparedDataset or in-memory fields) and `rows` (N,) int64
    prepared row numbers. Indexing with an index or bool array keeps those rows; a student of
    named inputs reads them in batches (`named_batches`)."""

    source: Any
    rows: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key) -> PreparedRows:
        return PreparedRows(self.source, np.asarray(self.rows)[key])


def named_batches(module: torch.nn.Module, inputs: Any, batch_size: int):
    """Yield the inputs a student takes, `batch_size` rows at a time: for a student of named inputs
    (`module.named_inputs`, argument -> field, set by `load_trained_student`) argument -> (B, ...)
    tensor padded per batch from `inputs` (PreparedRows); else (B, *input_shape) float32 tensors of
    `inputs` ((N, *input_shape) array). StudentInputError when the two do not go together."""
    named = getattr(module, "named_inputs", None)
    if named is None:
        if isinstance(inputs, PreparedRows):
            raise StudentInputError(
                "the student takes one float32 input but the prepared data has named fields "
                f"({', '.join(fields_of(inputs.source).names())}); train it with students.<s>.inputs"
            )
        for start in range(0, len(inputs), batch_size):
            rows = np.ascontiguousarray(inputs[start : start + batch_size], dtype=np.float32)
            yield torch.from_numpy(rows)
        return
    if not isinstance(inputs, PreparedRows):
        raise StudentInputError(
            f"the student reads named fields {dict(named)} but the evaluation data holds one float32 "
            "input array; evaluate it on the prepared data it was trained on"
        )
    batches = FieldBatches(inputs.source, named)
    for start in range(0, len(inputs), batch_size):
        yield to_tensors(batches(inputs.rows[start : start + batch_size]), "cpu")
