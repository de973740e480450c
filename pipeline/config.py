"""Typed, frozen parameter models and the loading of params.yaml.

Every section of params.yaml is validated by a pydantic model built on `StrictModel`: unknown keys
and wrong types are errors that name the key path (``students.kd.loss.kd.temperature: expected a
number, got 'hot'``), never silently ignored. Each subpackage owns the model of its own section
(`pipeline/cache/params.py`, ...) so a DVC stage depends only on the code it runs.
"""

from __future__ import annotations

import difflib
import io
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from pipeline.errors import DistilleryError
from pipeline.params_references import unknown_references

ModelT = TypeVar("ModelT", bound=BaseModel)


class ParamsError(DistilleryError, ValueError):
    """params.yaml (or an override) does not validate; the message lists every bad key path."""


class StrictModel(BaseModel):
    """Base of every params model: frozen, and an unknown key names itself and the valid ones."""

    # allow_inf_nan=False: a NaN or infinite number (a loss weight, a learning rate) is refused at
    # load, naming its key, instead of surfacing later as a diverged loss blamed on something else
    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True, allow_inf_nan=False)

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


Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]
"""A random seed anywhere in params: 0 .. 2**32-1, the range numpy's and torch's generators share."""

Width = Annotated[int, Field(ge=1, le=2**16)]
"""A layer width (units, channels, embedding size): 1 .. 65536. Above that one square layer alone
holds 2**32 weights (16 GiB), refused at load rather than by the allocator mid-stage."""


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


_BOUNDS = {
    "greater_than": (">", "gt"),
    "greater_than_equal": (">=", "ge"),
    "less_than": ("<", "lt"),
    "less_than_equal": ("<=", "le"),
}


def _user_path(loc: tuple[Any, ...], data: Any) -> list[str]:
    """The key path as the user wrote it: discriminated unions put their tag (`hinton`) into the
    pydantic location, but the user wrote `kind: hinton`, not a key `hinton`; drop such parts."""
    parts, node, tag_skipped = [], data, None
    for index, part in enumerate(loc):
        # one tag per mapping; a tag that is also a key (`kind: address`, `address:`) when the key follows
        tagged = isinstance(node, dict) and node.get("kind") == part and tag_skipped is not node
        if tagged and (part not in node or (index + 1 < len(loc) and loc[index + 1] in node)):
            tag_skipped = node
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
    loc = error["loc"]
    if loc and loc[-1] == "[key]":  # a bad mapping key: the message names it; the path is its parent
        loc = loc[:-2]
    path = ".".join(_user_path(loc, data))
    kind = error["type"]
    if kind == "value_error":
        return path, error["msg"].removeprefix("Value error, ")
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
        return path, f"{_TYPE_WORDS[prefix]}, got {_shown(error.get('input'))}"
    if kind in _BOUNDS:
        symbol, key = _BOUNDS[kind]
        return path, f"must be {symbol} {error['ctx'][key]}, got {_shown(error.get('input'))}"
    if kind == "finite_number":
        return path, f"expected a finite number, got {_shown(error.get('input'))}"
    return path, error["msg"]


def _shown(value: Any, limit: int = 80) -> str:
    """repr of a bad value, cut to `limit` characters (a huge input must not flood the message)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_validation_error(error: ValidationError, data: Any = None, root: str = "") -> str:
    """A pydantic ValidationError on `data` as one line per bad key path, prefixed by `root`."""
    described = []
    for item in error.errors():
        path, message = _describe(item, data)
        described.append((".".join(p for p in (root, path) if p), message, item["type"]))
    # a list whose item failed is also reported "too short" (the item was dropped): say it once
    failed = [path for path, _, kind in described if kind != "too_short"]
    lines = [
        f"{path}: {message}"
        for path, message, kind in described
        if not (kind == "too_short" and any(other.startswith(f"{path}.") for other in failed))
    ]
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
    "text",  # the LM scenario's (scenarios/lm): its corpus, tokenizer and teacher, and its cache forms
    "lm_teacher",
    "caches",
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


MAX_PARAMS_BYTES = 2**20
"""The largest params file read (1 MiB; the shipped one is about 13 KB). PyYAML reads some 60 KB/s
of Python-built data here, so a file of many MB would take minutes before anything is checked."""


class _Refused(yaml.YAMLError):
    """A YAML construct the params loader refuses; `line` is 1-based."""

    def __init__(self, message: str, mark: Any):
        super().__init__(message)
        self.message, self.line = message, getattr(mark, "line", -1) + 1


MAX_PARAMS_VALUES = 1_000_000
"""The most values (scalars, lists, mappings) a params file may describe once each alias (`*name`) is
written out. An alias shares a node, so a few lines can describe billions of values (an alias bomb)
that validation or an error message would then expand; legitimate reuse stays far below this."""


class ParamsLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """PyYAML's safe loader (the C one where built) that also refuses what a params file never needs:

    - more than MAX_PARAMS_VALUES values once aliases are expanded, and values that contain
      themselves through an alias; aliases themselves are fine (`yaml.safe_dump` writes them for
      objects that occur twice);
    - merge keys (`<<: *defaults`), which copy keys at load time beyond that count;
    - duplicate keys: YAML keeps the last one silently, DVC refuses the file; refused here too.
    """

    def construct_document(self, node):
        size = _expanded_size(node, {}, set())
        if size > MAX_PARAMS_VALUES:
            raise _Refused(
                f"its aliases (*name) expand the file to more than {MAX_PARAMS_VALUES:,} values, the "
                "limit of a params file (an alias bomb?); write the values out",
                node.start_mark,
            )
        return super().construct_document(node)

    def flatten_mapping(self, node):
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise _Refused(
                    "a merge key (<<); merge keys are not allowed in params (write the keys out)",
                    key_node.start_mark,
                )

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[tuple[str, Any], Any] = {}
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode):
                    ident = (key_node.tag, key_node.value)
                    if ident in seen:
                        raise _Refused(
                            f"duplicate key {key_node.value!r} (first at line {seen[ident].line + 1}); "
                            "YAML would keep only the last one (DVC refuses the file): keep one",
                            key_node.start_mark,
                        )
                    seen[ident] = key_node.start_mark
        return super().construct_mapping(node, deep)


def _expanded_size(node: Any, sizes: dict[int, int], open_nodes: set[int]) -> int:
    """Values under `node` (itself included) with every alias written out, counted on the node graph
    (each shared node once, memoised in `sizes`), stopping past MAX_PARAMS_VALUES."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_nodes:
        raise _Refused("a value that contains itself through an alias; write it out", node.start_mark)
    open_nodes.add(key)
    children = node.value if isinstance(node, yaml.SequenceNode) else ()
    if isinstance(node, yaml.MappingNode):
        children = [part for pair in node.value for part in pair]
    total = 1
    for child in children:
        total += _expanded_size(child, sizes, open_nodes)
        if total > MAX_PARAMS_VALUES:
            break
    open_nodes.discard(key)
    sizes[key] = total
    return total


def check_references(data: dict[str, Any], path: str | Path) -> None:
    """ParamsError naming every key that names a student not under `students:` (`chains.<c>.teacher`,
    `label_curve.students`, `sweep.students`) or a chain store whose chain is not under `chains:`
    (`students.<s>.cache: data/chains/<c>/store`), one line each (pipeline.params_references). Every
    stage reads params through here, so the first stage to run says it in one line, before DVC
    resolves a path such as `data/train/<teacher>` that nothing will write."""
    lines = unknown_references(data)
    if lines:
        raise ParamsError("\n".join(f"{path}: {line}" for line in lines))


def read_params_file(path: str | Path = "params.yaml") -> dict[str, Any]:
    """The raw mapping in a params YAML file, read with `ParamsLoader` (safe: no Python tags, aliases
    bounded, no duplicate keys) and at most MAX_PARAMS_BYTES long; unknown sections and names
    of students or chains that are not there (`check_references`) are refused."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: no such params file; run from the project root or pass --params")
    with path.open("rb") as handle:
        raw = handle.read(MAX_PARAMS_BYTES + 1)
    if len(raw) > MAX_PARAMS_BYTES:
        raise ParamsError(
            f"{path}: larger than {MAX_PARAMS_BYTES // 2**20} MiB, the limit of a params file; keep data "
            "out of params (name files instead) or split the student grid over several params files"
        )
    stream = io.BytesIO(raw)
    stream.name = str(path)  # named in YAML's syntax errors
    try:
        data = yaml.load(stream, Loader=ParamsLoader)  # noqa: S506 - ParamsLoader is a SafeLoader
    except _Refused as error:
        raise ParamsError(f"{path}: line {error.line}: {error.message}") from None
    except yaml.YAMLError as error:  # bad syntax, or a tag such as !!python/object the safe loader refuses
        raise ParamsError(
            f"{path}: not valid params YAML ({' '.join(str(error).split())}); fix the file "
            "(plain YAML mappings, lists, numbers and strings only)"
        ) from None
    except RecursionError:
        raise ParamsError(f"{path}: nested too deeply to be params; fix the file") from None
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
