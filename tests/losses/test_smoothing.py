"""Label smoothing (Szegedy et al. 2016) against numpy and torch, with masking."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.losses.smoothing import (
    SmoothingLoss,
    SmoothingParams,
    kd_equivalent_epsilon,
    label_smoothing_ce,
)
from tests.losses.conftest import SHAPES, make_inputs, numpy_log_softmax


def test_label_smoothing_matches_numpy_over_labelled_rows():
    inputs = make_inputs(labels=[0, -1, 2, 3, -1, 1, 4, 0])
    log_p = numpy_log_softmax(inputs.student_logits.detach().numpy())
    labels, eps = inputs.labels.numpy(), 0.2
    keep = labels >= 0
    target = np.full((8, 5), eps / 5)
    target[np.arange(8), np.clip(labels, 0, None)] += 1 - eps
    expected = -(target * log_p).sum(1)[keep].mean()
    assert label_smoothing_ce(inputs.student_logits, inputs.labels, eps).item() == pytest.approx(
        expected, rel=1e-5
    )


def test_equals_torch_label_smoothing_when_all_labelled():
    inputs = make_inputs(seed=3)
    expected = F.cross_entropy(inputs.student_logits, inputs.labels, label_smoothing=0.1)
    got = SmoothingLoss(SmoothingParams(), SHAPES)(inputs)["smoothing"]
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_all_unlabelled_is_exact_zero_with_zero_gradient():
    inputs = make_inputs(labels=[-1] * 8)
    loss = label_smoothing_ce(inputs.student_logits, inputs.labels, 0.1)
    loss.backward()
    assert loss.item() == 0.0 and torch.all(inputs.student_logits.grad == 0)


def test_kd_equivalent_epsilon_is_the_high_temperature_limit_formula():
    assert kd_equivalent_epsilon(0.5, 4.0) == pytest.approx(0.5 * 16 / (0.5 + 0.5 * 16))
    assert kd_equivalent_epsilon(1.0, 4.0) == 0.0
