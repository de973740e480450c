"""Bring your own models, through the real command line: a user nn.Module teacher exported with a
conv and an embed tap (weights in an external data file), adopted by `distillery teacher`, cached,
and a user factory student trained from that cache, exported and evaluated, by params alone."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from pipeline.cache.open import open_cache
from pipeline.teacher.session import teacher_sha256
from stages.cli import main
from tests.reliability.project import base_params, stage_argv, student_recipe, write_dataset, write_params

ROOT = Path(__file__).resolve().parents[2]
FACTORY = "examples.resnet_student:make_student"


@pytest.mark.slow
def test_a_user_teacher_and_a_user_student_go_through_every_stage(tmp_path):
    write_dataset(tmp_path / "prepared")
    export = tmp_path / "teacher_export" / "model.onnx"
    command = [
        sys.executable, "-m", "stages.cli", "export-teacher",
        "--factory", FACTORY, "--kwargs", '{"width": 8}', "--taps", "conv=layer2", "embed=pool",
        "--prepared", str(tmp_path / "prepared"), "--out", str(export),
        "--external-data", "always", "--parity-batch-sizes", "1", "7",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "parity passed on rows of" in result.stdout and "+ model.onnx.data" in result.stdout
    assert json.loads((export.parent / "export.json").read_text())["output_names"] == [
        "logits",
        "conv",
        "embed",
    ]

    params = base_params(tmp_path)
    params["teacher"]["onnx"] = str(export)
    params["students"] = {
        "own": student_recipe(
            tmp_path,
            arch={"kind": "python", "factory": FACTORY, "kwargs": {"width": 4}, "taps": {"embed": "pool"}},
        )
    }
    write_params(tmp_path / "params.yaml", params)
    teacher = ["teacher", "--params", str(tmp_path / "params.yaml"), "--prepared", str(tmp_path / "prepared")]
    assert main([*teacher, "--out", str(tmp_path / "teacher")]) == 0
    adopted = tmp_path / "teacher" / "model.onnx"
    assert (tmp_path / "teacher" / "model.onnx.data").read_bytes() == (
        export.parent / "model.onnx.data"
    ).read_bytes()
    assert teacher_sha256(adopted) != hashlib.sha256(adopted.read_bytes()).hexdigest()  # weights hashed too

    for stage in ("cache", "train", "export", "evaluate"):
        assert main(stage_argv(tmp_path, stage, student="own")) == 0, stage
    cache = open_cache(tmp_path / "cache" / "store", teacher_sha256=teacher_sha256(adopted))
    assert set(cache.schema.feature_shapes) == {"conv", "embed"}
    config = json.loads((tmp_path / "train" / "own" / "seed_0" / "student.json").read_text())
    assert config["arch"]["factory"] == FACTORY and config["tap_shapes"] == {"embed": [8]}
    exported = onnx.load(str(tmp_path / "export" / "own" / "model.onnx"))
    assert [o.name for o in exported.graph.output] == ["logits", "embed"]
    metrics = json.loads((tmp_path / "evaluate" / "own" / "metrics.json").read_text())
    assert "accuracy" in json.dumps(metrics)
