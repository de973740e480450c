"""The recipe as the leaderboard describes it, and ONNX Runtime latency with an honest "n/a"."""

from __future__ import annotations

from pipeline.evaluate.latency import NOT_AVAILABLE, onnx_latency_ms
from pipeline.evaluate.recipe import recipe_summary, recipe_temperature
from pipeline.export.params import ExportParams
from pipeline.export.run import export_seed

from .conftest import save_student


def test_recipe_summary_names_architecture_weights_and_temperature():
    recipe = {
        "arch": {"kind": "cnn", "channels": [16, 32], "embed": 64},
        "loss": {
            "ce": {"kind": "ce", "weight": 0.5},
            "kd": {"kind": "hinton", "weight": 0.5, "temperature": 4.0},
        },
    }
    assert recipe_summary(recipe) == "cnn channels=16x32 embed=64 | 0.5 ce + 0.5 hinton(T=4)"
    assert recipe_temperature(recipe) == 4.0
    assert recipe_temperature({"loss": {"ce": {"kind": "ce"}}}) is None
    assert recipe_summary({}) == "- | -"


def test_latency_is_measured_on_cpu_and_missing_providers_read_n_a(tmp_path):
    export_seed(save_student(tmp_path / "seed_0"), tmp_path / "out", ExportParams())
    latency = onnx_latency_ms(
        tmp_path / "out" / "model.onnx",
        (1, 64),
        ("CPUExecutionProvider", "NoSuchExecutionProvider"),
        warmup=1,
        repeats=3,
    )
    assert set(latency) == {
        "latency_ms_cpu_b1",
        "latency_ms_cpu_b64",
        "latency_ms_nosuch_b1",
        "latency_ms_nosuch_b64",
    }
    assert latency["latency_ms_cpu_b1"] > 0 and latency["latency_ms_cpu_b64"] > 0
    assert latency["latency_ms_nosuch_b1"] == NOT_AVAILABLE == "n/a"
