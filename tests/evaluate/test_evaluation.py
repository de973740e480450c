"""Evaluating trained students: the join with the cache, metrics per seed, mean ± std, files written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.evaluate.evaluation import (
    EvaluationError,
    calibration_tsv,
    evaluate_model,
    join_split,
    metrics_report,
    predict_logits,
    read_calibration_tsv,
)
from pipeline.evaluate.metrics import accuracy, mean_kl
from pipeline.evaluate.params import EvaluateParams, LatencyParams
from pipeline.evaluate.plots import reliability_diagram
from pipeline.evaluate.run import MissingExportError, evaluate_student_dir
from pipeline.export.params import ExportParams
from pipeline.export.run import export_seed, export_student_dir
from pipeline.students.trained import load_trained_student

from .conftest import NUM_CLASSES, save_student

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_the_test_split_joins_cache_and_prepared_data_by_sample_id(prepared_and_cache):
    prepared, cache = prepared_and_cache
    data = join_split(prepared, cache, "test")
    assert len(data.sample_id) == 40 and int(data.labelled.sum()) == 36
    by_id = {int(s): i for i, s in enumerate(prepared.sample_id)}
    rows = [by_id[int(s)] for s in data.sample_id]
    np.testing.assert_array_equal(data.inputs, prepared.inputs[rows])
    np.testing.assert_array_equal(data.labels, prepared.label[rows])
    assert data.teacher_logits.dtype == np.float32 and data.teacher_logits.shape == (40, NUM_CLASSES)


def test_a_cache_of_other_data_is_refused_naming_the_ids(prepared_and_cache):
    prepared, cache = prepared_and_cache
    from pipeline.cache.reader import MemoryCache

    foreign = MemoryCache(cache.sample_id + 10_000, cache.split, cache.label, cache.logits)
    with pytest.raises(EvaluationError, match="absent from the prepared data.*dvc repro cache"):
        join_split(prepared, foreign, "test")


def test_every_seed_is_scored_and_summarised_as_mean_and_sample_std(tmp_path, prepared_and_cache):
    prepared, cache = prepared_and_cache
    data = join_split(prepared, cache, "test")
    modules = {f"seed_{k}": load_trained_student(save_student(tmp_path / f"seed_{k}", k)) for k in range(3)}
    evaluation = evaluate_model(modules, data, temperature=4.0)
    assert list(evaluation.per_seed) == ["seed_0", "seed_1", "seed_2"]
    labelled = data.labelled
    accuracies = []
    for name, module in modules.items():
        logits = predict_logits(module, data.inputs)
        accuracies.append(accuracy(logits[labelled], data.labels[labelled]))
        assert evaluation.per_seed[name]["accuracy"] == pytest.approx(accuracies[-1])
        assert evaluation.per_seed[name]["kl_T"] == pytest.approx(mean_kl(data.teacher_logits, logits, 4.0))
    summary = evaluation.summary()
    assert summary["accuracy"]["mean"] == pytest.approx(np.mean(accuracies))
    assert summary["accuracy"]["std"] == pytest.approx(np.std(accuracies, ddof=1))
    assert set(summary) == {"accuracy", "top5", "nll", "ece", "agreement", "kl_T1", "kl_T"}

    report = metrics_report("kd", evaluation, data, 1234, "mlp | ce", 4.0, {"latency_ms_cpu_b1": 0.1})
    assert report["params"] == 1234 and report["seeds"] == 3 and report["labelled_rows"] == 36
    assert report["latency_ms"] == {"cpu_b1": 0.1}
    json.dumps(report, allow_nan=False)


def test_reliability_diagram_and_calibration_table_are_written(tmp_path, prepared_and_cache):
    prepared, cache = prepared_and_cache
    data = join_split(prepared, cache, "test")
    module = load_trained_student(save_student(tmp_path / "seed_0"))
    evaluation = evaluate_model({"seed_0": module}, data)
    path = reliability_diagram(evaluation.bins, tmp_path / "plots" / "reliability.png")
    assert path.read_bytes().startswith(PNG_MAGIC)
    again = read_calibration_tsv(calibration_tsv(evaluation.bins))["seed_0"]
    np.testing.assert_array_equal(again.count, evaluation.bins["seed_0"].count)
    assert again.ece == pytest.approx(evaluation.bins["seed_0"].ece, abs=1e-5)


def test_evaluate_writes_metrics_with_onnx_latency_and_the_int8_change(tmp_path, prepared_and_cache):
    prepared, cache = prepared_and_cache
    data = join_split(prepared, cache, "test")
    seeds = [save_student(tmp_path / "train" / "kd" / f"seed_{k}", k) for k in range(2)]
    labelled = data.labelled
    export_seed(
        seeds[0],
        tmp_path / "export" / "kd",
        ExportParams(int8=True),
        (data.inputs[labelled], data.labels[labelled]),
    )
    params = EvaluateParams(latency=LatencyParams(warmup=1, repeats=2))
    recipe = {
        "arch": {"kind": "mlp", "hidden": [16]},
        "loss": {
            "ce": {"kind": "ce", "weight": 0.5},
            "kd": {"kind": "hinton", "weight": 0.5, "temperature": 4},
        },
    }
    report = evaluate_student_dir(
        tmp_path / "train" / "kd", data, params, recipe, tmp_path / "export", tmp_path / "eval" / "kd"
    )["kd"]
    written = json.loads((tmp_path / "eval" / "kd" / "metrics.json").read_text())
    assert written == report
    assert written["recipe"] == "mlp hidden=16 | 0.5 ce + 0.5 hinton(T=4)" and written["temperature"] == 4.0
    assert isinstance(written["latency_ms"]["cpu_b1"], float) and isinstance(
        written["latency_ms"]["cpu_b64"], float
    )
    assert written["latency_ms"]["cuda_b1"] == "n/a" or isinstance(written["latency_ms"]["cuda_b1"], float)
    assert "accuracy_change" in written["int8"]
    assert set(written["per_seed"]) == {"seed_0", "seed_1"}
    assert (tmp_path / "eval" / "kd" / "reliability.png").read_bytes().startswith(PNG_MAGIC)
    assert (tmp_path / "eval" / "kd" / "calibration.tsv").exists()


def test_evaluate_without_the_export_says_to_run_it(tmp_path, prepared_and_cache):
    prepared, cache = prepared_and_cache
    data = join_split(prepared, cache, "test")
    save_student(tmp_path / "train" / "kd" / "seed_0")
    with pytest.raises(MissingExportError, match="dvc repro export"):
        evaluate_student_dir(
            tmp_path / "train" / "kd", data, EvaluateParams(), {}, tmp_path / "export", tmp_path / "eval"
        )
    assert not (tmp_path / "eval").exists()


def test_a_cohort_is_evaluated_member_by_member_into_the_student_files(tmp_path, prepared_and_cache):
    prepared, cache = prepared_and_cache
    data = join_split(prepared, cache, "test")
    wide = {"kind": "mlp", "hidden": [32]}
    save_student(tmp_path / "train" / "pair" / "small" / "seed_0", 0)
    save_student(tmp_path / "train" / "pair" / "wide" / "seed_0", 1, arch=wide)
    export_student_dir(tmp_path / "train" / "pair", tmp_path / "export", ExportParams())
    assert (tmp_path / "export" / "pair" / "wide" / "model.onnx").exists()
    recipe = {
        "loss": {"kd": {"kind": "hinton", "weight": 1.0, "temperature": 2.0}},
        "cohort": {
            "members": {
                "small": {"arch": {"kind": "mlp", "hidden": [16]}},
                "wide": {"arch": wide, "loss": {"ce": {"kind": "ce", "weight": 1.0}}},
            }
        },
    }
    params = EvaluateParams(latency=LatencyParams(warmup=0, repeats=1, batch_sizes=(1,)))
    evaluate_student_dir(
        tmp_path / "train" / "pair", data, params, recipe, tmp_path / "export", tmp_path / "eval" / "pair"
    )
    written = json.loads((tmp_path / "eval" / "pair" / "metrics.json").read_text())
    assert set(written["members"]) == {"pair/small", "pair/wide"}
    assert written["members"]["pair/small"]["temperature"] == 2.0
    assert (
        written["members"]["pair/wide"]["recipe"] == "mlp hidden=32 | 1 ce"
        and "temperature" not in written["members"]["pair/wide"]
    )
    labels = read_calibration_tsv((tmp_path / "eval" / "pair" / "calibration.tsv").read_text())
    assert list(labels) == ["small/seed_0", "wide/seed_0"]


def test_per_class_accuracy_is_reported_under_the_users_class_names(tmp_path, prepared_and_cache):
    from dataclasses import replace

    from pipeline.evaluate.evaluation import per_class_accuracy

    prepared, cache = prepared_and_cache
    names = tuple(f"class-{chr(97 + c)}" for c in range(NUM_CLASSES))
    data = join_split(replace(prepared, class_names=names), cache, "test")
    assert data.class_names == names and data.class_name(2) == "class-c"
    logits = np.eye(NUM_CLASSES, dtype=np.float32)[np.maximum(data.labels, 0)]
    logits[np.flatnonzero(data.labels == 1)[:1]] = np.eye(NUM_CLASSES)[0]  # one row of class 1 wrong
    per_class = per_class_accuracy(logits, data)
    present = sorted(set(data.labels[data.labelled].tolist()))
    assert list(per_class) == [names[c] for c in present]
    count = int((data.labels == 1).sum())
    assert per_class["class-b"] == pytest.approx((count - 1) / count)
    assert all(per_class[names[c]] == 1.0 for c in present if c != 1)

    modules = {f"seed_{k}": load_trained_student(save_student(tmp_path / f"seed_{k}", k)) for k in range(2)}
    report = metrics_report("kd", evaluate_model(modules, data), data, 10)
    assert list(report["per_class"]) == [names[c] for c in present]
    values = [
        float(np.mean(predict_logits(m, data.inputs)[data.labels == 3].argmax(1) == 3))
        for m in modules.values()
    ]
    assert report["per_class"]["class-d"]["mean"] == pytest.approx(np.mean(values))
    assert report["per_class"]["class-d"]["std"] == pytest.approx(np.std(values, ddof=1))


def test_ids_missing_from_the_prepared_data_are_named_as_the_user_wrote_them(prepared_and_cache):
    from dataclasses import replace

    from pipeline.cache.reader import MemoryCache

    prepared, cache = prepared_and_cache
    named = replace(prepared, user_id=np.array([f"img-{int(i)}" for i in prepared.sample_id], dtype=object))
    dropped = np.asarray(cache.sample_id)[np.asarray(cache.split) == 2][0]  # a test row of the cache
    keep = named.sample_id != dropped
    fewer = replace(named, sample_id=named.sample_id[keep], user_id=named.user_id[keep])
    with pytest.raises(EvaluationError, match=rf"\(first: key {int(dropped)}\)"):
        join_split(fewer, cache, "test")  # the prepared data no longer knows its name
    assert named.ids_of([dropped]) == [f"img-{int(dropped)}"]
    foreign = MemoryCache(cache.sample_id + 10_000, cache.split, cache.label, cache.logits)
    with pytest.raises(EvaluationError, match="first: key "):
        join_split(named, foreign, "test")
