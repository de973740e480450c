"""The layout rules of docs/architecture.md, enforced: storage has one door, the library never
imports the stages."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STORAGE_LIBRARIES = {"zarr", "pyarrow", "polars", "numcodecs"}
# pipeline/data reads the user's Parquet/Zarr datasets; pipeline/cache is the cache's one door; the
# leaderboard is a polars table (docs/evaluation.md), though it reads no cache file itself.
STORAGE_DOORS = ("pipeline/cache/", "pipeline/data/")
TABLE_MODULES = {
    "pipeline/evaluate/leaderboard.py": {"polars"},
    "pipeline/evaluate/leaderboard_tables.py": {"polars"},
}


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _library_files() -> list[Path]:
    return sorted((ROOT / "pipeline").rglob("*.py"))


def test_only_the_cache_and_data_packages_import_storage_libraries_and_the_leaderboard_polars():
    offenders = []
    for path in _library_files():
        relative = path.relative_to(ROOT).as_posix()
        if relative.startswith(STORAGE_DOORS):
            continue
        roots = {name.split(".")[0] for name in _imported_modules(path)} - TABLE_MODULES.get(relative, set())
        if roots & STORAGE_LIBRARIES:
            offenders.append(f"{relative}: {sorted(roots & STORAGE_LIBRARIES)}")
    assert not offenders, (
        "storage libraries imported outside pipeline/cache and pipeline/data:\n" + "\n".join(offenders)
    )


def test_the_library_never_imports_the_stages():
    offenders = [
        path.relative_to(ROOT).as_posix()
        for path in _library_files()
        if any(name == "stages" or name.startswith("stages.") for name in _imported_modules(path))
    ]
    assert not offenders, f"pipeline/ imports stages/: {offenders}"


def test_every_public_function_of_the_library_has_a_docstring():
    missing = []
    for path in _library_files():
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                if ast.get_docstring(node) is None:
                    missing.append(f"{path.relative_to(ROOT).as_posix()}:{node.lineno} {node.name}")
    assert not missing, "public functions and classes without a docstring:\n" + "\n".join(missing)
