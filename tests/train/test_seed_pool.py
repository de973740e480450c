"""A student's seeds trained side by side in forked processes are the seeds trained one after the
other, bit for bit; the pool is used only where it can be."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from pipeline.train.checkpoint import CheckpointError
from pipeline.train.run import train_from_reader
from pipeline.train.seed_pool import map_seeds, seed_processes
from tests.train.helpers import make_cache, make_prepared, student_params

PARAMS = {
    "arch": {"kind": "mlp", "hidden": [32, 16], "dropout": 0.2},  # dropout: the torch RNG every step
    "seeds": [0, 1, 2],
    "epochs": 2,
    "loss": {
        "ce": {"kind": "ce", "weight": 0.5},
        "kd": {"kind": "hinton", "weight": 0.5},
        "crd": {"kind": "crd", "weight": 0.1, "student_tap": "hidden1", "teacher_tap": "embed"},
    },
}


def _train(tmp_path, name: str, processes: int) -> dict:
    prepared = make_prepared()
    params = student_params(**PARAMS, seed_processes=processes)
    summary = train_from_reader(
        "student", params, make_cache(prepared), prepared, tmp_path / name, tmp_path / f"scratch-{name}",
        progress=False, fork_seeds=True,
    )  # fmt: skip
    return summary


def test_seeds_in_two_forked_processes_are_the_seeds_trained_one_after_the_other(tmp_path):
    alone, forked = _train(tmp_path, "alone", 1), _train(tmp_path, "forked", 2)
    assert alone["models"] == forked["models"]  # val accuracy per seed, mean, std, size
    for seed in (0, 1, 2):
        weights = [
            load_file(tmp_path / n / f"seed_{seed}" / "model.safetensors") for n in ("alone", "forked")
        ]
        assert weights[0].keys() == weights[1].keys()
        assert all(weights[0][k].equal(weights[1][k]) for k in weights[0])
        curves = [
            (tmp_path / n / f"seed_{seed}" / "live" / "metrics.json").read_text() for n in ("alone", "forked")
        ]
        assert json.loads(curves[0]) == json.loads(curves[1])
    assert not (tmp_path / "scratch-forked").exists()  # a finished student leaves no scratch


def test_the_pool_is_used_only_on_the_cpu_in_one_process_with_seeds_and_cores_to_spare(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert seed_processes(None, seeds=3, threads=1, device="cpu", world=1) == 2  # two cores
    assert seed_processes(None, seeds=3, threads=2, device="cpu", world=1) == 1  # a seed takes both
    assert seed_processes(None, seeds=1, threads=1, device="cpu", world=1) == 1
    assert seed_processes(4, seeds=3, threads=1, device="cpu", world=1) == 3  # never more than the seeds
    assert seed_processes(1, seeds=3, threads=1, device="cpu", world=1) == 1
    assert seed_processes(None, seeds=3, threads=1, device="cuda", world=1) == 1  # CUDA cannot fork
    assert seed_processes(None, seeds=3, threads=1, device="cpu", world=2) == 1  # DDP ranks


def _fails_on_seed_one(seed: int) -> int:
    if seed == 1:
        raise CheckpointError("seed 1: the cache went away")
    return seed * 10


def test_an_error_in_a_forked_seed_is_raised_as_it_was_raised():
    assert map_seeds(lambda seed: seed * 10, [0, 1, 2], processes=2) == {0: 0, 1: 10, 2: 20}
    with pytest.raises(CheckpointError, match="seed 1: the cache went away"):
        map_seeds(_fails_on_seed_one, [0, 1, 2], processes=2)
