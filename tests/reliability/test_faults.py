"""Faults through the real command line: a stage SIGKILLed (in a subprocess) and re-run, or a disk
that fills up, loses nothing, and never leaves a half-written file where a reader would take it."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from pipeline.cache.build import completed_shards, open_build
from pipeline.cache.zarr_store import ZarrStore
from pipeline.data.prepared import load_prepared
from stages.cli import main
from tests.cache.helpers import tree_bytes
from tests.reliability.conftest import refused
from tests.reliability.project import base_params, copy_project, stage_argv, write_params

ROOT = Path(__file__).resolve().parents[2]


def _killed(
    kill_point: str, argv: list[str], returncode: int = -signal.SIGKILL
) -> subprocess.CompletedProcess:
    """`distillery <argv>` in a subprocess that SIGKILLs (or interrupts) itself at `kill_point` (see
    _killed_stage); asserts it ended with `returncode`."""
    result = subprocess.run(
        [sys.executable, "-m", "tests.reliability._killed_stage", kill_point, *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == returncode, result.stderr[-3000:]
    return result


def _fresh_cache_project(built_project: Path, target: Path) -> Path:
    project = copy_project(built_project, target)
    shutil.rmtree(project / "cache" / "store")
    return project


def test_cache_killed_at_three_points_then_rerun_is_byte_identical(tmp_path, built_project, capsys, record):
    project = _fresh_cache_project(built_project, tmp_path / "p")
    argv = stage_argv(project, "cache")
    # 96 rows, shards of 32: killed after shard 0's record, inside the teacher during shard 2,
    # and with the finished store complete in scratch but not yet moved into place
    for kill_point in ("record:0", "teacher:5", "replace:store"):
        _killed(kill_point, argv)
        assert not (project / "cache" / "store").exists(), kill_point
    line = refused(capsys, stage_argv(project, "train"))  # no half cache is taken for a finished one
    assert "IncompleteCacheError" in line
    record("the cache stage SIGKILLed, then `distillery train` run on what it left", line)
    assert main(argv) == 0
    assert "0 shards written, 3 resumed" in capsys.readouterr().out  # finalize was the last kill
    assert tree_bytes(project / "cache" / "store") == tree_bytes(built_project / "cache" / "store")
    record(
        "the cache stage SIGKILLed at three points (after shard 0's record, inside the teacher in shard 2, "
        "before the finished store is moved), then re-run",
        "no error: the re-run printed `0 shards written, 3 resumed`; the store is byte-identical to an "
        "uninterrupted run; `data/cache/store` never existed in between",
    )


def test_disk_full_during_the_cache_write_keeps_progress_and_a_rerun_completes(
    tmp_path, built_project, capsys, monkeypatch, record
):
    project = _fresh_cache_project(built_project, tmp_path / "p")
    real_write, calls = ZarrStore.write_array, [0]

    def write_array(self, name, rows, values):
        calls[0] += 1
        if calls[0] == 8:  # the second array of shard 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, name, rows, values)

    monkeypatch.setattr(ZarrStore, "write_array", write_array)
    line = refused(capsys, stage_argv(project, "cache"))
    assert (
        "CacheDiskFullError" in line and "free space" in line and "completed shards are kept (1 of 3)" in line
    )
    record("a full disk during the cache write", line)
    prepared = load_prepared(project / "prepared")
    assert completed_shards(open_build(project / "scratch" / "cache", prepared)) == {0}
    monkeypatch.setattr(ZarrStore, "write_array", real_write)
    assert main(stage_argv(project, "cache")) == 0
    assert tree_bytes(project / "cache" / "store") == tree_bytes(built_project / "cache" / "store")


def test_training_killed_mid_epoch_resumes_to_the_same_final_weights(tmp_path, built_project, capsys, record):
    params = base_params(built_project)
    params["students"]["kd"].update(epochs=2, checkpoint_every_steps=3)  # 4 steps an epoch
    path = write_params(tmp_path / "params.yaml", params)

    def argv(name):
        return [
            "train",
            "--student",
            "kd",
            "--params",
            str(path),
            "--prepared",
            str(built_project / "prepared"),
            "--out",
            str(tmp_path / name / "out"),
            "--scratch",
            str(tmp_path / name / "scratch"),
            "--no-progress",
        ]

    assert main(argv("straight")) == 0
    _killed("step:7", argv("killed"))  # epoch 2, step 3 of 4; the last checkpoint is at step 6
    checkpoint = json.loads((tmp_path / "killed/scratch/seed_0/checkpoint.json").read_text())
    assert (checkpoint["epoch"], checkpoint["step_in_epoch"]) == (1, 2)
    assert not (tmp_path / "killed" / "out").exists()
    assert main(argv("killed")) == 0
    straight = load_file(str(tmp_path / "straight/out/seed_0/model.safetensors"))
    resumed = load_file(str(tmp_path / "killed/out/seed_0/model.safetensors"))
    assert straight.keys() == resumed.keys()
    assert all((straight[k] == resumed[k]).all() for k in straight)
    record(
        "training SIGKILLed mid-epoch (epoch 2, before step 7 of 8), then re-run",
        "no error: resumed from the step-6 checkpoint; model.safetensors tensors equal to an "
        "uninterrupted run",
    )


def test_evaluate_killed_while_writing_metrics_leaves_the_old_file_intact(
    tmp_path, built_project, capsys, record
):
    project = copy_project(built_project, tmp_path / "p")
    metrics = project / "evaluate" / "kd" / "metrics.json"
    old = metrics.read_bytes()
    _killed("replace:metrics.json", stage_argv(project, "evaluate"))
    assert metrics.read_bytes() == old
    json.loads(metrics.read_text())
    leftovers = sorted(p.name for p in metrics.parent.iterdir() if p.name.startswith(".tmp-"))
    assert all(name.startswith(".tmp-metrics.json.") for name in leftovers)
    metrics.unlink()
    _killed("replace:metrics.json", stage_argv(project, "evaluate"))
    assert not metrics.exists()
    record(
        "evaluate SIGKILLed with metrics.json complete in its temporary file, not yet renamed",
        "no error: the earlier metrics.json is byte-identical (or, with none before, there is none); "
        "at most a `.tmp-metrics.json.*` file that no reader opens",
    )


def test_export_killed_leaves_no_onnx_that_evaluate_would_take(tmp_path, built_project, capsys, record):
    project = copy_project(built_project, tmp_path / "p")
    export = project / "export" / "kd"
    old_model = (export / "model.onnx").read_bytes()
    _killed("replace:model.onnx", stage_argv(project, "export"))
    assert (
        export / "model.onnx"
    ).read_bytes() == old_model  # the old model, but no parity.json vouches for it
    assert not (export / "parity.json").exists()
    line = refused(capsys, stage_argv(project, "evaluate"))
    assert "MissingExportError" in line
    record("export SIGKILLed before model.onnx is renamed into place, then `distillery evaluate`", line)
    _killed("replace:parity.json", stage_argv(project, "export"))
    assert not (export / "parity.json").exists()
    assert "MissingExportError" in refused(capsys, stage_argv(project, "evaluate"))
    record(
        "export SIGKILLed after the parity check, before parity.json is renamed, then `distillery evaluate`",
        line,
    )
    assert main(stage_argv(project, "export")) == 0
    assert json.loads((export / "parity.json").read_text())["parity"]["passed"]


def _checkpointing_train(built_project: Path, tmp_path: Path) -> list[str]:
    """`distillery train` of a 2-epoch student that checkpoints every 3 steps, writing under tmp_path."""
    params = base_params(built_project)
    params["students"]["kd"].update(epochs=2, checkpoint_every_steps=3)
    path = write_params(tmp_path / "params.yaml", params)
    return [
        "train",
        "--student",
        "kd",
        "--params",
        str(path),
        "--prepared",
        str(built_project / "prepared"),
        "--out",
        str(tmp_path / "out"),
        "--scratch",
        str(tmp_path / "scratch"),
        "--no-progress",
    ]


@pytest.mark.parametrize(
    "code, strerror, item",
    [
        (errno.ENOSPC, "No space left on device", "a full disk while training writes a checkpoint"),
        (
            errno.EROFS,
            "Read-only file system",
            "a read-only data/ (EROFS) while training writes a checkpoint",
        ),
    ],
    ids=["disk-full", "read-only"],
)
def test_a_file_system_refusing_a_write_while_training_is_one_line_and_the_checkpoint_is_kept(
    code, strerror, item, tmp_path, built_project, capsys, monkeypatch, record
):
    import pipeline.train.checkpoint as checkpoint

    argv = _checkpointing_train(built_project, tmp_path)
    real_write, calls = checkpoint.atomic_write_bytes, [0]

    def write(target, data):
        calls[0] += 1
        if calls[0] == 2:  # the second checkpoint
            raise OSError(code, strerror, str(target))
        return real_write(target, data)

    monkeypatch.setattr(checkpoint, "atomic_write_bytes", write)
    line = refused(capsys, argv)
    kind = "DiskFullError" if code == errno.ENOSPC else "ReadOnlyFileSystemError"
    assert line.startswith(f"distillery train: {kind}: {strerror} writing ")
    assert "what was already written is intact" in line
    record(item, line.replace(str(tmp_path), "<tmp>"))
    first = json.loads((tmp_path / "scratch" / "seed_0" / "checkpoint.json").read_text())
    assert first["global_step"] == 3  # the first checkpoint is intact
    monkeypatch.setattr(checkpoint, "atomic_write_bytes", real_write)
    assert main(argv) == 0


def test_ctrl_c_while_training_is_one_line_exit_130_and_a_rerun_resumes(tmp_path, built_project, record):
    argv = _checkpointing_train(built_project, tmp_path)
    # a checkpoint every 3 steps (epoch ends only once checkpoint_every_seconds has passed, docs/training.md)
    result = _killed("sigint:6", argv, returncode=130)
    assert "Traceback" not in result.stderr
    line = result.stderr.strip()
    assert line == (
        "distillery train: interrupted; re-run to resume (every output is written atomically, so what "
        "was already written is intact)"
    )
    record("Ctrl-C (SIGINT) while training, mid-epoch", f"exit code 130 and one line: {line}")
    assert json.loads((tmp_path / "scratch" / "seed_0" / "checkpoint.json").read_text())["global_step"] == 3
    assert main(argv) == 0


def test_two_trainings_of_one_student_at_once_the_second_is_refused(tmp_path, built_project, capsys, record):
    from pipeline.io import output_lock

    argv = _checkpointing_train(built_project, tmp_path)
    with output_lock(tmp_path / "out", "distillery train --student kd"):  # a first run holds the output
        line = refused(capsys, argv)
    assert "OutputBusyError" in line and "distillery train --student kd" in line
    assert not (tmp_path / "scratch").exists() and not (tmp_path / "out").exists()
    record("two `distillery train` of one student at once", line.replace(str(tmp_path), "<tmp>"))
