"""The cache report: accuracy, ECE, entropy at T, the stored dtype's and the sparse form's KL error."""

from __future__ import annotations

import json

import numpy as np

from pipeline.cache.open import open_cache
from pipeline.cache.reader import MemoryCache
from pipeline.cache.report import cache_report, entropy_nats, expected_calibration_error, write_plots
from tests.cache.helpers import build, make_rows, small_params


def test_ece_matches_a_hand_computed_example():
    # confidences 0.9 (right), 0.9 (wrong), 0.6 (right): bins (0.8667, 0.9333] and (0.5333, 0.6]
    logits = np.log(np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4]]))
    labels = np.array([0, 1, 0])
    expected = 2 / 3 * abs(0.5 - 0.9) + 1 / 3 * abs(1.0 - 0.6)
    np.testing.assert_allclose(expected_calibration_error(logits, labels), expected, rtol=1e-9)


def test_entropy_is_log_classes_for_equal_logits_and_grows_with_temperature():
    np.testing.assert_allclose(entropy_nats(np.zeros((3, 10)), 1.0), np.log(10))
    logits = np.random.default_rng(0).normal(size=(20, 10)) * 3
    values = [entropy_nats(logits, t).mean() for t in (1, 2, 4, 8)]
    assert values == sorted(values)


def test_report_measures_fp16_error_and_top_k_error(tmp_path):
    rows = make_rows()
    result = build(tmp_path, rows, params=small_params(sparse_top_k=2))
    cache = open_cache(result.store_dir)
    report = cache_report(cache, result.reference_rows, result.reference_logits)
    assert report["stored_kl_vs_fp32"]["rows"] == 64
    assert 0 < report["stored_kl_vs_fp32"]["T1"]["p99"] < 1e-4
    assert report["stored_kl_vs_fp32"]["T8"]["mean"] < report["stored_kl_vs_fp32"]["T1"]["mean"]
    assert report["sparse"]["top_k"] == 2 and report["sparse"]["kl_vs_dense"]["T1"]["mean"] > 1e-3
    labelled = (rows.split == 2) & (rows.label >= 0)
    expected_accuracy = (cache.logits[labelled].astype(np.float32).argmax(1) == rows.label[labelled]).mean()
    np.testing.assert_allclose(report["teacher_accuracy"]["test"], expected_accuracy)
    assert "unlabelled" not in report["teacher_accuracy"]
    json.dumps(report, allow_nan=False)
    names = sorted(p.name for p in write_plots(cache, report, tmp_path / "plots"))
    assert names == ["entropy_vs_temperature.png", "kl_error.png", "reliability.png"]


def test_fp32_cache_has_zero_stored_error(tmp_path):
    result = build(tmp_path, params=small_params(logits_dtype="float32"))
    report = cache_report(open_cache(result.store_dir), result.reference_rows, result.reference_logits)
    assert report["stored_kl_vs_fp32"]["T1"]["max"] == 0.0 and report["stored_kl_goal_met"]


def test_report_of_a_memory_cache_without_reference():
    logits = np.eye(4, dtype=np.float32) * 5
    cache = MemoryCache(np.arange(4), np.zeros(4, np.int8), np.arange(4), logits)
    report = cache_report(cache)
    assert report["teacher_accuracy"] == {"train": 1.0} and report["stored_kl_vs_fp32"] is None
