"""Names are data, never code or paths: a name from params.yaml or the command line that is not
`pipeline.names`-safe is refused before it becomes a shell word, a stage key or a directory, and no
path made from a name leaves its stage's directory (issue 12, items 1 and 2)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.reliability.conftest import refused
from tests.reliability.project import base_params, student_recipe, write_params

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SHELL_NAME = "x;touch pwned"


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` (links followed as listed) -> its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- item 1: a name is never shell code -------------------------------------------------------------


def test_every_name_dvc_puts_into_a_command_is_quoted():
    """Each `${key}` / `${item.*}` DVC interpolates into a `cmd:` sits inside single quotes, so the
    shell hands it to `distillery` as one word, whatever the name holds; in the default dvc.yaml and
    in every optional scenario's (scenarios/<name>/dvc.yaml)."""
    commands = {}
    for dvc_file in [ROOT / "dvc.yaml", *sorted(ROOT.glob("scenarios/*/dvc.yaml"))]:
        for name, stage in yaml.safe_load(dvc_file.read_text())["stages"].items():
            commands[f"{dvc_file.parent.name}:{name}"] = (stage.get("do") or stage)["cmd"]
    interpolated = {name: cmd for name, cmd in commands.items() if "${" in cmd}
    assert {f"{ROOT.name}:{s}" for s in ("train", "chain_teacher", "chain_cache")} <= set(interpolated)
    for name, cmd in interpolated.items():
        unquoted = re.sub(r"'[^']*'", "", cmd)
        assert "${" not in unquoted, f"{name}: {cmd}"


@pytest.mark.slow
def test_a_student_named_like_shell_code_never_runs_under_dvc_repro(tmp_path, record):
    """`dvc repro "train@x;touch pwned"` with the project's own train command: the shell passes the
    name to `distillery train` as one word, which refuses it; `pwned` is never created."""
    if not (BIN / "dvc").exists():
        pytest.skip(f"needs dvc in {BIN}")
    train = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["train"]["do"]
    stage = {"cmd": train["cmd"], "params": ["students.${key}"], "outs": ["data/train/${key}"]}
    (tmp_path / "dvc.yaml").write_text(
        yaml.safe_dump({"stages": {"train": {"foreach": "${students}", "do": stage}}})
    )
    write_params(tmp_path / "params.yaml", {"students": {SHELL_NAME: student_recipe(tmp_path)}})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run([str(BIN / "dvc"), "init", "--no-scm", "-q"], cwd=tmp_path, env=env, check=True)
    result = subprocess.run(
        [str(BIN / "dvc"), "repro", f"train@{SHELL_NAME}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert not (tmp_path / "pwned").exists()
    line = next(x for x in (result.stdout + result.stderr).splitlines() if x.startswith("distillery train:"))
    assert "student name 'x;touch pwned' is not allowed" in line
    record(f"a student named `{SHELL_NAME}` in params.yaml, run by `dvc repro`", line)


# The unsafe names of the issue: shell code, a space, a path, 300 characters, a leading dash.
UNSAFE = [SHELL_NAME, "a b", "../../docs", "y" * 300, "-rf"]


def _set_student(params, name):
    params["students"] = {name: params["students"]["kd"]}


def _set_member(params, name):
    recipe = params["students"]["kd"]
    recipe.pop("arch")
    recipe["cohort"] = {"members": {name: {"arch": {"kind": "mlp", "hidden": [8]}}}}


def _set_chain(params, name):
    params["chains"] = {name: {"teacher": "kd"}}


def _set_chain_teacher(params, name):
    params["chains"] = {"ta": {"teacher": name}}


def _set_tap(params, name):
    params["teacher"]["tap_names"] = [name]


def _set_sweep(params, name):
    params["sweep"] = {"students": [name]}


NAME_KINDS = {
    # what, how params name it, the stage that loads it, the key path in the message
    "student": (_set_student, "train", "students: student name"),
    "cohort member": (_set_member, "train", "students.kd.cohort.members: cohort member name"),
    "chain": (_set_chain, "evaluate", "chains: chain name"),
    "chain teacher": (_set_chain_teacher, "evaluate", "chains.ta.teacher: chain teacher name"),
    "teacher tap": (_set_tap, "teacher", "teacher.tap_names.0: teacher tap name"),
    "sweep student": (_set_sweep, "sweep", "sweep.students: student name"),
}


def _argv(stage: str, built: Path, params: Path, tmp_path: Path) -> list[str]:
    if stage == "train":
        return ["train", "--student", "kd", "--params", str(params), "--prepared", str(built / "prepared"),
                "--out", str(tmp_path / "out"), "--scratch", str(tmp_path / "scratch")]  # fmt: skip
    if stage == "evaluate":
        return ["evaluate", "--student", "kd", "--params", str(params), "--prepared", str(built / "prepared"),
                "--train-dir", str(built / "train"), "--export-dir", str(built / "export"),
                "--root-cache", str(built / "cache" / "store"), "--out", str(tmp_path / "out")]  # fmt: skip
    if stage == "teacher":
        return ["teacher", "--params", str(params), "--prepared", str(built / "prepared"),
                "--out", str(tmp_path / "out")]  # fmt: skip
    return ["sweep", "--params", str(params), "--prepared", str(built / "prepared"),
            "--out", str(tmp_path / "out"), "--scratch", str(tmp_path / "scratch"),
            "--report", str(tmp_path / "report.json")]  # fmt: skip


@pytest.mark.parametrize("kind", list(NAME_KINDS))
@pytest.mark.parametrize("name", UNSAFE, ids=["shell", "space", "path", "300-chars", "dash"])
def test_an_unsafe_name_in_params_is_refused_at_load_naming_its_key(
    kind, name, tmp_path, built_project, capsys, record
):
    set_name, stage, where = NAME_KINDS[kind]
    params = base_params(built_project)
    if stage == "evaluate" and kind == "chain":  # the chain's teacher must be a safe name too
        params["students"]["kd"] = student_recipe(built_project)
    set_name(params, name)
    path = write_params(tmp_path / "params.yaml", params)
    line = refused(capsys, _argv(stage, built_project, path, tmp_path))
    assert f"ParamsError: {where} " in line and "is not allowed: use 1-64 characters" in line, line
    assert len(line) < 400  # a 300-character name is shown shortened
    assert not (tmp_path / "out").exists() and not (tmp_path / "scratch").exists()
    if name == SHELL_NAME:
        record(f"a {kind} name with shell code (`{SHELL_NAME}`) in params.yaml", line)


# --- item 2: a name from the command line is never a path -------------------------------------------


@pytest.fixture
def workspace(tmp_path, built_project, monkeypatch):
    """A project laid out as DVC leaves it (data/train, data/.scratch, data/export, docs/), the
    current directory, so the stages' default paths (data/train/<student>, ...) are used."""
    root = tmp_path / "work"
    data = root / "data"
    shutil.copytree(built_project / "train", data / "train")
    shutil.copytree(built_project / "export", data / "export")
    shutil.copytree(built_project / "evaluate", data / "evaluate")
    shutil.copytree(built_project / "prepared", data / "prepared")
    (data / ".scratch" / "train" / "other" / "seed_0").mkdir(parents=True)
    (data / ".scratch" / "train" / "other" / "seed_0" / "checkpoint.json").write_text("{}")
    (root / "docs").mkdir()
    (root / "docs" / "guide.md").write_text("# keep me\n")
    params = base_params(built_project)
    write_params(root / "params.yaml", params)
    # as the run had them: students named like paths (before names were checked, `train
    # --student .` trained into data/train/. and then deleted data/.scratch/train/. whole)
    for name in (".", "..", "../../docs", "../../../docs"):
        params["students"][name] = params["students"]["kd"]
    write_params(root / "path-names.yaml", params)
    monkeypatch.chdir(root)
    return root


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--student", "."],
        ["train", "--student", "../../docs"],
        ["export", "--student", "../../docs"],
        ["evaluate", "--student", ".."],
        ["sweep", "--students", "../../../docs"],
    ],
    ids=["train-dot", "train-docs", "export-docs", "evaluate-dotdot", "sweep-docs"],
)
def test_a_student_name_that_is_a_path_deletes_nothing(argv, workspace, capsys, record):
    before = _tree(workspace)
    line = refused(capsys, [*argv, "--params", "path-names.yaml"], code=2)
    assert "UsageError: argument --student" in line and "is not allowed" in line
    assert _tree(workspace) == before
    record(f"`distillery {' '.join(argv)}` (a name that is a path)", line)


def test_a_student_directory_that_links_outside_its_stage_is_refused(workspace, capsys, record):
    """data/train/kd a symlink to docs/: training would replace docs/ with the student; refused."""
    shutil.rmtree(workspace / "data" / "train" / "kd")
    os.symlink(workspace / "docs", workspace / "data" / "train" / "kd")
    before = _tree(workspace)
    line = refused(capsys, ["train", "--student", "kd", "--params", "params.yaml", "--no-progress"])
    assert "InvalidNameError" in line and "resolves outside data/train" in line
    assert _tree(workspace) == before
    record("data/train/<student> a symlink out of data/train, at `distillery train`", line)
