"""The accuracy-vs-labels curve: every (recipe, budget, seed) from one on-disk cache, its files,
clipping, held-back labels."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml

from pipeline.cache.batch import SPLITS
from pipeline.cache.params import CacheParams
from pipeline.cache.writer import build_cache
from pipeline.data.prepare import TEACHER_TRAIN_DIR
from pipeline.data.prepared import load_prepared, make_prepared, write_prepared
from pipeline.train.label_curve import LabelCurveError, LabelCurveParams, point_params, run_label_curve
from pipeline.train.params import validate_students
from stages.cli import main
from tests.train.helpers import LinearTeacher, make_cache
from tests.train.helpers import make_prepared as synthetic_prepared

TRAIN, UNLABELLED = SPLITS.index("train"), SPLITS.index("unlabelled")


STUDENTS = {
    "ce_only": {
        "arch": {"kind": "mlp", "hidden": [8]},
        "epochs": 1,
        "seeds": [0],
        "train_rows": "labelled",
        "loss": {"ce": {"kind": "ce", "weight": 1.0}},
    },
    "kd": {
        "arch": {"kind": "mlp", "hidden": [8]},
        "epochs": 1,
        "seeds": [0],
        "loss": {"ce": {"kind": "ce", "weight": 0.5}, "kd": {"kind": "hinton", "weight": 0.5}},
    },
}
CURVE = {"per_class": [2, 5, "all"], "students": ["ce_only", "kd"], "seeds": [0, 1], "steps": 6}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Prepared data whose budget held back the labels of 100 train rows (kept in teacher_train), and
    its cache."""
    root = tmp_path_factory.mktemp("curve")
    data = synthetic_prepared({"train": 160, "val": 40, "test": 30, "unlabelled": 0})
    train = np.flatnonzero(data.split == TRAIN)
    held = train[60:]
    split, label = data.split.copy(), data.label.copy()
    split[held], label[held] = UNLABELLED, -1
    write_prepared(make_prepared(data.sample_id, split, label, data.inputs, 10), root / "prepared")
    write_prepared(
        make_prepared(data.sample_id[train], data.split[train], data.label[train], data.inputs[train], 10),
        root / "prepared" / TEACHER_TRAIN_DIR,
    )
    prepared = load_prepared(root / "prepared")
    build_cache(
        prepared,
        LinearTeacher(),
        "a" * 64,
        prepared.fingerprint,
        CacheParams(rows_per_chunk=64, chunks_per_shard=2, batch_size=64),
        root / "cache/store",
        root / "cache/scratch",
        progress=False,
    )
    (root / "params.yaml").write_text(yaml.safe_dump({"students": STUDENTS, "label_curve": CURVE}))
    return root


def test_the_stage_writes_every_run_the_means_the_dvc_plot_and_the_png_from_one_cache(project, capsys):
    out = project / "label_curve"
    assert (
        main(
            [
                "label-curve",
                "--params",
                str(project / "params.yaml"),
                "--prepared",
                str(project / "prepared"),
                "--cache",
                str(project / "cache/store"),
                "--out",
                str(out),
                "--scratch",
                str(project / "scratch"),
                "--no-progress",
            ]
        )
        == 0
    )
    assert "label-curve: kd:" in capsys.readouterr().out
    runs = list(csv.DictReader((out / "curve.csv").open()))
    assert len(runs) == 2 * 3 * 2 and {r["student"] for r in runs} == {"ce_only", "kd"}
    labels = sorted({int(r["labels"]) for r in runs})
    available = 160  # 60 labelled in the cache + 100 held back
    assert labels[-1] == available and labels[0] <= 20
    summary = json.loads((out / "curve.json").read_text())
    assert set(summary) == {"ce_only", "kd"} and summary["kd"][str(available)]["seeds"] == 2
    assert all(0.0 <= p["mean"] <= 1.0 for points in summary.values() for p in points.values())
    plot = list(csv.DictReader((out / "plot.csv").open()))
    assert [int(r["labels"]) for r in plot] == labels and set(plot[0]) == {"labels", "ce_only", "kd"}
    assert (out / "curve.png").read_bytes()[:4] == b"\x89PNG"
    assert not (project / "scratch").exists()


def test_without_held_back_labels_a_large_budget_clips_to_the_cache_labels(tmp_path):
    prepared = synthetic_prepared({"train": 60, "val": 20, "test": 20, "unlabelled": 20})
    students = validate_students({"kd": STUDENTS["kd"]})
    curve = LabelCurveParams(per_class=[1000], students=["kd"], seeds=[0], held_back=False, steps=2)
    rows = run_label_curve(curve, students, make_cache(prepared), prepared, tmp_path, progress=False)
    assert rows[0]["labels"] == 60 and rows[0]["clipped"] is True
    present = sorted(set(prepared.label[prepared.split == TRAIN].tolist()))
    assert rows[0]["clipped_classes"] == [str(c) for c in present]  # every class, by its name


def test_clipped_classes_are_named_by_the_users_class_names(tmp_path):
    from dataclasses import replace

    prepared = synthetic_prepared({"train": 60, "val": 20, "test": 20, "unlabelled": 20})
    names = tuple(f"c{c:02d}" for c in range(prepared.num_classes))
    named = replace(prepared, class_names=names)
    students = validate_students({"kd": STUDENTS["kd"]})
    curve = LabelCurveParams(per_class=[1000], students=["kd"], seeds=[0], held_back=False, steps=2)
    rows = run_label_curve(curve, students, make_cache(prepared), named, tmp_path, progress=False)
    present = sorted(set(prepared.label[prepared.split == TRAIN].tolist()))
    assert rows[0]["clipped_classes"] == [names[c] for c in present]


def test_every_run_gets_the_same_number_of_steps_and_unknown_students_are_named():
    base = validate_students({"ce": STUDENTS["ce_only"]})["ce"]
    curve = LabelCurveParams(steps=360)
    assert point_params(base, 5, curve, train_rows=50).epochs == 360  # 1 step per epoch
    assert point_params(base, None, curve, train_rows=1169).epochs == 20  # 18 steps per epoch
    assert point_params(base, 5, curve, 50).label_budget.per_class == 5
    with pytest.raises(LabelCurveError, match="no student named nope"):
        run_label_curve(LabelCurveParams(students=["nope"]), {"ce": base}, None, None, "unused")


def test_the_runs_on_a_dask_cluster_are_the_models_trained_in_process(project, tmp_path):
    from distributed import Client, LocalCluster

    from pipeline.train.budget import held_back_labels
    from pipeline.train.label_curve import run_label_curve_on_cluster
    from pipeline.train.run import open_student_cache

    students, curve = validate_students(STUDENTS), LabelCurveParams(**CURVE)
    prepared = load_prepared(project / "prepared")
    reader = open_student_cache(project / "cache/store", prepared.fingerprint)
    pool = held_back_labels(project / "prepared")
    in_process = run_label_curve(curve, students, reader, prepared, tmp_path / "a", pool, progress=False)
    with (
        LocalCluster(n_workers=1, processes=False, threads_per_worker=1, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        on_cluster = run_label_curve_on_cluster(
            client,
            curve,
            students,
            project / "prepared",
            project / "cache/store",
            tmp_path / "b",
            progress=False,
        )
    assert on_cluster == in_process and len(on_cluster) == 2 * 3 * 2
