"""A user's model factory named as `pkg.module:attr`: checked for its form, imported, called.

The factory string is code the user chose (params.yaml or the command line): it is imported with
`importlib.import_module` and looked up with `getattr`, never evaluated, and its form is checked
first, so a value such as `os.system('...')` is refused before anything is imported. Importing and
calling it runs the user's code with the user's rights, as `python -m` would; docs/training.md.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any

from pipeline.errors import DistilleryError

_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
FACTORY_PATTERN = re.compile(rf"{_IDENTIFIER}(?:\.{_IDENTIFIER})*:{_IDENTIFIER}(?:\.{_IDENTIFIER})*")
"""`pkg.module:attr` (dotted module path, a colon, a dotted attribute path), as an entry point."""


class FactorySpecError(DistilleryError, ValueError):
    """A factory string is not of the form `pkg.module:attr`."""


class FactoryImportError(DistilleryError, ImportError):
    """A factory's module cannot be imported, lacks the attribute, or the attribute is not callable."""


class FactoryCallError(DistilleryError):
    """Calling the factory failed or did not give a torch module."""


def check_factory(spec: Any) -> str:
    """`spec` itself when it has the form `pkg.module:attr` (no dunder attributes); else FactorySpecError."""
    if not isinstance(spec, str) or FACTORY_PATTERN.fullmatch(spec) is None:
        raise FactorySpecError(
            f"factory {spec!r} is not of the form 'pkg.module:function' (a module path importable "
            "from the project root, a colon, then the name of a function or class in it)"
        )
    if any(part.startswith("__") and part.endswith("__") for part in re.split(r"[.:]", spec)):
        raise FactorySpecError(f"factory {spec!r}: dunder names are not allowed; name the function itself")
    return spec


def load_factory(spec: str) -> Callable[..., Any]:
    """The callable that `spec` (`pkg.module:attr`) names, imported from the installed packages or
    the current directory (the project root, where `dvc repro` runs the stages).

    Raises FactorySpecError for a malformed spec and FactoryImportError naming the factory when its
    module cannot be imported or has no such callable attribute.
    """
    module_name, attribute = check_factory(spec).split(":", 1)
    # Console scripts do not put the current directory on sys.path (`python -m` does): add it last,
    # so the project's own modules (examples/, the user's code) import and installed packages win.
    here = os.getcwd()
    if here not in sys.path:
        sys.path.append(here)
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as error:  # ModuleNotFoundError, or any error raised by the module's own code
        raise FactoryImportError(
            f"factory {spec!r}: cannot import {module_name!r} ({type(error).__name__}: {error}); "
            "install the package that provides it, or run from the directory that holds it"
        ) from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise FactoryImportError(
                f"factory {spec!r}: {module_name!r} has no attribute {attribute!r}; check the name after ':'"
            )
        target = getattr(target, part)
    if not callable(target):
        raise FactoryImportError(
            f"factory {spec!r}: {attribute!r} is a {type(target).__name__}, not callable"
        )
    return target


def accepted_keywords(function: Callable[..., Any], names: Mapping[str, Any]) -> dict[str, Any]:
    """The items of `names` that `function` accepts as keywords (by name, or through **kwargs)."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # builtins and some C callables have no signature
        return {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return dict(names)
    taken = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {name: value for name, value in names.items() if name in taken}


def call_factory(spec: str, kwargs: Mapping[str, Any], **context: Any) -> Any:
    """Import the factory `spec` and call it with `kwargs`, plus each item of `context` (e.g.
    `num_classes=10`, `input_shape=(1, 8, 8)`) that its signature accepts and `kwargs` does not set.

    Returns what the factory returns (an nn.Module is checked by the caller). Raises
    FactoryImportError, or FactoryCallError with the factory's own error message.
    """
    factory = load_factory(spec)
    extra = accepted_keywords(
        factory, {k: v for k, v in context.items() if v is not None and k not in kwargs}
    )
    try:
        return factory(**dict(kwargs), **extra)
    except Exception as error:
        raise FactoryCallError(
            f"factory {spec!r} failed with kwargs {dict(kwargs)} ({type(error).__name__}: {error}); "
            "fix the kwargs or the factory"
        ) from error
