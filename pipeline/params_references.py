"""Names one params section takes from another: a chain's teacher, the students of `label_curve` and
`sweep`, a student's chain cache. Each must name something that is there (pipeline.config's
`check_references` raises the lines this module finds)."""

from __future__ import annotations

import difflib
import re
from typing import Any

from pipeline.names import NAME_PATTERN


def _is_student(name: str, students: dict[str, Any]) -> bool:
    """Whether `name` is a student under `students:`, or `<cohort>/<member>` of a cohort there."""
    if name in students:
        return True
    cohort, _, member = name.partition("/")
    node: Any = students.get(cohort) if member else None
    for key in ("cohort", "members"):
        node = node.get(key) if isinstance(node, dict) else None
    return isinstance(node, dict) and member in node


def _is_name(value: Any) -> bool:
    """A string that passes the names rule (a cohort member as `<cohort>/<member>`); any other value is
    left to the section's own model, which refuses it with that rule's message (pipeline.names)."""
    return isinstance(value, str) and all(NAME_PATTERN.fullmatch(part) for part in value.split("/", 1))


def _unknown_student(key: str, name: str, students: dict[str, Any]) -> str:
    close = difflib.get_close_matches(name, list(students), n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return (
        f"{key}: no student named {name!r} under `students:`; {hint}valid: {', '.join(students) or '(none)'}"
    )


def unknown_references(data: dict[str, Any]) -> list[str]:
    """One line per key that names a student not under `students:` (`chains.<c>.teacher`,
    `label_curve.students`, `sweep.students`) or a chain store whose chain is not under `chains:`
    (`students.<s>.cache: data/chains/<c>/store`). Values of the wrong type are left to the section's
    own model (a name that breaks the names rule too: the model says that rule)."""
    students = data.get("students")
    if not isinstance(students, dict):
        return []
    lines = []
    for chain, spec in (data.get("chains") or {}).items() if isinstance(data.get("chains"), dict) else ():
        teacher = spec.get("teacher") if isinstance(spec, dict) else None
        if _is_name(teacher) and not _is_student(teacher, students):
            lines.append(_unknown_student(f"chains.{chain}.teacher", teacher, students))
    for section in ("label_curve", "sweep"):
        names = (data.get(section) or {}).get("students") if isinstance(data.get(section), dict) else None
        for name in names if isinstance(names, list) else ():
            if _is_name(name) and name != "all" and name not in students:
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
    return lines
