"""dvc.yaml's deps cannot drift from the code: each stage's import closure, followed statically from
the module `stages/cli.py` maps its subcommand to, is covered by the deps dvc.yaml lists for it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from stages.cli import SUBCOMMANDS

ROOT = Path(__file__).resolve().parents[1]
OUR_PACKAGES = ("pipeline", "stages")


def _module_file(name: str) -> Path | None:
    """The file of module `name` (`a.b` -> a/b.py or a/b/__init__.py), or None (not ours, or a name
    imported from a module rather than a submodule)."""
    path = ROOT.joinpath(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_names(path: Path) -> set[str]:
    """Every module name `path` imports, at the top or inside functions, and for `from m import x`
    also `m.x` (x may be a submodule)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this file's package
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _runs_code(path: Path) -> bool:
    """False for a package __init__.py that holds at most a docstring (importing it runs nothing)."""
    body = ast.parse(path.read_text()).body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
        body = body[1:]
    return bool(body)


def import_closure(module: str) -> set[str]:
    """Repository-relative paths of every file of ours that importing `module` executes: the module,
    the packages above each module reached (their __init__.py), and so on, transitively."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name.split(".")[0] not in OUR_PACKAGES:
            continue
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):  # importing a.b.c runs a, a.b and a.b.c
            path = _module_file(".".join(parts[:depth]))
            if path is not None and path not in seen:
                seen.add(path)
                todo.extend(_imported_names(path))
    return {str(path.relative_to(ROOT)) for path in seen if path.name != "__init__.py" or _runs_code(path)}


def _dvc_files() -> list[Path]:
    """The main dvc.yaml and each optional scenario's (scenarios/<name>/dvc.yaml, docs/pipeline.md)."""
    return [ROOT / "dvc.yaml", *sorted(ROOT.glob("scenarios/*/dvc.yaml"))]


def _dvc_stages() -> dict[str, tuple[str, list[str]]]:
    """Stage key -> (its distillery subcommand, its deps as repository-relative paths) for every stage
    of every dvc.yaml that runs one; a scenario's stages are keyed `scenarios/<name>:<stage>` and
    their deps, written relative to their dvc.yaml, are resolved from the repository root."""
    found = {}
    for dvc_file in _dvc_files():
        where = dvc_file.parent
        prefix = "" if where == ROOT else f"{where.relative_to(ROOT)}:"
        for name, stage in yaml.safe_load(dvc_file.read_text())["stages"].items():
            body = stage.get("do", stage)
            words = body["cmd"].split()
            if words[0] == "distillery":
                deps = [str((where / str(dep)).resolve().relative_to(ROOT)) for dep in body.get("deps", [])]
                found[prefix + name] = (words[1], deps)
    return found


def _covered(path: str, deps: list[str]) -> bool:
    return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)


def test_the_closure_follows_function_local_imports_and_package_inits():
    closure = import_closure("stages.cache")
    assert "stages/cache.py" in closure and "pipeline/cache/writer.py" in closure
    assert "pipeline/cluster/sharded_cache.py" in closure  # imported inside a function of stages/cache.py
    assert "pipeline/losses/__init__.py" in import_closure("stages.train")  # FAMILIES: code in an __init__
    assert "pipeline/__init__.py" not in closure  # a docstring only: importing it runs nothing


@pytest.mark.parametrize("stage", sorted(_dvc_stages()))
def test_dvc_yaml_lists_every_file_a_stage_imports(stage):
    command, deps = _dvc_stages()[stage]
    missing = sorted(path for path in import_closure(SUBCOMMANDS[command][0]) if not _covered(path, deps))
    assert not missing, f"dvc.yaml stage {stage!r} runs code it does not list in deps: {', '.join(missing)}"


def test_cache_and_chain_cache_share_their_code_deps_and_params():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    cache, chain = stages["cache"], stages["chain_cache"]["do"]

    def code(deps):
        return [dep for dep in deps if not dep.startswith("data/")]

    assert code(cache["deps"]) == code(chain["deps"]) and cache["params"] == chain["params"]
