"""The whole pipeline end to end: `dvc repro` in a temporary git repo on a tiny params.yaml.

The project's tracked files (`git ls-files`) are copied into a fresh repo with a params.yaml of
the same sections, shrunk: a 2-epoch teacher and four cheap students, among them a chain
(teacher -> assistant -> ta_student). PYTHONPATH points at the copy, so the stages run its code
(the editable `distillery` install would otherwise import the original checkout; here both are
the same code). Checked: the outputs and metrics, a second `dvc repro` that runs nothing, and a
`dvc exp run -S` on one student's param that re-runs only that student's stages (plus the
leaderboard, and the `sweep` stage, which reads the whole `students:` section and is a no-op by
default) and is listed by `dvc exp show`. The label_curve stage runs on a 2-point, 20-step curve.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

PROJECT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def tiny_params(params: dict) -> dict:
    """The project's params with a 2-epoch teacher, four 3-epoch students (one a chain), one seed,
    and short latency and parity checks."""
    params = json.loads(json.dumps(params))
    params["teacher"]["builtin"].update(epochs=2, channels=[8, 16], embed_dim=32)
    params["teacher"]["parity"]["batch_sizes"] = [1, 7]
    params["teacher"]["provider"] = "cpu"
    params["cache"]["kl_sample_rows"] = 500
    students = params["students"]
    tiny = {
        name: {**students[name], "epochs": 3, "seeds": [0]}
        for name in ("ce_baseline", "hinton", "assistant", "ta_student")
    }
    tiny["assistant"]["arch"] = {"kind": "mlp", "hidden": [32]}
    params["students"] = tiny
    params["chains"] = {"ta": params["chains"]["ta"]}
    params["sweep"] = {"students": []}
    if "label_curve" in params:
        params["label_curve"].update(
            per_class=[5, "all"], students=["ce_baseline", "hinton"], seeds=[0], steps=20
        )
    params["evaluate"]["latency"].update(
        batch_sizes=[1], providers=["CPUExecutionProvider"], warmup=1, repeats=2
    )
    params["export"]["parity_batch_sizes"] = [1, 7]
    return params


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise AssertionError(f"`{' '.join(args)}` failed ({result.returncode}):\n{output[-6000:]}")
    return output


def _stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """(root, env) of a fresh git repo holding a copy of the project and the tiny params, committed."""
    if shutil.which("git") is None or not (PROJECT / ".git").exists():
        pytest.skip("needs git and the project's git checkout")
    if not (BIN / "dvc").exists() or not (BIN / "distillery").exists():
        pytest.skip(f"needs dvc and distillery in {BIN} (`make setup`)")
    root = tmp_path_factory.mktemp("repro")
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=PROJECT, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        source = PROJECT / name
        if source.is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(params), sort_keys=False))
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(root),
        "DVC_NO_ANALYTICS": "1",
        "OMP_NUM_THREADS": "1",
    }
    for args in (
        ["git", "init", "-q"],
        ["git", "config", "user.email", "test@distillery.invalid"],
        ["git", "config", "user.name", "distillery test"],
        ["git", "add", "-A"],
        ["git", "commit", "-q", "-m", "tiny project"],
    ):
        _run(args, root, env)
    return root, env


def test_dvc_repro_runs_every_stage_then_nothing_then_only_what_a_param_change_touches(repo):
    root, env = repo
    first = _run(["dvc", "repro"], root, env)
    students = ("ce_baseline", "hinton", "assistant", "ta_student")
    expected = {
        "check_params",
        "prepare",
        "teacher",
        "cache",
        "chain_teacher@ta",
        "chain_cache@ta",
        "sweep",
        "sweep_export",
        "sweep_evaluate",
        "leaderboard",
        "label_curve",
        "export",  # every student in one process (docs/pipeline.md)
        "evaluate",
        *(f"train@{s}" for s in students),
    }
    every_stage = set(_run(["dvc", "stage", "list", "--name-only"], root, env).split())
    assert expected <= every_stage and _stages_run(first) == every_stage

    teacher = json.loads((root / "data/teacher/metrics.json").read_text())
    assert teacher["test_accuracy"] > 0.5
    assert (
        json.loads((root / "data/chains/ta/report.json").read_text())["teacher"]
        == "data/chains/ta/teacher/assistant/model.onnx"
    )
    reports = {s: json.loads((root / f"data/evaluate/{s}/metrics.json").read_text()) for s in students}
    for name, report in reports.items():
        assert 0.2 < report["accuracy"]["mean"] <= 1.0, (name, report["accuracy"])  # chance: 0.1
        assert 0.0 <= report["root_agreement"]["mean"] <= 1.0
    assert [reports[s]["teacher"] for s in students] == ["labels", "teacher", "teacher", "assistant"]
    assert reports["hinton"]["root_agreement"] == reports["hinton"]["agreement"]
    board = (root / "data/leaderboard/leaderboard.md").read_text()
    assert "| teacher (reference) |" in board and "| ta_student |" in board and "| assistant |" in board
    metrics = json.loads((root / "data/leaderboard/metrics.json").read_text())  # `dvc metrics show`
    assert metrics["hinton"]["accuracy_mean"] == reports["hinton"]["accuracy"]["mean"]
    curves = {
        p.relative_to(root / "data/leaderboard/curves").as_posix()
        for p in root.glob("data/leaderboard/curves/**/*.tsv")
    }
    assert {
        f"val/acc/{s}.tsv" for s in students
    } <= curves  # `dvc plots show` draws them: dvc.yaml lists none

    assert "Data and pipelines are up to date." in _run(["dvc", "repro"], root, env)

    _run(["git", "add", "dvc.lock"], root, env)
    _run(["git", "commit", "-q", "-m", "baseline"], root, env)
    # ta_student: the label_curve stage re-trains ce_baseline's and hinton's recipes, so those two re-run it.
    experiment = _run(
        ["dvc", "exp", "run", "-n", "ta-t2", "-S", "students.ta_student.loss.kd.temperature=2.0"], root, env
    )
    assert _stages_run(experiment) == {
        "check_params",  # reads every section; its output is unchanged, so prepare does not re-run
        "train@ta_student",
        "export",
        "evaluate",
        "leaderboard",
        "sweep",
    }
    shown = csv.DictReader(io.StringIO(_run(["dvc", "exp", "show", "--csv"], root, env)))
    rows = {row["Experiment"]: row for row in shown}
    assert rows["ta-t2"]["students.ta_student.loss.kd.temperature"] == "2.0", rows.get("ta-t2")
