"""Names a user writes are data: one safe pattern, checked before a name becomes a path or a word.

A student, cohort member, chain, tap or teacher output name ends up as a directory under data/,
a DVC stage key (`train@<name>`), a params path (`students.<name>`) and a word in a shell command
(dvc.yaml's `cmd:`). Each of those has its own dangerous characters (`/`, `..`, `;`, spaces, `.`
for DVC's params paths, a leading `-` for argparse), so every name is held to one pattern that is
safe in all of them, and every path made from a name is checked to stay inside its root.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator

from pipeline.errors import DistilleryError

NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}")
"""Letters, digits, `_` and `-`; 1 to 64 characters; not starting with `-`."""

NAME_RULE = "1-64 characters of letters, digits, '_' and '-', not starting with '-'"


class InvalidNameError(DistilleryError, ValueError):
    """A user-written name that is not safe as a path, a stage key or a command word."""


def check_name(name: object, what: str = "name") -> str:
    """`name` itself if it matches `NAME_PATTERN`; else `InvalidNameError` naming `what` and the rule.

    what: how the user knows the thing, e.g. "student", "teacher output".
    """
    if not isinstance(name, str) or NAME_PATTERN.fullmatch(name) is None:
        shown = repr(name) if not isinstance(name, str) or len(name) <= 80 else repr(name[:80] + "...")
        raise InvalidNameError(f"{what} name {shown} is not allowed: use {NAME_RULE}")
    return name


def child_path(root: str | Path, name: str, what: str = "name") -> Path:
    """`root / name` for a checked `name`, refused unless it resolves inside `root` (symlinks too)."""
    check_name(name, what)
    root = Path(root)
    path = root / name
    resolved_root = root.resolve()
    if not path.resolve().is_relative_to(resolved_root) or path.resolve() == resolved_root:
        raise InvalidNameError(f"{what} {name!r}: {path} resolves outside {root}; remove the link")
    return path


def safe_name(what: str = "name") -> Any:
    """The pydantic field type of a user-written name (a dict key or a value) that applies
    `check_name(name, what)`, so the message says what the name is (`student name 'a b' ...`)."""
    return Annotated[str, AfterValidator(lambda name: check_name(name, what))]


SafeName = safe_name()
"""The pydantic field type of a user-written name (a dict key or a value)."""
