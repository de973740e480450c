"""A run killed with SIGKILL mid-epoch resumes from its last checkpoint to the same final weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pipeline.train.run import train_from_reader
from tests.train.helpers import make_cache, make_prepared, student_params

ROOT = Path(__file__).resolve().parents[2]
# Dropout and CRD's bank negatives draw from the torch RNG every step, so its state must be restored;
# the feature term's projection lives in the recipe, so the recipe's weights must be restored too.
PARAMS = {
    "arch": {"kind": "mlp", "hidden": [32, 16], "dropout": 0.2},
    "epochs": 3,
    "checkpoint_every_steps": 2,
    "seeds": [0],
    "optimizer": {"kind": "adamw", "lr": 0.01},
    "loss": {
        "ce": {"kind": "ce", "weight": 0.5},
        "kd": {"kind": "hinton", "weight": 0.5},
        "feature": {"kind": "feature", "weight": 1.0, "student_tap": "embed", "teacher_tap": "embed"},
        "crd": {
            "kind": "crd",
            "weight": 0.1,
            "student_tap": "hidden1",
            "teacher_tap": "embed",
            "negatives": "bank",
            "num_negatives": 64,
        },
    },
}

CHILD = """
import os, signal
from tests.train.helpers import make_cache, make_prepared, student_params
from pipeline.train.run import train_from_reader
params = student_params(**{params})
def kill_at(step):
    if step == {kill_step}:  # a real SIGKILL, at a known step (seed 0 is the first trained)
        os.kill(os.getpid(), signal.SIGKILL)
prepared = make_prepared()
train_from_reader("kd", params, make_cache(prepared), prepared, "{out}", "{scratch}", progress=False,
                  on_step=kill_at, threads=1)
"""


def _killed_run(tmp_path, kill_step):
    code = CHILD.format(
        params=repr(PARAMS), kill_step=kill_step, out=tmp_path / "out", scratch=tmp_path / "scratch"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]


def test_training_killed_mid_epoch_resumes_to_identical_weights(tmp_path):
    prepared = make_prepared()
    cache = make_cache(prepared)
    params = student_params(**PARAMS)
    train_from_reader(
        "kd",
        params,
        cache,
        prepared,
        tmp_path / "straight/out",
        tmp_path / "straight/scratch",
        progress=False,
    )

    killed = tmp_path / "killed"
    _killed_run(killed, kill_step=9)  # epoch 1, step 3 of 6; last checkpoint at step 8
    checkpoint = json.loads((killed / "scratch/seed_0/checkpoint.json").read_text())
    assert (checkpoint["epoch"], checkpoint["step_in_epoch"]) == (1, 2)
    _killed_run(killed, kill_step=13)  # resumed, then killed again early in epoch 2
    assert not (killed / "out").exists()  # nothing half-written in the declared output

    train_from_reader("kd", params, cache, prepared, killed / "out", killed / "scratch", progress=False)
    for seed in ("seed_0",):
        straight = load_file(str(tmp_path / f"straight/out/{seed}/model.safetensors"))
        resumed = load_file(str(killed / f"out/{seed}/model.safetensors"))
        for name in straight:
            assert torch.equal(straight[name], resumed[name]), (seed, name)
    curves = [
        json.loads((root / "out/seed_0/live/metrics.json").read_text())
        for root in (tmp_path / "straight", killed)
    ]
    assert curves[0] == curves[1]
    rows = (killed / "out/seed_0/live/plots/metrics/val/acc.tsv").read_text().strip().splitlines()
    assert len(rows) == 1 + PARAMS["epochs"]  # each epoch logged once despite two kills


class _Crash(Exception):
    pass


def _crash_at(step):
    def hook(global_step):
        if global_step == step:
            raise _Crash

    return hook


@pytest.mark.parametrize(
    "overrides",
    [
        {"optimizer": {"kind": "sgd", "lr": 0.05, "momentum": 0.9}, "checkpoint_every_steps": 4},
        {
            "arch": None,
            "loss": {"ce": {"kind": "ce", "weight": 1.0}, "mutual": {"kind": "mutual", "weight": 1.0}},
            "cohort": {
                "members": {
                    "a": {"arch": {"kind": "mlp", "hidden": [16]}},
                    "b": {"arch": {"kind": "cnn", "channels": [4], "embed": 8}},
                }
            },
        },
        {"precision": "fp16", "accumulate_steps": 2, "arch": {"kind": "mlp", "hidden": [16], "dropout": 0.2}},
    ],
    ids=["sgd-momentum", "cohort-mutual", "fp16-scaler-accumulation"],
)
def test_a_crashed_run_resumes_to_identical_weights(tmp_path, overrides):
    prepared = make_prepared()
    cache = make_cache(prepared)
    params = student_params(**{"epochs": 2, "checkpoint_every_steps": 3, **overrides})
    straight = train_from_reader(
        "s", params, cache, prepared, tmp_path / "a/out", tmp_path / "a/scratch", progress=False, threads=1
    )
    with pytest.raises(_Crash):
        train_from_reader(
            "s",
            params,
            cache,
            prepared,
            tmp_path / "b/out",
            tmp_path / "b/scratch",
            progress=False,
            on_step=_crash_at(8),
        )
    resumed = train_from_reader(
        "s", params, cache, prepared, tmp_path / "b/out", tmp_path / "b/scratch", progress=False
    )
    assert straight["models"] == resumed["models"]
    for weights in (tmp_path / "a/out").rglob("model.safetensors"):
        other = load_file(str(tmp_path / "b/out" / weights.relative_to(tmp_path / "a/out")))
        assert all(torch.equal(value, other[name]) for name, value in load_file(str(weights)).items())


class _Clock:
    """A monotonic clock that advances one second each time it is read."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        self.now += 1.0
        return self.now


def _checkpointed_steps(monkeypatch, params, tmp_path, on_step=None):
    import pipeline.train.loop as loop

    steps, real_save = [], loop.save_checkpoint

    def counting_save(directory, state, *args):
        steps.append(state.global_step)
        real_save(directory, state, *args)

    monkeypatch.setattr(loop, "save_checkpoint", counting_save)
    prepared = make_prepared()
    train_from_reader(
        "kd", params, make_cache(prepared), prepared, tmp_path / "out", tmp_path / "scratch",
        progress=False, on_step=on_step,
    )  # fmt: skip
    return steps


def test_a_quick_run_writes_one_checkpoint_per_seed_not_one_per_epoch(tmp_path, monkeypatch):
    params = student_params(epochs=6, seeds=[0, 1])  # 6 steps an epoch, 36 steps a seed
    assert _checkpointed_steps(monkeypatch, params, tmp_path) == [36, 36]  # only when each seed ends


def test_checkpoints_come_every_checkpoint_every_seconds_mid_epoch_too(tmp_path, monkeypatch):
    import pipeline.train.loop as loop

    monkeypatch.setattr(loop.time, "monotonic", _Clock())  # one second per step
    params = student_params(epochs=2, checkpoint_every_seconds=4)
    steps = _checkpointed_steps(monkeypatch, params, tmp_path)
    assert steps[-1] == 12 and len(steps) >= 3
    assert all(0 < b - a <= 4 for a, b in zip(steps, steps[1:]))


def test_a_run_crashed_after_a_timed_checkpoint_resumes_to_identical_weights(tmp_path, monkeypatch):
    import pipeline.train.loop as loop

    params = student_params(epochs=2, checkpoint_every_seconds=5)
    prepared = make_prepared()
    straight = train_from_reader(
        "kd", params, make_cache(prepared), prepared, tmp_path / "a/out", tmp_path / "a/scratch",
        progress=False,
    )  # fmt: skip
    monkeypatch.setattr(loop.time, "monotonic", _Clock())
    with pytest.raises(_Crash):
        _checkpointed_steps(monkeypatch, params, tmp_path / "b", on_step=_crash_at(9))
    saved = json.loads((tmp_path / "b/scratch/seed_0/checkpoint.json").read_text())
    assert 0 < saved["global_step"] < 9
    resumed = train_from_reader(
        "kd", params, make_cache(prepared), prepared, tmp_path / "b/out", tmp_path / "b/scratch",
        progress=False,
    )  # fmt: skip
    assert straight["models"] == resumed["models"]
    weights = load_file(str(tmp_path / "a/out/seed_0/model.safetensors"))
    again = load_file(str(tmp_path / "b/out/seed_0/model.safetensors"))
    assert all(torch.equal(value, again[name]) for name, value in weights.items())
