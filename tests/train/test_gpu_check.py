"""benchmarks/gpu_check.py on the CPU: one JSON whatever happens, each section on its own."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks/gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_cpu_run_of_the_training_check_writes_its_figures(gpu_check, tmp_path):
    out = tmp_path / "check.json"
    assert gpu_check.main(["--device", "cpu", "--only", "cuda_vs_cpu", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["environment"]["device_asked"] == "cpu" and "missing_packages" in report["environment"]
    section = report["sections"]["cuda_vs_cpu"]
    assert section["ok"] and section["fp32_max_relative_difference"] == 0.0  # the CPU against itself
    assert section["fp32_ok"]


def test_a_failing_section_records_its_error_and_the_next_one_still_runs(gpu_check, tmp_path, monkeypatch):
    def broken(device, size, work):
        raise ModuleNotFoundError("No module named 'zarr'")

    monkeypatch.setitem(gpu_check.SECTIONS, "cache", broken)
    monkeypatch.setitem(gpu_check.SECTIONS, "student_steps", lambda device, size, work: {"steps": 1})
    out = tmp_path / "check.json"
    gpu_check.main(["--device", "cpu", "--only", "cache", "student_steps", "--out", str(out)])
    sections = json.loads(out.read_text())["sections"]
    assert sections["cache"]["ok"] is False
    assert sections["cache"]["error"] == "ModuleNotFoundError: No module named 'zarr'"
    assert sections["student_steps"] == {
        "ok": True,
        "steps": 1,
        "seconds": sections["student_steps"]["seconds"],
    }


def test_a_section_past_its_time_limit_is_stopped_and_recorded(gpu_check, tmp_path, monkeypatch):
    import time

    monkeypatch.setitem(gpu_check.LIMITS, "cache", 1)
    monkeypatch.setitem(gpu_check.SECTIONS, "cache", lambda device, size, work: time.sleep(30))
    out = tmp_path / "check.json"
    gpu_check.main(["--device", "cpu", "--only", "cache", "--out", str(out)])
    section = json.loads(out.read_text())["sections"]["cache"]
    assert section["error"] == "SectionTimeout: ran past its 1 s limit" and section["seconds"] < 10
