"""A run killed with SIGKILL mid-epoch resumes from its last checkpoint to the same final weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from tests.train.helpers import make_cache, make_prepared, stand_in_builder, student_params
from pipeline.train.run import train_from_reader

ROOT = Path(__file__).resolve().parents[2]
# Dropout consumes the torch RNG every step, so the RNG state must be restored too.
PARAMS = {"arch": {"kind": "mlp", "hidden": [32, 16], "dropout": 0.2}, "epochs": 3, "checkpoint_every_steps": 2,
          "seeds": [0, 1]}

CHILD = """
import os, signal
from tests.train.helpers import make_cache, make_prepared, stand_in_builder, student_params
from pipeline.train.run import train_from_reader
params = student_params(**{params})
def kill_at(step):
    if step == {kill_step}:  # a real SIGKILL, at a known step (seed 0 is the first trained)
        os.kill(os.getpid(), signal.SIGKILL)
prepared = make_prepared()
train_from_reader("kd", params, make_cache(prepared), prepared, "{out}", "{scratch}", progress=False,
                  recipe_builder=stand_in_builder, on_step=kill_at, threads=1)
"""


def _killed_run(tmp_path, kill_step):
    code = CHILD.format(params=repr(PARAMS), kill_step=kill_step, out=tmp_path / "out", scratch=tmp_path / "scratch")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]


def test_training_killed_mid_epoch_resumes_to_identical_weights(tmp_path):
    prepared = make_prepared()
    cache = make_cache(prepared)
    params = student_params(**PARAMS)
    train_from_reader("kd", params, cache, prepared, tmp_path / "straight/out", tmp_path / "straight/scratch",
                      progress=False, recipe_builder=stand_in_builder)

    killed = tmp_path / "killed"
    _killed_run(killed, kill_step=9)     # epoch 1, step 3 of 6; last checkpoint at step 8
    checkpoint = json.loads((killed / "scratch/seed_0/checkpoint.json").read_text())
    assert (checkpoint["epoch"], checkpoint["step_in_epoch"]) == (1, 2)
    _killed_run(killed, kill_step=13)    # resumed, then killed again early in epoch 2
    assert not (killed / "out").exists()                     # nothing half-written in the declared output

    train_from_reader("kd", params, cache, prepared, killed / "out", killed / "scratch",
                      progress=False, recipe_builder=stand_in_builder)
    for seed in ("seed_0", "seed_1"):
        straight = load_file(str(tmp_path / f"straight/out/{seed}/model.safetensors"))
        resumed = load_file(str(killed / f"out/{seed}/model.safetensors"))
        for name in straight:
            assert torch.equal(straight[name], resumed[name]), (seed, name)
    curves = [json.loads((root / "out/seed_0/live/metrics.json").read_text()) for root in (tmp_path / "straight", killed)]
    assert curves[0] == curves[1]
    rows = (killed / "out/seed_0/live/plots/metrics/val/acc.tsv").read_text().strip().splitlines()
    assert len(rows) == 1 + PARAMS["epochs"]  # each epoch logged once despite two kills
