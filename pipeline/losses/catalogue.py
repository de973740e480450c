"""The loss catalogue, built from FAMILIES itself: each family's params (with defaults and
descriptions, read from its pydantic model) and its formula and sources (its adapter's docstring).
`distillery losses` prints it; docs/losses.md embeds the markdown form."""

from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass

from pydantic_core import PydanticUndefined

from pipeline.losses import FAMILIES


@dataclass(frozen=True)
class ParamEntry:
    name: str
    type: str
    default: str
    description: str


@dataclass(frozen=True)
class FamilyEntry:
    kind: str
    summary: str       # the params model's docstring
    formula: str       # the adapter's docstring: formula, sub-terms, source
    params: tuple[ParamEntry, ...]


def _type_name(annotation) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(str(a) for a in args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " | ".join(_type_name(a) for a in args if a is not type(None)) + " (optional)"
    if origin in (list, tuple):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args if a is not Ellipsis)}]"
    return getattr(annotation, "__name__", str(annotation))


def _default(field) -> str:
    if field.default is PydanticUndefined:
        return "required"
    if isinstance(field.default, tuple):
        return "[" + ", ".join(str(v) for v in field.default) + "]"
    return "-" if field.default is None else str(field.default)


def family_entries() -> list[FamilyEntry]:
    """One entry per family of FAMILIES, in registry order."""
    entries = []
    for kind, family in FAMILIES.items():
        params = tuple(
            ParamEntry(name, _type_name(field.annotation), _default(field), field.description or "")
            for name, field in family.params.model_fields.items() if name != "kind")
        entries.append(FamilyEntry(kind, inspect.getdoc(family.params) or "",
                                   inspect.getdoc(family.adapter) or "", params))
    return entries


def render_text(entries: list[FamilyEntry]) -> str:
    """The catalogue as plain text for a terminal."""
    blocks = []
    for entry in entries:
        lines = [f"{entry.kind}: {entry.summary}", *("    " + line for line in entry.formula.splitlines())]
        width = max(len(p.name) for p in entry.params)
        for p in entry.params:
            note = f"  {p.description}" if p.description else ""
            lines.append(f"    {p.name:<{width}}  = {p.default:<12} ({p.type}){note}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def render_markdown(entries: list[FamilyEntry]) -> str:
    """The catalogue as markdown: a section per family with its formula and a params table."""
    blocks = []
    for entry in entries:
        rows = "\n".join(f"| `{p.name}` | {p.type} | `{p.default}` | {p.description} |" for p in entry.params)
        blocks.append(f"### `{entry.kind}`\n\n{entry.summary}\n\n```text\n{entry.formula}\n```\n\n"
                      f"| param | type | default | meaning |\n| --- | --- | --- | --- |\n{rows}\n")
    return "\n".join(blocks)
