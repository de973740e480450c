"""Hard-label cross-entropy: closed form, masking of unlabelled rows, extreme logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.losses.ce import CELoss, CEParams, cross_entropy
from tests.losses.conftest import SHAPES, make_inputs, numpy_log_softmax


def test_ce_matches_numpy_mean_over_labelled_rows():
    inputs = make_inputs(labels=[0, 1, -1, 3, 4, -1, 2, 0])
    labels = inputs.labels.numpy()
    log_p = numpy_log_softmax(inputs.student_logits.detach().numpy())
    keep = labels >= 0
    expected = -log_p[keep, labels[keep]].mean()
    assert cross_entropy(inputs.student_logits, inputs.labels).item() == pytest.approx(expected, rel=1e-6)


def test_unlabelled_rows_get_no_gradient():
    inputs = make_inputs(labels=[0, -1, 2, -1, 4, 1, -1, 3])
    cross_entropy(inputs.student_logits, inputs.labels).backward()
    grad = inputs.student_logits.grad
    unlabelled = inputs.labels < 0
    assert torch.all(grad[unlabelled] == 0) and torch.all(grad[~unlabelled].abs().sum(1) > 0)


def test_all_unlabelled_batch_is_an_exact_zero_connected_to_the_graph():
    inputs = make_inputs(labels=[-1] * 8)
    loss = CELoss(CEParams(), SHAPES)(inputs)["ce"]
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.all(inputs.student_logits.grad == 0)


def test_logits_of_magnitude_1e4_give_finite_loss_and_gradient():
    inputs = make_inputs(logit_scale=1e4)
    loss = cross_entropy(inputs.student_logits, inputs.labels)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(inputs.student_logits.grad).all()


def test_ce_equals_torch_cross_entropy_when_every_row_is_labelled():
    inputs = make_inputs(seed=7)
    expected = torch.nn.functional.cross_entropy(inputs.student_logits.double(), inputs.labels)
    assert cross_entropy(inputs.student_logits, inputs.labels).item() == pytest.approx(
        expected.item(), rel=1e-6
    )
    assert np.isfinite(expected.item())
