"""`distillery sweep` end to end: params in, a Dask LocalCluster, outputs and a report out."""

from __future__ import annotations

import json

import yaml

from stages.cli import main
from tests.cluster.student_project import students


def write_params(path, cache_dir, sweep_students):
    grid = {name: params.model_dump(mode="json") for name, params in students(cache_dir).items()}
    grid["broken"] = {**grid["kd"], "cache": str(path.parent / "missing-cache")}
    path.write_text(
        yaml.safe_dump(
            {
                "students": grid,
                "sweep": {"students": sweep_students},
                "cluster": {"kind": "local", "workers": 2, "threads_per_worker": 1, "memory": "2GB"},
            }
        )
    )


def test_sweep_command_trains_the_selected_students_and_reports_the_failed_one(project, tmp_path, capsys):
    prepared_dir, cache_dir = project
    write_params(tmp_path / "params.yaml", cache_dir, ["ce", "broken"])
    code = main(
        [
            "sweep",
            "--params",
            str(tmp_path / "params.yaml"),
            "--prepared",
            str(prepared_dir),
            "--out",
            str(tmp_path / "train"),
            "--scratch",
            str(tmp_path / "scratch"),
            "--report",
            str(tmp_path / "report.json"),
            "--no-progress",
        ]
    )
    assert code == 1
    report = json.loads((tmp_path / "report.json").read_text())
    assert (report["ok"], report["failed"]) == (["ce"], ["broken"])
    assert (tmp_path / "train" / "ce" / "summary.json").exists()
    out, err = capsys.readouterr()
    assert "sweep: 2 students on a local cluster: ce, broken" in out
    assert "sweep: broken: FAILED" in err and "missing-cache" in err


def test_sweep_with_no_students_selected_is_a_quick_no_op(project, tmp_path, capsys):
    prepared_dir, cache_dir = project
    write_params(tmp_path / "params.yaml", cache_dir, [])
    code = main(["sweep", "--params", str(tmp_path / "params.yaml"), "--report", str(tmp_path / "r.json")])
    assert code == 0
    assert json.loads((tmp_path / "r.json").read_text()) == {"ok": [], "failed": [], "students": {}}
    assert "nothing to train" in capsys.readouterr().out


def test_an_unknown_student_name_exits_1_listing_the_valid_ones(project, tmp_path, capsys):
    prepared_dir, cache_dir = project
    write_params(tmp_path / "params.yaml", cache_dir, ["kdd"])
    assert (
        main(["sweep", "--params", str(tmp_path / "params.yaml"), "--report", str(tmp_path / "r.json")]) == 1
    )
    assert "no student named 'kdd'" in capsys.readouterr().err
