"""The metrics against closed forms worked out by hand, and the laws they obey for every input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipeline.evaluate.metrics import (
    MetricInputError,
    accuracy,
    agreement,
    calibration_bins,
    classification_metrics,
    expected_calibration_error,
    mean_kl,
    nll,
    teacher_metrics,
    top_k_accuracy,
)


def two_class_logits(first_class_probability: list[float]) -> np.ndarray:
    """Logits whose softmax is exactly (p, 1 - p) per row."""
    p = np.asarray(first_class_probability)
    return np.stack([np.log(p), np.log1p(-p)], axis=1)


def test_ece_matches_a_hand_computed_example():
    # rows: confidence 0.9 right, 0.9 wrong -> bin 13 (acc 0.5, conf 0.9);
    #       0.65 right -> bin 9; 0.7 right -> bin 10 (15 bins of width 1/15).
    logits = two_class_logits([0.9, 0.9, 0.65, 0.7])
    labels = np.array([0, 1, 0, 0])
    expected = 2 / 4 * abs(0.5 - 0.9) + 1 / 4 * abs(1 - 0.65) + 1 / 4 * abs(1 - 0.7)  # 0.3625
    assert expected_calibration_error(logits, labels, n_bins=15) == pytest.approx(expected, abs=1e-12)
    bins = calibration_bins(logits, labels, n_bins=15)
    assert bins.count.tolist() == [0] * 9 + [1, 1, 0, 0, 2, 0]
    assert bins.accuracy[13] == pytest.approx(0.5)
    assert bins.confidence[13] == pytest.approx(0.9)
    assert np.isnan(bins.accuracy[0])


def test_ece_with_one_bin_is_the_gap_between_accuracy_and_mean_confidence():
    logits = two_class_logits([0.9, 0.8, 0.6, 0.55])
    labels = np.array([0, 1, 1, 0])
    assert expected_calibration_error(logits, labels, n_bins=1) == pytest.approx(abs(0.5 - 0.7125))


def test_ece_bin_edges_are_right_closed():
    # confidence exactly 0.5 belongs to (0.25, 0.5], bin 1 of 4, as in Guo et al. 2017
    bins = calibration_bins(np.zeros((3, 2)), np.array([0, 0, 1]), n_bins=4)
    assert bins.count.tolist() == [0, 3, 0, 0]


def test_nll_of_uniform_logits_is_log_of_the_class_count():
    assert nll(np.zeros((5, 7)), np.arange(5)) == pytest.approx(math.log(7))


def test_nll_is_the_mean_negative_log_probability_of_the_label():
    logits = two_class_logits([0.8, 0.25])
    labels = np.array([0, 1])
    assert nll(logits, labels) == pytest.approx(-(math.log(0.8) + math.log(0.75)) / 2)


def test_top5_counts_a_label_among_the_five_highest_logits():
    logits = np.tile(np.arange(10, dtype=float), (3, 1))  # class 9 highest, class 0 lowest
    labels = np.array([9, 5, 4])  # ranks 0, 4 (in top 5), 5 (not)
    assert top_k_accuracy(logits, labels, k=5) == pytest.approx(2 / 3)
    assert (
        top_k_accuracy(logits, labels, k=1) == pytest.approx(accuracy(logits, labels)) == pytest.approx(1 / 3)
    )
    assert top_k_accuracy(logits[:, :3], np.array([0, 1, 2]), k=5) == 1.0


def test_kl_matches_the_bernoulli_closed_form_at_t1_and_at_t():
    teacher = np.array([[2.0, 0.0]])
    student = np.array([[0.5, 0.0]])
    for temperature in (1.0, 4.0):
        p = 1 / (1 + math.exp(-2.0 / temperature))
        q = 1 / (1 + math.exp(-0.5 / temperature))
        expected = p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))
        assert mean_kl(teacher, student, temperature) == pytest.approx(expected, rel=1e-12)


def test_agreement_counts_equal_argmaxes():
    teacher = np.array([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]])
    student = np.array([[2.0, 0, 0], [0, 0, 3], [0, 0, 1], [0, 5, 0]])
    assert agreement(student, teacher) == 0.5


def test_teacher_metrics_report_kl_at_the_student_temperature_only_when_it_has_one():
    logits = np.random.default_rng(0).standard_normal((8, 4))
    assert set(teacher_metrics(logits, logits)) == {"agreement", "kl_T1"}
    with_t = teacher_metrics(logits, logits + 1.0, temperature=4.0)
    assert with_t["agreement"] == 1.0 and with_t["kl_T"] == pytest.approx(0.0, abs=1e-12)


def test_classification_metrics_names_the_top_k_key():
    metrics = classification_metrics(np.eye(6), np.arange(6), top_k=5)
    assert metrics == {
        "accuracy": 1.0,
        "top5": 1.0,
        "nll": pytest.approx(metrics["nll"]),
        "ece": pytest.approx(metrics["ece"]),
    }


@pytest.mark.parametrize(
    ("logits", "labels", "message"),
    [
        (np.zeros((3, 4)), np.array([0, 1, 4]), "class indices in \\[0, 4\\)"),
        (np.zeros((3, 4)), np.array([0, -1, 2]), "unlabelled"),
        (np.zeros((3, 4)), np.array([0, 1]), "expected shape \\(3,\\)"),
        (np.array([[np.nan, 0.0]]), np.array([0]), "NaN or Inf"),
        (np.zeros((0, 4)), np.zeros(0, int), "non-empty"),
    ],
)
def test_bad_inputs_are_refused_with_the_reason(logits, labels, message):
    with pytest.raises(MetricInputError, match=message):
        accuracy(logits, labels)


finite_logits = arrays(
    np.float64,
    st.tuples(st.integers(1, 12), st.integers(2, 8)),
    elements=st.floats(-20, 20, allow_nan=False, allow_infinity=False),
)


@settings(max_examples=60, deadline=None)
@given(finite_logits, st.data())
def test_laws_kl_nonnegative_ece_bounded_topk_at_least_accuracy(logits, data):
    labels = np.array(
        data.draw(st.lists(st.integers(0, logits.shape[1] - 1), min_size=len(logits), max_size=len(logits)))
    )
    other = logits[::-1].copy()
    assert mean_kl(logits, other) >= 0.0
    assert mean_kl(logits, logits) == pytest.approx(0.0, abs=1e-9)
    assert 0.0 <= expected_calibration_error(logits, labels) <= 1.0
    assert top_k_accuracy(logits, labels, 2) >= accuracy(logits, labels)
    assert nll(logits, labels) >= 0.0
    shifted = logits + 3.0  # softmax is shift invariant, so every metric is
    assert nll(shifted, labels) == pytest.approx(nll(logits, labels), rel=1e-9, abs=1e-9)
