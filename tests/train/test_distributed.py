"""One student on several processes (DDP through torchrun, gloo on the CPU): the same rows per step
as one process, rank 0 writes, a killed launcher takes its processes with it and the re-run resumes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from pipeline.train.distributed import Ranks, local_rows, seed_step
from stages.cli import main
from tests.train.helpers import write_disk_project

ROOT = Path(__file__).resolve().parents[2]
LOSS = {"ce": {"kind": "ce", "weight": 0.5}, "kd": {"kind": "hinton", "weight": 0.5}}
# Labelled rows only and no dropout: every term is a mean over rows, so the two ranks' halves of a
# batch give the gradient of the whole batch (up to float rounding) and the runs can be compared.
STUDENT = {
    "arch": {"kind": "mlp", "hidden": [16]},
    "epochs": 3,
    "batch_size": 32,
    "seeds": [0],
    "train_rows": "labelled",
    "checkpoint_every_steps": 2,
    "loss": LOSS,
}


def test_each_rank_reads_its_own_slice_of_every_global_batch():
    rows = np.arange(100, 124)  # three global batches of 8, in the seeded order
    slices = [local_rows(rows, 8, Ranks(rank, 2, rank)) for rank in (0, 1)]
    assert slices[0].tolist() == [100, 101, 102, 103, 108, 109, 110, 111, 116, 117, 118, 119]
    assert sorted(np.concatenate(slices).tolist()) == rows.tolist()
    assert local_rows(rows, 8, Ranks()) is rows


def test_each_rank_draws_its_own_random_numbers_per_step_whatever_ran_before():
    def draws(rank, step):
        seed_step(0, step, Ranks(rank, 2, rank))
        return torch.rand(4)

    first = draws(0, 7)
    torch.rand(100)  # a resumed run starts from another generator state
    assert torch.equal(draws(0, 7), first)
    assert not torch.equal(draws(1, 7), first)
    assert not torch.equal(draws(0, 8), first)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    write_disk_project(root)
    store = root / "cache/store"
    students = {
        "kd": {**STUDENT, "cache": str(store)},
        "rkd": {
            **STUDENT,
            "cache": str(store),
            "loss": {**LOSS, "rkd": {"kind": "rkd", "student_tap": "embed", "teacher_tap": "embed"}},
        },
        "cohort": {
            **STUDENT,
            "arch": None,
            "cache": str(store),
            "cohort": {"members": {"a": {"arch": {"kind": "mlp"}}, "b": {"arch": {"kind": "mlp"}}}},
        },
    }
    (root / "params.yaml").write_text(yaml.safe_dump({"students": students}))
    return root


def _arguments(root, student, tag, *extra):
    return [
        "train",
        "--student",
        student,
        "--params",
        str(root / "params.yaml"),
        "--prepared",
        str(root / "prepared"),
        "--out",
        str(root / tag / "out"),
        "--scratch",
        str(root / tag / "scratch"),
        "--no-progress",
        *extra,
    ]


def _cli(root, arguments, env=None, module="stages.cli"):
    if module != "stages.cli":  # a launcher process running the test worker module
        code = f"from pipeline.train.distributed import launch; launch(2, {module!r}, {arguments!r})"
        command = [sys.executable, "-c", code]
    else:
        command = [sys.executable, "-m", "stages.cli", *arguments]
    return subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        timeout=600,
    )


def _weights(root, tag):
    return load_file(str(root / tag / "out/seed_0/model.safetensors"))


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status  # a zombie left to an init that does not reap is dead too


@pytest.mark.parametrize("student", ["rkd", "cohort"])
def test_students_whose_loss_needs_the_whole_batch_are_refused_before_any_process_starts(
    project, capsys, student
):
    assert main(_arguments(project, student, f"refused-{student}", "--nproc", "2")) == 1
    line = capsys.readouterr().err.strip()
    assert line.startswith("distillery train: DistributedError: nproc 2: ")
    assert ("loss terms rkd relate the rows" if student == "rkd" else "a cohort trains its members") in line
    assert not (project / f"refused-{student}").exists()


@pytest.mark.slow
def test_two_processes_match_one_and_resume_after_the_launcher_is_killed(project, capsys):
    straight = _cli(project, _arguments(project, "kd", "two", "--nproc", "2"))
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert "train: 2 processes trained kd" in straight.stdout
    assert sorted(p.name for p in (project / "two/out/seed_0").iterdir()) == [
        "live",
        "model.safetensors",
        "student.json",
    ]
    assert not (project / "two/scratch").exists()

    assert main(_arguments(project, "kd", "one", "--nproc", "1")) == 0
    one, two = _weights(project, "one"), _weights(project, "two")
    scale = max(value.abs().max().item() for value in one.values())
    difference = max((one[name] - two[name]).abs().max().item() for name in one)
    # Not bitwise: DDP sums the two ranks' gradients in another order than one backward does.
    print(f"2 processes vs 1: max weight difference / max weight = {difference / scale:.2e}")
    assert difference / scale < 1e-5, difference / scale
    logged = [
        json.loads((project / tag / "out/seed_0/live/metrics.json").read_text()) for tag in ("one", "two")
    ]
    assert logged[1]["train"]["loss"] == pytest.approx(logged[0]["train"]["loss"], rel=1e-5)

    pids = project / "pids"
    pids.mkdir()
    env = {"DDP_TEST_KILL_AT_STEP": "7", "DDP_TEST_PIDS": str(pids)}
    killed = _cli(project, _arguments(project, "kd", "killed", "--nproc", "2"), env, "tests.train.ddp_worker")
    assert killed.returncode == -9, killed.stderr[-3000:]
    deadline = time.monotonic() + 30
    workers = [int(path.read_text()) for path in pids.iterdir()]
    assert len(workers) == 2
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in workers), "a rank outlived its launcher"
    checkpoint = json.loads((project / "killed/scratch/seed_0/checkpoint.json").read_text())
    # every 2 steps (and maybe by time): 6 or 7 before the kill, or later when the ranks finished more
    # steps before a loaded machine scheduled the launcher's SIGKILL and their death signal (seen under
    # a parallel test run); the resumed run starts from any of them, and is checked bit for bit below
    assert checkpoint["global_step"] >= 6, checkpoint["global_step"]
    assert not (project / "killed/out").exists()

    resumed = _cli(project, _arguments(project, "kd", "killed", "--nproc", "2"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = _weights(project, "killed")
    for name, value in two.items():
        assert torch.equal(again[name], value), name
