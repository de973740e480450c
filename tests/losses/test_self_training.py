"""Self-training on the teacher's argmax (Xie et al. 2020)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.losses.self_training import SelfTrainingLoss, SelfTrainingParams, self_training_ce
from tests.losses.conftest import SHAPES, make_inputs, numpy_log_softmax


def test_matches_numpy_on_every_row_even_unlabelled():
    inputs = make_inputs(labels=[-1] * 8)
    zt = inputs.teacher_logits.detach().numpy()
    log_p = numpy_log_softmax(inputs.student_logits.detach().numpy())
    expected = -log_p[np.arange(8), zt.argmax(1)].mean()
    assert SelfTrainingLoss(SelfTrainingParams(), SHAPES)(inputs)["self_training"].item() == pytest.approx(
        expected, rel=1e-5
    )


def test_confidence_threshold_keeps_only_confident_rows():
    inputs = make_inputs(seed=2)
    zt = inputs.teacher_logits.detach().numpy()
    p_t = np.exp(numpy_log_softmax(zt))
    keep = p_t.max(1) >= 0.6
    log_p = numpy_log_softmax(inputs.student_logits.detach().numpy())
    expected = -log_p[np.arange(8), zt.argmax(1)][keep].mean()
    assert self_training_ce(inputs.student_logits, inputs.teacher_logits, 0.6).item() == pytest.approx(
        expected, rel=1e-5
    )
    nothing = self_training_ce(inputs.student_logits, inputs.teacher_logits, 1.0)
    assert nothing.item() == 0.0 and torch.isfinite(nothing)
