"""The three stages through the command line, on tiny files (the cache as a MemoryCache)."""

from __future__ import annotations

import json

import yaml

from pipeline.data.prepared import write_prepared
from stages.cli import main

from .conftest import save_student


def test_export_evaluate_and_leaderboard_stages_chain_through_their_files(
    tmp_path, prepared_and_cache, monkeypatch
):
    prepared, cache = prepared_and_cache
    write_prepared(prepared, tmp_path / "prepared")
    for seed in (0, 1):
        save_student(tmp_path / "train" / "kd" / f"seed_{seed}", seed)
    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump(
            {
                "students": {
                    "kd": {
                        "arch": {"kind": "mlp", "hidden": [16]},
                        "loss": {"kd": {"kind": "hinton", "weight": 1.0, "temperature": 2.0}},
                    }
                },
                "evaluate": {"latency": {"warmup": 1, "repeats": 2}},
                "export": {"int8": True},
            }
        )
    )
    import stages.evaluate

    monkeypatch.setattr(stages.evaluate, "open_cache", lambda path, dataset_fingerprint=None: cache)
    common = ["--params", str(params), "--train-dir", str(tmp_path / "train")]
    assert (
        main(
            [
                "export",
                "--student",
                "kd",
                *common,
                "--prepared",
                str(tmp_path / "prepared"),
                "--out",
                str(tmp_path / "export"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "evaluate",
                "--student",
                "kd",
                *common,
                "--prepared",
                str(tmp_path / "prepared"),
                "--export-dir",
                str(tmp_path / "export"),
                "--out",
                str(tmp_path / "evaluate" / "kd"),
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "evaluate" / "kd" / "metrics.json").read_text())
    assert metrics["seeds"] == 2 and metrics["temperature"] == 2.0 and "accuracy_change" in metrics["int8"]
    assert (
        main(
            [
                "leaderboard",
                "--params",
                str(params),
                "--no-teacher",
                "--evaluate-dir",
                str(tmp_path / "evaluate"),
                "--out",
                str(tmp_path / "leaderboard"),
            ]
        )
        == 0
    )
    assert "| kd |" in (tmp_path / "leaderboard" / "leaderboard.md").read_text()


def test_a_student_that_was_never_trained_is_named_with_the_fix(tmp_path, capsys):
    (tmp_path / "params.yaml").write_text("export: {}\n")
    code = main(
        [
            "export",
            "--student",
            "ghost",
            "--params",
            str(tmp_path / "params.yaml"),
            "--train-dir",
            str(tmp_path / "train"),
        ]
    )
    assert code == 1
    assert "ExportError" in (err := capsys.readouterr().err) and "dvc repro train" in err
