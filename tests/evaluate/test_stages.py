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


def test_the_sweeps_students_are_exported_evaluated_and_ranked_with_their_curves(
    tmp_path, prepared_and_cache, monkeypatch, capsys
):
    prepared, cache = prepared_and_cache
    write_prepared(prepared, tmp_path / "prepared")
    recipe = {"arch": {"kind": "mlp", "hidden": [16]}, "loss": {"ce": {"kind": "ce", "weight": 1.0}}}
    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump(
            {"students": {"kd": recipe, "ce": recipe}, "evaluate": {"latency": {"warmup": 1, "repeats": 2}}}
        )
    )
    for root, names in ((tmp_path / "train", ["kd"]), (tmp_path / "sweep" / "train", ["kd", "ce"])):
        for name in names:
            save_student(root / name / "seed_0", name=name)
            tsv = root / name / "seed_0" / "live" / "plots" / "metrics" / "val" / "acc.tsv"
            tsv.parent.mkdir(parents=True)
            tsv.write_text("step\tacc\n0\t0.5\n1\t0.75\n")
    import stages.evaluate

    monkeypatch.setattr(stages.evaluate, "open_cache", lambda path, dataset_fingerprint=None: cache)
    sweep, common = tmp_path / "sweep", ["--params", str(params), "--prepared", str(tmp_path / "prepared")]
    assert (
        main(
            ["export", "--all", *common, "--train-dir", str(sweep / "train"), "--out", str(sweep / "export")]
        )
        == 0
    )
    assert sorted(p.name for p in (sweep / "export").iterdir() if not p.name.startswith(".")) == ["ce", "kd"]
    argv = ["evaluate", "--all", *common, "--train-dir", str(sweep / "train")]
    assert main([*argv, "--export-dir", str(sweep / "export"), "--out", str(sweep / "evaluate")]) == 0
    assert json.loads((sweep / "evaluate" / "ce" / "metrics.json").read_text())["model"] == "ce"
    for stage in ("export", "evaluate"):
        main([stage, "--student", "kd", *common, "--train-dir", str(tmp_path / "train"),
              "--out", str(tmp_path / stage / ("kd" if stage == "evaluate" else "")),
              *(["--export-dir", str(tmp_path / "export")] if stage == "evaluate" else [])])  # fmt: skip
    board = tmp_path / "leaderboard"
    argv = [
        "leaderboard",
        "--params",
        str(params),
        "--no-teacher",
        "--evaluate-dir",
        str(tmp_path / "evaluate"),
    ]
    assert (
        main([*argv, "--train-dir", str(tmp_path / "train"), "--sweep-dir", str(sweep), "--out", str(board)])
        == 0
    )
    table = (board / "leaderboard.md").read_text()
    assert "| kd |" in table and "| sweep/kd |" in table and "| sweep/ce |" in table
    curves = sorted(p.relative_to(board / "curves").as_posix() for p in (board / "curves").rglob("*.tsv"))
    assert curves == ["val/acc/kd.tsv", "val/acc/sweep/ce.tsv", "val/acc/sweep/kd.tsv"]
    assert (board / "curves/val/acc/sweep/ce.tsv").read_text() == "step\tacc\n0\t0.5\n1\t0.75\n"


def test_an_empty_sweep_leaves_empty_outputs_and_a_line_saying_so(tmp_path, capsys):
    (tmp_path / "params.yaml").write_text("export: {}\n")
    (tmp_path / "sweep" / "train").mkdir(parents=True)
    argv = ["--params", str(tmp_path / "params.yaml"), "--train-dir", str(tmp_path / "sweep" / "train")]
    assert main(["export", "--all", *argv, "--out", str(tmp_path / "sweep" / "export")]) == 0
    assert "nothing to export" in capsys.readouterr().out
    assert list((tmp_path / "sweep" / "export").iterdir()) == []


def test_the_pipeline_exports_and_evaluates_the_students_of_params_yaml_in_one_process(
    tmp_path, prepared_and_cache, monkeypatch, capsys
):
    prepared, cache = prepared_and_cache
    write_prepared(prepared, tmp_path / "prepared")
    recipe = {"arch": {"kind": "mlp", "hidden": [16]}, "loss": {"ce": {"kind": "ce", "weight": 1.0}}}
    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump(
            {
                "students": {"kd": recipe, "ce": recipe},
                "chains": {"c": {"teacher": "kd"}},
                "evaluate": {"latency": {"warmup": 1, "repeats": 2}},
            }
        )
    )
    for name in ("kd", "ce", "removed"):  # `removed`: trained once, since taken out of params.yaml
        save_student(tmp_path / "train" / name / "seed_0", name=name)
    import stages.evaluate

    monkeypatch.setattr(stages.evaluate, "open_cache", lambda path, dataset_fingerprint=None: cache)
    common = ["--params", str(params), "--prepared", str(tmp_path / "prepared")]
    common += ["--train-dir", str(tmp_path / "train")]
    assert main(["export", "--params-students", *common, "--out", str(tmp_path / "export")]) == 0
    assert sorted(p.name for p in (tmp_path / "export").iterdir() if p.is_dir()) == ["ce", "kd"]
    assert main(["export", "--chain", "c", *common, "--out", str(tmp_path / "chain")]) == 0
    assert (tmp_path / "chain" / "kd" / "model.onnx").is_file()  # the chain's teacher, alone
    assert sorted(p.name for p in (tmp_path / "chain").iterdir() if p.is_dir()) == ["kd"]
    capsys.readouterr()
    assert main(["export", "--chain", "nope", *common, "--out", str(tmp_path / "none")]) == 1
    assert "no chain named 'nope' under `chains:`" in capsys.readouterr().err
    argv = ["evaluate", "--params-students", *common, "--export-dir", str(tmp_path / "export")]
    assert main([*argv, "--out", str(tmp_path / "evaluate")]) == 0
    assert sorted(p.name for p in (tmp_path / "evaluate").iterdir() if p.is_dir()) == ["ce", "kd"]
    assert json.loads((tmp_path / "evaluate" / "ce" / "metrics.json").read_text())["model"] == "ce"

    params.write_text(yaml.safe_dump({"students": {"kd": recipe, "new": recipe}}))
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "again")]) == 1
    err = capsys.readouterr().err
    assert "student 'new' of params.yaml has no trained seeds" in err and "dvc repro train@new" in err
    assert not (tmp_path / "again" / "kd").exists()  # refused before any student is scored
