"""What `distillery export-teacher` is asked for: the graph inputs and the module, from its options.

`parse_input("input_ids:int64:seq")` -> InputSpec (name, dtype, per-row shape with named dynamic
axes); `arch_from_options(factory=..., taps=["embed=pool"], ...)` -> the same arch params a student's
`arch:` validates to (pipeline/students/external.py), so a teacher is made and tapped as students are.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.data.prepared import PreparedData
from pipeline.errors import DistilleryError
from pipeline.names import check_name

DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "bool": torch.bool,
}


class TeacherExportError(DistilleryError, ValueError):
    """The export-teacher request does not fit: a bad input spec, taps clashing with the logits, data
    that do not fit the inputs."""


@dataclass(frozen=True)
class InputSpec:
    """One graph input: `name`, `dtype` (a key of DTYPES) and its per-row `shape` (batch excluded):
    an int is a fixed size, a str names a dynamic axis (`seq`)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def example(self, batch: int, size: int, generator: torch.Generator) -> torch.Tensor:
        """(batch, *shape) example values; every dynamic axis gets `size`. Floats are standard
        normal; integers 0 or 1 (valid token ids and mask values for any vocabulary); bools random."""
        shape = (batch, *(size if isinstance(d, str) else d for d in self.shape))
        dtype = DTYPES[self.dtype]
        if dtype.is_floating_point:
            return torch.randn(shape, generator=generator).to(dtype)
        return torch.randint(0, 2, shape, generator=generator).to(dtype)


def parse_input(text: str) -> InputSpec:
    """`name:dtype:shape` -> InputSpec; shape is the per-row sizes joined by commas (batch excluded),
    -1 or a name for a dynamic axis: `input:float32:1,8,8`, `input_ids:int64:seq`. -1 at axis k is
    named `dim<k>`, so inputs share it by position (k counts the batch as 0)."""
    parts = text.split(":")
    if len(parts) != 3:
        raise TeacherExportError(
            f"--input {text!r}: expected name:dtype:shape, e.g. input:float32:1,8,8 or input_ids:int64:seq"
        )
    name, dtype, shape_text = parts
    check_name(name, "input")
    if dtype not in DTYPES:
        raise TeacherExportError(
            f"--input {text!r}: dtype {dtype!r} is not known; valid: {', '.join(DTYPES)}"
        )
    shape: list[int | str] = []
    for axis, item in enumerate(filter(None, shape_text.split(",")), start=1):
        item = item.strip()
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", item):
            shape.append(item)
        elif item == "-1":
            shape.append(f"dim{axis}")
        elif item.isdigit() and int(item) >= 1:
            shape.append(int(item))
        else:
            raise TeacherExportError(
                f"--input {text!r}: size {item!r} is not a positive integer, -1 or a name for a dynamic axis"
            )
    return InputSpec(name, dtype, tuple(shape))


def default_input(prepared: PreparedData) -> InputSpec:
    """The input of a teacher for `prepared`: `input`, float32, its per-row input shape."""
    return InputSpec("input", "float32", tuple(int(n) for n in prepared.input_shape))


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise TeacherExportError(
            f"{what}: not valid JSON ({error}); give an object, e.g. '{{\"width\": 64}}'"
        ) from None
    if not isinstance(value, dict):
        raise TeacherExportError(f"{what}: expected a JSON object, got {type(value).__name__}")
    return value


def arch_from_options(
    factory: str | None = None,
    timm: str | None = None,
    hf: str | None = None,
    kwargs: str = "{}",
    pretrained: bool = False,
    hf_config: str | None = None,
    hf_pretrained: str | None = None,
    taps: Sequence[str] = (),
    logits: str | None = None,
    input_keyword: str | None = None,
) -> Any:
    """The arch params (as a student's `arch:`) of export-teacher's options: exactly one of `factory`
    (`pkg.module:attr`), `timm` (a model name) and `hf` (a transformers class, with `hf_config` as
    JSON text or a config.json path, or `hf_pretrained`); `kwargs` JSON text; `taps` as
    "name=module.path"; `logits` a key, or an index when it is an integer. Raises
    TeacherExportError or ParamsError naming the bad option."""
    from pipeline.students.registry import parse_arch

    if sum(x is not None for x in (factory, timm, hf)) != 1:
        raise TeacherExportError("give exactly one of --factory, --timm and --hf")
    if hf is None and (hf_config is not None or hf_pretrained is not None):
        raise TeacherExportError("--hf-config and --hf-pretrained go with --hf CLASS")
    if pretrained and timm is None:
        raise TeacherExportError("--pretrained goes with --timm (for --hf, give --hf-pretrained DIR)")
    tap_paths = {}
    for item in taps:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise TeacherExportError(f"--taps {item!r}: expected name=module.path, e.g. embed=layer4")
        tap_paths[name] = path
    common = {
        "taps": tap_paths,
        "logits": int(logits) if logits is not None and re.fullmatch(r"-?\d+", logits) else logits,
        "input": input_keyword,
    }
    if factory is not None:
        return parse_arch(
            {"kind": "python", "factory": factory, "kwargs": _json_object(kwargs, "--kwargs"), **common}
        )
    if timm is not None:
        arch = {
            "kind": "timm",
            "name": timm,
            "pretrained": pretrained,
            "kwargs": _json_object(kwargs, "--kwargs"),
        }
        return parse_arch(arch | common)
    if kwargs.strip() not in ("", "{}"):
        raise TeacherExportError("--kwargs does not go with --hf; put the settings in --hf-config")
    config = None
    if hf_config is not None:
        text = hf_config if hf_config.lstrip().startswith("{") else _read_text(hf_config, "--hf-config")
        config = _json_object(text, "--hf-config")
    return parse_arch(
        {"kind": "hf", "model_class": hf, "config": config, "pretrained": hf_pretrained, **common}
    )


def _read_text(path: str, what: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as error:
        raise TeacherExportError(f"{what} {path}: cannot read it ({error.strerror})") from None
