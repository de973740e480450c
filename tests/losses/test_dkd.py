"""Decoupled KD (Zhao et al. 2022): TCKD and NCKD against numpy, the KD decomposition, the
reference code, masking and extreme logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.losses.dkd import DKDLoss, DKDParams, dkd_rows
from pipeline.losses.hinton import distillation_kl
from tests.losses.conftest import SHAPES, make_inputs, numpy_log_softmax


def numpy_dkd(zs, zt, target, T):
    ps, pt = np.exp(numpy_log_softmax(zs, T)), np.exp(numpy_log_softmax(zt, T))
    rows = np.arange(len(zs))
    bs = np.stack([ps[rows, target], 1 - ps[rows, target]], 1)
    bt = np.stack([pt[rows, target], 1 - pt[rows, target]], 1)
    tckd = T**2 * (bt * np.log(bt / bs)).sum(1)
    mask = np.ones_like(ps, dtype=bool)
    mask[rows, target] = False
    qs = np.where(mask, ps, 0) / (1 - ps[rows, target])[:, None]
    qt = np.where(mask, pt, 0) / (1 - pt[rows, target])[:, None]
    nckd = T**2 * np.where(mask, qt * np.log(np.where(mask, qt / np.where(mask, qs, 1), 1)), 0).sum(1)
    return tckd, nckd, pt[rows, target]


def test_tckd_and_nckd_match_numpy():
    inputs = make_inputs(seed=1)
    target = inputs.labels
    tckd, nckd = dkd_rows(inputs.student_logits, inputs.teacher_logits, target, 4.0)
    expected_t, expected_n, _ = numpy_dkd(
        inputs.student_logits.detach().numpy(), inputs.teacher_logits.detach().numpy(), target.numpy(), 4.0
    )
    np.testing.assert_allclose(tckd.detach().numpy(), expected_t, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(nckd.detach().numpy(), expected_n, rtol=1e-4, atol=1e-7)


def test_kd_decomposes_into_tckd_plus_weighted_nckd():
    # KD = TCKD + (1 - p_t,target) NCKD (Zhao et al. 2022 eq. 5), all at temperature T with T^2
    inputs = make_inputs(seed=2)
    T = 3.0
    tckd, nckd = dkd_rows(inputs.student_logits, inputs.teacher_logits, inputs.labels, T)
    p_target = F.softmax(inputs.teacher_logits / T, 1).gather(1, inputs.labels[:, None]).squeeze(1)
    decomposed = (tckd + (1 - p_target) * nckd).mean()
    assert decomposed.item() == pytest.approx(
        distillation_kl(inputs.student_logits, inputs.teacher_logits, T).item(), rel=1e-5
    )


def test_matches_mdistiller_reference_for_moderate_logits():
    def reference(zs, zt, target, alpha, beta, T):
        gt = F.one_hot(target, zs.shape[1]).float()
        ps, pt = F.softmax(zs / T, 1), F.softmax(zt / T, 1)
        cat = lambda p: torch.stack([(p * gt).sum(1), (p * (1 - gt)).sum(1)], 1)  # noqa: E731
        tckd = F.kl_div(torch.log(cat(ps)), cat(pt), reduction="sum") * T**2 / len(target)
        nckd = (
            F.kl_div(F.log_softmax(zs / T - 1000 * gt, 1), F.softmax(zt / T - 1000 * gt, 1), reduction="sum")
            * T**2
            / len(target)
        )
        return alpha * tckd + beta * nckd

    inputs = make_inputs(seed=3)
    terms = DKDLoss(DKDParams(), SHAPES)(inputs)
    ours = 1.0 * terms["target"] + 8.0 * terms["non_target"]
    expected = reference(inputs.student_logits, inputs.teacher_logits, inputs.labels, 1.0, 8.0, 4.0)
    assert ours.item() == pytest.approx(expected.item(), rel=1e-4)


def test_label_target_masks_unlabelled_rows_and_teacher_target_uses_all():
    inputs = make_inputs(seed=4, labels=[0, -1, 1, -1, 2, 3, 4, 0])
    DKDLoss(DKDParams(), SHAPES)(inputs)["target"].backward()
    assert torch.all(inputs.student_logits.grad[inputs.labels < 0] == 0)
    unlabelled = make_inputs(seed=4, labels=[-1] * 8)
    terms = DKDLoss(DKDParams(target="teacher_argmax"), SHAPES)(unlabelled)
    assert terms["target"].item() > 0 and terms["non_target"].item() > 0


def test_extreme_logits_stay_finite_where_a_minus_1000_mask_would_not():
    inputs = make_inputs(seed=5, logit_scale=1e4)
    terms = DKDLoss(DKDParams(), SHAPES)(inputs)
    total = terms["target"] + terms["non_target"]
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(inputs.student_logits.grad).all()


def test_warmup_ramps_both_factors():
    params = DKDParams(warmup_epochs=4)
    assert params.sub_weights(0) == {"target": 0.25, "non_target": 2.0}
    assert params.sub_weights(10) == {"target": 1.0, "non_target": 8.0}
