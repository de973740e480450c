"""Raw English documents that ship with Python itself: nothing is downloaded, nothing is imported.

Two sources, each document with a stable string id:

- `topic:<name>`: the 79 help topics of Python's own documentation (`pydoc_data.topics.topics`, the
  Sphinx text rendering of the language reference that `help("assert")` prints).
- `doc:<module>[.<qualname>]`: the docstrings of the standard library's pure-Python modules, read
  from their source files with `ast.get_docstring` (the modules are never imported: no side
  effects, no platform-dependent imports). Which modules: the public names of
  `sys.stdlib_module_names` (fixed by the interpreter's version) that have source under the stdlib
  directory, minus `EXCLUDED_MODULES`; in a package, every public submodule. Skipped: private
  modules, functions and classes (a name part starting with `_`), test packages and modules
  (`TEST_PARTS`), nested functions (only module, class and method docstrings count).

Another Python version (or a distribution that leaves some stdlib files out) gives another
corpus; `stdlib_documents` lists the files it read so the corpus fingerprint records it.
"""

from __future__ import annotations

import ast
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# Not prose about Python: applications and demos (idlelib, turtledemo), codec boilerplate
# (encodings: one near-identical docstring per codec), the deprecated 2to3 tool with its test data
# (lib2to3), bundled wheels (ensurepip), the topics' own source (pydoc_data), jokes (this,
# antigravity), and the test suite.
EXCLUDED_MODULES = frozenset(
    {
        "antigravity",
        "encodings",
        "ensurepip",
        "idlelib",
        "lib2to3",
        "pydoc_data",
        "test",
        "this",
        "turtledemo",
    }
)
TEST_PARTS = frozenset({"test", "tests", "idle_test"})


@dataclass(frozen=True)
class RawDocument:
    """One document before cleaning: `id` (`topic:assert`, `doc:json.loads`), `source`
    ("topics" or "docstrings") and its text as written (reST or Sphinx text markup)."""

    id: str
    source: str
    text: str


def topic_documents() -> list[RawDocument]:
    """The help topics of `pydoc_data.topics` as documents `topic:<name>`, sorted by name."""
    from pydoc_data.topics import topics

    return [RawDocument(f"topic:{name}", "topics", topics[name]) for name in sorted(topics)]


def stdlib_directory() -> Path:
    """The directory holding the standard library's Python source (e.g. /usr/lib/python3.11)."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_source_files(root: Path | None = None) -> list[tuple[str, Path]]:
    """(dotted module name, source path) of every public, non-test stdlib module with Python
    source, sorted by module name. root: the stdlib directory (default `stdlib_directory()`)."""
    root = stdlib_directory() if root is None else Path(root)
    found: list[tuple[str, Path]] = []
    for top in sorted(sys.stdlib_module_names):
        if top.startswith("_") or top in EXCLUDED_MODULES or top in TEST_PARTS:
            continue
        module_file, package_dir = root / f"{top}.py", root / top
        if module_file.is_file():
            found.append((top, module_file))
        elif (package_dir / "__init__.py").is_file():
            found.extend(_package_modules(top, package_dir))
    return sorted(found)


def _package_modules(top: str, package_dir: Path) -> Iterator[tuple[str, Path]]:
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if any(part.startswith("_") or part in TEST_PARTS or part.startswith("test_") for part in parts):
            continue
        # A directory without __init__.py is not a package: its files are data, not modules.
        if not all(
            (package_dir.joinpath(*parts[:depth]) / "__init__.py").is_file() for depth in range(len(parts))
        ):
            continue
        yield ".".join((top, *parts)), path


def stdlib_documents(root: Path | None = None) -> tuple[list[RawDocument], list[str]]:
    """The docstrings of `stdlib_source_files(root)` as documents `doc:<module>[.<qualname>]`.

    Returns (documents in file order then source order, the relative paths of the files read).
    A file that does not parse under this Python (none in a clean install) is skipped and not
    listed, so the fingerprint still tells two corpora apart.
    """
    root = stdlib_directory() if root is None else Path(root)
    documents: list[RawDocument] = []
    files: list[str] = []
    for module, path in stdlib_source_files(root):
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError):
            continue
        files.append(path.relative_to(root).as_posix())
        for qualname, text in _docstrings(tree, module):
            documents.append(RawDocument(f"doc:{qualname}", "docstrings", text))
    return documents, files


def _docstrings(tree: ast.Module, module: str) -> Iterator[tuple[str, str]]:
    text = ast.get_docstring(tree)
    if text:
        yield module, text
    yield from _member_docstrings(tree.body, module)


def _member_docstrings(body: list[ast.stmt], prefix: str) -> Iterator[tuple[str, str]]:
    for node in body:
        # Definitions under `if`/`try` (platform branches) count too; a name defined twice keeps
        # its first docstring (build_corpus drops repeated ids).
        if isinstance(node, (ast.If, ast.Try)):
            branches = [
                node.body,
                node.orelse,
                *(getattr(h, "body", []) for h in getattr(node, "handlers", [])),
            ]
            for branch in branches:
                yield from _member_docstrings(branch, prefix)
            continue
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        if node.name.startswith("_"):
            continue
        qualname = f"{prefix}.{node.name}"
        text = ast.get_docstring(node)
        if text:
            yield qualname, text
        if isinstance(node, ast.ClassDef):
            yield from _member_docstrings(node.body, qualname)
