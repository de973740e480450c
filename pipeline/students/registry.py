"""Students made by name: `arch: {kind: <name>, ...}` -> an nn.Module returning StudentOutput.

Adding an architecture is one file (a params model with `kind: Literal["<name>"]` and a module
whose forward returns `StudentOutput` and which exposes `tap_shapes`) and one line in
`ARCHITECTURES` (docs/training.md).
"""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import Field
from torch import nn

from pipeline.config import StrictModel, validate_section
from pipeline.students.cnn import CNNParams, CNNStudent
from pipeline.students.mlp import MLPParams, MLPStudent

ARCHITECTURES: dict[str, tuple[type, type[nn.Module]]] = {
    "mlp": (MLPParams, MLPStudent),
    "cnn": (CNNParams, CNNStudent),
}
"""kind -> (params model, module class)."""

ArchParams = Annotated[
    Union[tuple(params for params, _ in ARCHITECTURES.values())],  # noqa: UP007 (a runtime tuple)
    Field(discriminator="kind"),
]
"""The pydantic field type of `arch:` (discriminated on `kind`)."""


class _ArchHolder(StrictModel):
    arch: ArchParams


def parse_arch(data: Any) -> Any:
    """Validate a raw `arch:` mapping (e.g. read from student.json) into its params model, or raise
    ParamsError naming the bad key (`arch.kind: 'rnn' is not known; valid: mlp, cnn`)."""
    return validate_section(_ArchHolder, {"arch": data}, "").arch


def build_student(arch_params: Any, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A fresh student for inputs (B, *input_shape) and `num_classes` classes.

    arch_params: an `ArchParams` model or its raw mapping (`{kind: mlp, hidden: [64]}`).
    The module's forward returns `StudentOutput`; `module.tap_shapes` maps tap -> per-row shape.
    """
    if isinstance(arch_params, dict):
        arch_params = parse_arch(arch_params)
    _, module_class = ARCHITECTURES[arch_params.kind]
    return module_class(arch_params, tuple(int(n) for n in input_shape), int(num_classes))


def count_parameters(module: nn.Module) -> int:
    """Number of trainable scalars in `module`."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
