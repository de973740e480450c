"""Relational Gram matching (Tung & Mori 2019) against numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.losses.gram import GramLoss, GramParams, gram_distance
from tests.losses.conftest import SHAPES, make_inputs


def numpy_gram_distance(s, t, normalize_rows, reduction):
    if normalize_rows:
        s = s / np.linalg.norm(s, axis=1, keepdims=True)
        t = t / np.linalg.norm(t, axis=1, keepdims=True)
    squared = (t @ t.T - s @ s.T) ** 2
    return squared.sum() if reduction == "sum" else squared.mean()


@pytest.mark.parametrize("normalize_rows", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_gram_distance_matches_numpy(normalize_rows, reduction):
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(6, 3)), rng.normal(size=(6, 5))
    value = gram_distance(torch.tensor(s), torch.tensor(t), normalize_rows, reduction)
    assert value.item() == pytest.approx(numpy_gram_distance(s, t, normalize_rows, reduction), rel=1e-5)


def test_gram_is_zero_for_equal_relations_and_unchanged_by_rotation():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(7, 4))
    q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    assert gram_distance(torch.tensor(x @ q), torch.tensor(x), False, "sum").item() == pytest.approx(
        0.0, abs=1e-5
    )


def test_adapter_reads_taps_of_different_sizes():
    inputs = make_inputs()
    value = GramLoss(GramParams(student_tap="embed", teacher_tap="embed"), SHAPES)(inputs)["gram"]
    s, t = (
        inputs.student_features["embed"].detach().numpy(),
        inputs.teacher_features["embed"].detach().numpy(),
    )
    assert value.item() == pytest.approx(numpy_gram_distance(s, t, True, "mean"), rel=1e-5)
