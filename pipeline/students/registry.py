"""Students made by name: `arch: {kind: <name>, ...}` -> an nn.Module returning StudentOutput.

The built-in `mlp` and `cnn`, `tokens` over token ids (named inputs, pipeline/students/inputs.py),
`causal_lm` (per-token next-token logits, for `token_kd`), `teacher_layers` (a BERT student cut
from its teacher's layers, pipeline/students/teacher_layers.py),
and any torch module: a user factory (`python`), a timm model, a
Hugging Face model (pipeline/students/external.py), all entries of one registry. Adding an
architecture is one file (a params model with `kind: Literal["<name>"]` and a builder
`(params, input_shape, num_classes) -> module` whose forward returns `StudentOutput` and which
exposes `tap_shapes`) and one line in `ARCHITECTURES` (docs/training.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Union

from pydantic import Field
from torch import nn

from pipeline.config import StrictModel, validate_section
from pipeline.students.causal_lm import CausalLMParams, CausalLMStudent
from pipeline.students.cnn import CNNParams, CNNStudent
from pipeline.students.external import HFArchParams, PythonArchParams, TimmArchParams, tapped_student
from pipeline.students.mlp import MLPParams, MLPStudent
from pipeline.students.sequence import TokenParams, TokenStudent
from pipeline.students.teacher_layers import TeacherLayersParams, TeacherLayersStudent

ARCHITECTURES: dict[str, tuple[type, Callable[..., nn.Module]]] = {
    "mlp": (MLPParams, MLPStudent),
    "cnn": (CNNParams, CNNStudent),
    "python": (PythonArchParams, tapped_student),
    "timm": (TimmArchParams, tapped_student),
    "hf": (HFArchParams, tapped_student),
    "tokens": (TokenParams, TokenStudent),
    "causal_lm": (CausalLMParams, CausalLMStudent),
    "teacher_layers": (TeacherLayersParams, TeacherLayersStudent),
}
"""kind -> (params model, builder called as builder(params, input_shape, num_classes))."""

ArchParams = Annotated[
    Union[tuple(params for params, _ in ARCHITECTURES.values())],  # noqa: UP007 (a runtime tuple)
    Field(discriminator="kind"),
]
"""The pydantic field type of `arch:` (discriminated on `kind`)."""


class _ArchHolder(StrictModel):
    arch: ArchParams


def parse_arch(data: Any) -> Any:
    """Validate a raw `arch:` mapping (e.g. read from student.json) into its params model, or raise
    ParamsError naming the bad key (`arch.kind: 'rnn' is not known; valid: mlp, cnn, ...`)."""
    return validate_section(_ArchHolder, {"arch": data}, "").arch


def build_student(arch_params: Any, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A fresh student for inputs (B, *input_shape) and `num_classes` classes.

    arch_params: an `ArchParams` model or its raw mapping (`{kind: mlp, hidden: [64]}`).
    The module's forward returns `StudentOutput`; `module.tap_shapes` maps tap -> per-row shape.
    """
    if isinstance(arch_params, dict):
        arch_params = parse_arch(arch_params)
    _, builder = ARCHITECTURES[arch_params.kind]
    return builder(arch_params, tuple(int(n) for n in input_shape), int(num_classes))


def count_parameters(module: nn.Module) -> int:
    """Number of trainable scalars in `module`."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
