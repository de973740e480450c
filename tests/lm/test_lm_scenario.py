"""The LM scenario end to end on a tiny config: every command of scenarios/lm/dvc.yaml, run as DVC
would run it (in the scenario's directory layout, through the real `distillery` CLI), from the corpus
to the leaderboard, with the shipped params.yaml shrunk to seconds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

PROJECT = Path(__file__).resolve().parents[2]
SCENARIO = PROJECT / "scenarios" / "lm"
BIN = Path(sys.executable).parent
VOCAB, LENGTH = 300, 24
CACHES, STUDENTS = ("dense", "sampled"), ("sampled",)  # the leaderboard's teacher row reads the dense cache


def tiny_params() -> dict:
    """The shipped params.yaml with a few sentences, a one-layer teacher of 5 steps, two caches and
    one one-epoch student."""
    params = yaml.safe_load((SCENARIO / "params.yaml").read_text())
    params["text"].update(vocab_size=VOCAB, max_length=LENGTH, sentences={"train": 48, "val": 8, "test": 12})
    params["lm_teacher"].update(layers=1, width=16, heads=2)
    params["lm_teacher"]["train"].update(steps=5, batch_size=4, warmup_steps=1)
    params["teacher"]["max_length"] = LENGTH
    params["caches"] = {name: params["caches"][name] for name in CACHES}
    students = {}
    for name in STUDENTS:
        student = params["students"][name]
        student["arch"].update(vocab_size=VOCAB, layers=1, width=16, context=LENGTH)
        student.update(epochs=1, batch_size=16)
        students[name] = student
    params["students"] = students
    params["evaluate"]["latency"] = {"batch_sizes": [1], "providers": ["CPUExecutionProvider"], "repeats": 1}
    return params


def commands(params: dict) -> list[str]:
    """Every stage's command in dvc.yaml order, `foreach` stages expanded over the params' entries."""
    stages = yaml.safe_load((SCENARIO / "dvc.yaml").read_text())["stages"]
    found = []
    for stage in stages.values():
        if "foreach" not in stage:
            found.append(stage["cmd"])
            continue
        section = stage["foreach"].removeprefix("${").removesuffix("}")
        for key, item in params[section].items():
            command = stage["do"]["cmd"].replace("${key}", key)
            found.append(command.replace("${item.cache}", str(item.get("cache", ""))))
    return found


@pytest.mark.slow
def test_the_lm_scenario_runs_from_corpus_to_leaderboard(tmp_path):
    if not (BIN / "distillery").exists():
        pytest.skip(f"needs distillery in {BIN} (`make setup`)")
    params = tiny_params()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {
        **os.environ,
        "PYTHONPATH": str(PROJECT),
        "OMP_NUM_THREADS": "1",
        "PATH": f"{BIN}:{os.environ['PATH']}",
    }
    for command in commands(params):
        result = subprocess.run(
            command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, f"`{command}` failed:\n{(result.stdout + result.stderr)[-3000:]}"

    whole_report = json.loads((tmp_path / "data/caches/sampled/report.json").read_text())
    report = whole_report["token_form"]
    assert report["form"] == "sampled" and report["vocab_size"] == VOCAB
    assert report["bytes_per_token_ragged"] < report["dense_bytes_per_token"]
    stages = yaml.safe_load((SCENARIO / "dvc.yaml").read_text())["stages"]
    assert stages["export"]["cmd"] == "distillery export --params-students"  # one process for all students
    assert stages["evaluate"]["cmd"] == "distillery evaluate --params-students"
    for name in STUDENTS:
        assert (tmp_path / f"data/export/{name}").is_dir()
        metrics = json.loads((tmp_path / f"data/evaluate/{name}/metrics.json").read_text())
        assert metrics["tokens"] > 0 and metrics["teacher"] == f"data/caches/{name}/store"
        assert 1.0 < metrics["perplexity"]["mean"] < 10 * VOCAB and metrics["latency_ms"]
        assert 0.0 <= metrics["top1_agreement"]["mean"] <= 1.0 and metrics["kl_to_teacher"]["mean"] >= 0.0
    sampled = json.loads((tmp_path / "data/evaluate/sampled/metrics.json").read_text())
    assert sampled["cache_bytes_per_token"] == pytest.approx(whole_report["bytes_per_token"], rel=1e-9)
    board = (tmp_path / "data/leaderboard/leaderboard.md").read_text()
    assert (
        "| student | family / recipe | params | learned from | cache B/token | perplexity | top-1 agr. "
        "| KL to teacher |" in board
    )
    assert "acc (mean" not in board  # an LM board shows no classification column
    rows = [line.split(" | ")[0].strip("| ") for line in board.splitlines() if line.startswith("| ")]
    assert rows[2] == "teacher" and set(rows[3:]) == set(STUDENTS)
