"""Hinton's bias correction: finds a known bias on synthetic logits, reports before/after, is wired
into evaluate."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluate.bias_correction import (
    BiasCorrectionError,
    BiasCorrectionParams,
    BiasGrid,
    bias_classes,
    bias_correction,
    search_bias,
)
from pipeline.evaluate.leaderboard import leaderboard_rows
from pipeline.evaluate.leaderboard_tables import to_csv, to_markdown


def _logits_with_a_suppressed_class(
    seed: int, rows: int = 600, classes: int = 5, cls: int = 2, shift: float = 4.0
):
    """Clean logits (the true class +3 over noise) with column `cls` lowered by `shift`."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, rows)
    logits = rng.normal(size=(rows, classes))
    logits[np.arange(rows), labels] += 3.0
    logits[:, cls] -= shift
    return logits, labels


def test_the_search_recovers_a_known_bias_and_restores_the_class():
    val, val_labels = _logits_with_a_suppressed_class(0)
    test, test_labels = _logits_with_a_suppressed_class(1)
    grid = BiasGrid(low=-2, high=10, step=0.5).values()
    bias = search_bias(val, val_labels, 2, grid)
    assert 3.0 <= bias <= 5.0
    result = bias_correction(val, val_labels, test, test_labels, [2], grid)
    assert result["biases"] == {"2": bias}
    assert result["class_accuracy_before"]["2"] < 0.3 < 0.85 < result["class_accuracy_after"]["2"]
    assert result["accuracy_after"] > result["accuracy_before"]


def test_an_unbiased_model_keeps_a_zero_bias_by_the_tie_rule():
    logits, labels = _logits_with_a_suppressed_class(2, shift=0.0)
    logits[np.arange(len(labels)), labels] += 100.0  # every grid value within reach gives the same accuracy
    assert search_bias(logits, labels, 2, BiasGrid(low=-1, high=1, step=0.5).values()) == 0.0


def test_grid_always_holds_zero_and_bad_classes_are_refused():
    assert 0.0 in BiasGrid(low=-0.3, high=1.0, step=0.25).values()
    logits, labels = _logits_with_a_suppressed_class(3)
    with pytest.raises(BiasCorrectionError, match="out of range"):
        bias_correction(logits, labels, logits, labels, [7], [0.0])
    with pytest.raises(BiasCorrectionError, match="no labelled rows of class"):
        bias_correction(logits[labels != 2], labels[labels != 2], logits, labels, [2], [0.0])


def test_classes_default_to_the_omitted_ones():
    assert bias_classes(None, [3]) == [3] and bias_classes(None, []) == []
    assert bias_classes(BiasCorrectionParams(classes=[1, 4]), [3]) == [1, 4]


def test_classes_may_be_named_when_the_labels_were_class_names():
    from pipeline.data.labels import ClassNameError

    names = ("ant", "bee", "cat", "dog")
    assert bias_classes(None, ["cat"], names) == [2]
    assert bias_classes(BiasCorrectionParams(classes=["dog", 0]), ["cat"], names) == [3, 0]
    with pytest.raises(ClassNameError, match="evaluate.bias_correction.classes: no class named 'cow'"):
        bias_classes(BiasCorrectionParams(classes=["cow"]), [], names)
    with pytest.raises(ClassNameError, match=r"class names: none \(the labels are integers\)"):
        bias_classes(None, ["cat"])


def test_the_leaderboard_carries_the_correction_and_adds_its_columns_only_when_present():
    spread = lambda m: {"mean": m, "std": 0.01}  # noqa: E731
    plain = {"model": "ce", "accuracy": spread(0.9), "seeds": 3}
    fixed = {
        "model": "soft",
        "accuracy": spread(0.95),
        "seeds": 3,
        "bias_correction": {
            "classes": [3],
            "accuracy_before": spread(0.95),
            "accuracy_after": spread(0.97),
            "class_3_before": spread(0.6),
            "class_3_after": spread(0.9),
            "biases": {},
        },
    }
    assert "bias fixed" not in to_markdown(leaderboard_rows([plain]))
    rows = leaderboard_rows([plain, fixed])
    assert "0.9700" in to_markdown(rows) and "0.6000" in to_markdown(rows)
    assert "bias_corrected_accuracy_mean" in to_csv(rows).splitlines()[0]
