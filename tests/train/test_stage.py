"""`distillery train` end to end on an on-disk prepared dataset and Zarr cache."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from pipeline.data.prepared import load_prepared, make_prepared, write_prepared
from pipeline.students import list_trained, load_trained_student
from stages.cli import main
from tests.train.helpers import make_prepared as synthetic_prepared
from tests.train.helpers import write_disk_project


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    write_disk_project(root)
    students = {
        "kd": {
            "arch": {"kind": "mlp", "hidden": [16]},
            "epochs": 2,
            "seeds": [0, 1],
            "cache": str(root / "cache/store"),
            "loss": {"ce": {"kind": "ce", "weight": 0.5}, "kd": {"kind": "hinton", "weight": 0.5}},
        },
    }
    (root / "params.yaml").write_text(yaml.safe_dump({"students": students}))
    return root


def _train(root, *extra):
    return main(
        [
            "train",
            "--student",
            "kd",
            "--params",
            str(root / "params.yaml"),
            "--prepared",
            str(root / "prepared"),
            "--out",
            str(root / "train/kd"),
            "--scratch",
            str(root / "scratch/kd"),
            "--no-progress",
            *extra,
        ]
    )


def test_train_stage_writes_every_seed_and_a_summary_from_an_on_disk_cache(project, capsys):
    assert _train(project) == 0
    assert "train: kd: val acc per seed" in capsys.readouterr().out
    seeds = list_trained(project / "train/kd")["kd"]
    assert [p.name for p in seeds] == ["seed_0", "seed_1"]
    summary = json.loads((project / "train/kd/summary.json").read_text())
    student = load_trained_student(seeds[1])
    prepared = load_prepared(project / "prepared")
    val = prepared.rows("val", labelled_only=True)
    with torch.no_grad():
        predicted = student(torch.from_numpy(prepared.inputs[val])).logits.argmax(1).numpy()
    assert summary["models"]["kd"]["val_acc"]["1"] == pytest.approx(
        float((predicted == prepared.label[val]).mean())
    )


def test_train_stage_refuses_a_cache_built_on_other_data(project, tmp_path, capsys):
    data = synthetic_prepared(seed=7)
    write_prepared(make_prepared(data.sample_id, data.split, data.label, data.inputs, 10), tmp_path / "other")
    code = main(
        [
            "train",
            "--student",
            "kd",
            "--params",
            str(project / "params.yaml"),
            "--prepared",
            str(tmp_path / "other"),
            "--out",
            str(tmp_path / "out"),
            "--scratch",
            str(tmp_path / "scratch"),
        ]
    )
    assert code == 1
    assert "dvc repro cache" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
