"""`sweep_students`: every student a Dask task on a LocalCluster; one failing student loses nothing."""

from __future__ import annotations

import json

from pipeline.cluster.sweep import sweep_students, write_sweep_report
from tests.cluster.student_project import students


def test_sweep_trains_every_student_on_a_local_cluster(local_client, project, tmp_path):
    prepared_dir, cache_dir = project
    results = sweep_students(
        local_client,
        students(cache_dir),
        prepared_dir,
        tmp_path / "train",
        tmp_path / "scratch",
        progress=False,
    )
    assert [name for name, r in results.items() if r.ok] == ["kd", "ce"]
    for name in ("kd", "ce"):
        assert (tmp_path / "train" / name / "seed_0" / "model.safetensors").exists()
        summary = json.loads((tmp_path / "train" / name / "summary.json").read_text())
        assert results[name].value["models"] == summary["models"]
    assert len({r.worker for r in results.values()}) >= 1


def test_a_student_that_raises_does_not_lose_the_others(local_client, project, tmp_path):
    prepared_dir, cache_dir = project
    grid = students(cache_dir)
    grid["broken"] = grid["kd"].model_copy(update={"cache": str(tmp_path / "no-such-cache")})
    results = sweep_students(
        local_client, grid, prepared_dir, tmp_path / "train", tmp_path / "scratch", progress=False
    )
    assert results["kd"].ok and results["ce"].ok
    assert (tmp_path / "train" / "ce" / "summary.json").exists()
    assert not results["broken"].ok and "no-such-cache" in results["broken"].error
    assert not (tmp_path / "train" / "broken").exists()
    report = write_sweep_report(results, tmp_path / "sweep.json")
    assert report["failed"] == ["broken"] and report["ok"] == ["kd", "ce"]
    assert json.loads((tmp_path / "sweep.json").read_text())["students"]["broken"]["error"]
