"""Typed, frozen parameter models and the loading of params.yaml.

Every section of params.yaml is validated by a pydantic model built on `StrictModel`: unknown keys
and wrong types are errors that name the key path (``students.kd.loss.kd.temperature: expected a
number, got 'hot'``), never silently ignored. Each subpackage owns the model of its own section
(`pipeline/cache/params.py`, ...) so a DVC stage depends only on the code it runs.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from pipeline.errors import DistilleryError

ModelT = TypeVar("ModelT", bound=BaseModel)


class ParamsError(DistilleryError, ValueError):
    """params.yaml (or an override) does not validate; the message lists every bad key path."""


class StrictModel(BaseModel):
    """Base of every params model: frozen, and an unknown key names itself and the valid ones."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    @model_validator(mode="before")
    @classmethod
    def _refuse_unknown_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        valid = sorted(
            {name for name in cls.model_fields} | {f.alias for f in cls.model_fields.values() if f.alias}
        )
        for key in data:
            if key not in valid:
                close = difflib.get_close_matches(str(key), valid, n=1)
                hint = f"did you mean '{close[0]}'? " if close else ""
                raise PydanticCustomError(
                    "unknown_key",
                    "{key}: unknown key; {hint}valid keys: {valid}",
                    {"key": str(key), "hint": hint, "valid": ", ".join(valid) or "(none)"},
                )
        return data


_TYPE_WORDS = {
    "float": "expected a number",
    "int": "expected an integer",
    "bool": "expected true or false",
    "string": "expected a string",
    "list": "expected a list",
    "tuple": "expected a list",
    "dict": "expected a mapping",
    "model": "expected a mapping",
}


def _user_path(loc: tuple[Any, ...], data: Any) -> list[str]:
    """The key path as the user wrote it: discriminated unions put their tag (`hinton`) into the
    pydantic location, but the user wrote `kind: hinton`, not a key `hinton`; drop such parts."""
    parts, node = [], data
    for part in loc:
        if isinstance(node, dict) and part not in node and node.get("kind") == part:
            continue
        parts.append(str(part))
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            node = None
    return parts


def _describe(error: dict[str, Any], data: Any) -> tuple[str, str]:
    """One pydantic error -> (key path, plain message)."""
    path = ".".join(_user_path(error["loc"], data))
    kind = error["type"]
    if kind == "unknown_key":
        key = error["ctx"]["key"]
        path = f"{path}.{key}" if path else key
        return path, error["msg"].split(": ", 1)[1]
    if kind == "union_tag_invalid":
        ctx = error["ctx"]
        return path, (
            f"{ctx['discriminator'].strip(chr(39))} {ctx['tag']!r} is not known; "
            f"valid: {ctx['expected_tags'].replace(chr(39), '')}"
        )
    if kind == "union_tag_not_found":
        return path, f"needs a {error['ctx']['discriminator'].strip(chr(39))} key"
    if kind == "missing":
        return path, "required key is missing"
    prefix = kind.split("_")[0]
    if prefix in _TYPE_WORDS and ("type" in kind or "parsing" in kind):
        return path, f"{_TYPE_WORDS[prefix]}, got {error.get('input')!r}"
    return path, error["msg"]


def format_validation_error(error: ValidationError, data: Any = None, root: str = "") -> str:
    """A pydantic ValidationError on `data` as one line per bad key path, prefixed by `root`."""
    lines = []
    for item in error.errors():
        path, message = _describe(item, data)
        full = ".".join(p for p in (root, path) if p)
        lines.append(f"{full}: {message}")
    return "\n".join(dict.fromkeys(lines))


def validate_section(model: type[ModelT], data: Any, root: str) -> ModelT:
    """Validate `data` (the section `root` of params.yaml) into `model`, or raise ParamsError."""
    try:
        return model.model_validate({} if data is None else data)
    except ValidationError as error:
        raise ParamsError(format_validation_error(error, data, root)) from None


SECTIONS = (
    "prepare",
    "teacher",
    "cache",
    "students",
    "label_curve",
    "chains",
    "sweep",
    "cluster",
    "evaluate",
    "export",
)
"""Every top-level section of params.yaml (docs/architecture.md). A stage reads only its own, so a
misspelt section name (`evalute:`) would be silently ignored: it is refused here instead."""


def check_sections(data: dict[str, Any], path: str | Path) -> None:
    """ParamsError naming every top-level key of `data` that is not one of SECTIONS."""
    lines = []
    for key in data:
        if key not in SECTIONS:
            close = difflib.get_close_matches(str(key), SECTIONS, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            lines.append(f"{path}: {key}: unknown section; {hint}valid sections: {', '.join(SECTIONS)}")
    if lines:
        raise ParamsError("\n".join(lines))


def _is_student(name: str, students: dict[str, Any]) -> bool:
    """Whether `name` is a student under `students:`, or `<cohort>/<member>` of a cohort there."""
    if name in students:
        return True
    cohort, _, member = name.partition("/")
    node: Any = students.get(cohort) if member else None
    for key in ("cohort", "members"):
        node = node.get(key) if isinstance(node, dict) else None
    return isinstance(node, dict) and member in node


def _unknown_student(key: str, name: str, students: dict[str, Any]) -> str:
    close = difflib.get_close_matches(name, list(students), n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return (
        f"{key}: no student named {name!r} under `students:`; {hint}valid: {', '.join(students) or '(none)'}"
    )


def check_references(data: dict[str, Any], path: str | Path) -> None:
    """ParamsError naming every key that names a student not under `students:` (`chains.<c>.teacher`,
    `label_curve.students`, `sweep.students`) or a chain store whose chain is not under `chains:`
    (`students.<s>.cache: data/chains/<c>/store`). Values of the wrong type are left to the section's
    own model. Every stage reads params through here, so the first stage to run says it in one line,
    before DVC resolves a path such as `data/export/<teacher>/model.onnx` that nothing will write."""
    students = data.get("students")
    if not isinstance(students, dict):
        return
    lines = []
    for chain, spec in (data.get("chains") or {}).items() if isinstance(data.get("chains"), dict) else ():
        teacher = spec.get("teacher") if isinstance(spec, dict) else None
        if isinstance(teacher, str) and not _is_student(teacher, students):
            lines.append(_unknown_student(f"chains.{chain}.teacher", teacher, students))
    for section in ("label_curve", "sweep"):
        names = (data.get(section) or {}).get("students") if isinstance(data.get(section), dict) else None
        for name in names if isinstance(names, list) else ():
            if isinstance(name, str) and name != "all" and name not in students:
                lines.append(_unknown_student(f"{section}.students", name, students))
    chains = data.get("chains") if isinstance(data.get("chains"), dict) else {}
    for student, recipe in students.items():
        cache = recipe.get("cache") if isinstance(recipe, dict) else None
        match = (
            re.fullmatch(r"(?:\./)?data/chains/([^/]+)/store/?", cache) if isinstance(cache, str) else None
        )
        if match and match.group(1) not in chains:
            lines.append(
                f"students.{student}.cache: {cache} is the store of chain {match.group(1)!r}, which is not "
                f"under `chains:`; valid chains: {', '.join(chains) or '(none)'}"
            )
    if lines:
        raise ParamsError("\n".join(f"{path}: {line}" for line in lines))


def read_params_file(path: str | Path = "params.yaml") -> dict[str, Any]:
    """The raw mapping in a params YAML file, read with the safe loader; unknown sections and names
    of students or chains that are not there (`check_references`) are refused."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: no such params file; run from the project root or pass --params")
    try:
        with path.open() as handle:
            data = yaml.safe_load(handle)
    except yaml.YAMLError as error:  # bad syntax, or a tag such as !!python/object the safe loader refuses
        raise ParamsError(
            f"{path}: not valid params YAML ({' '.join(str(error).split())}); fix the file "
            "(plain YAML mappings, lists, numbers and strings only)"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level")
    check_sections(data, path)
    check_references(data, path)
    return data


def load_section(model: type[ModelT], section: str, path: str | Path = "params.yaml") -> ModelT:
    """Load and validate one top-level section of a params file (a stage validates only its own)."""
    return validate_section(model, read_params_file(path).get(section), section)
