"""Hinton KD: closed forms, the T^2 factor, the gradient law, the alpha conventions, the sparse
top-k form, the label-smoothing limit, and masking of the hard part."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pydantic import ValidationError

from pipeline.cache.batch import SparseLogits
from pipeline.losses.hinton import (
    HintonLoss,
    HintonParams,
    MissingSparseLogitsError,
    distillation_kl,
    distillation_soft_ce,
    soft_targets,
    sparse_distillation_kl,
)
from pipeline.losses.smoothing import kd_equivalent_epsilon, label_smoothing_ce
from tests.losses.conftest import SHAPES, make_inputs, numpy_log_softmax


def numpy_kl(student_logits, teacher_logits, temperature):
    """T^2 * mean_i sum_c p_t (log p_t - log p_s), float64."""
    log_pt = numpy_log_softmax(teacher_logits, temperature)
    log_ps = numpy_log_softmax(student_logits, temperature)
    return temperature**2 * (np.exp(log_pt) * (log_pt - log_ps)).sum(-1).mean()


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0, 4.0, 10.0])
def test_kl_matches_numpy_and_carries_the_t_squared_factor(temperature):
    inputs = make_inputs(seed=1)
    zs, zt = inputs.student_logits.detach().numpy(), inputs.teacher_logits.detach().numpy()
    value = distillation_kl(inputs.student_logits, inputs.teacher_logits, temperature).item()
    assert value == pytest.approx(numpy_kl(zs, zt, temperature), rel=1e-5)
    without_factor = numpy_kl(zs, zt, temperature) / temperature**2
    assert value / without_factor == pytest.approx(temperature**2, rel=1e-5)


def test_kl_equals_torch_kl_div_batchmean_times_t_squared():
    inputs = make_inputs(seed=2)
    zs, zt, T = inputs.student_logits, inputs.teacher_logits, 4.0
    reference = F.kl_div(F.log_softmax(zs / T, 1), F.softmax(zt / T, 1), reduction="batchmean") * T**2
    assert distillation_kl(zs, zt, T).item() == pytest.approx(reference.item(), rel=1e-5)


def test_soft_cross_entropy_form_is_kl_plus_teacher_entropy():
    inputs = make_inputs(seed=3)
    zs, zt, T = inputs.student_logits, inputs.teacher_logits, 3.0
    log_pt = numpy_log_softmax(zt.detach().numpy(), T)
    log_ps = numpy_log_softmax(zs.detach().numpy(), T)
    expected = -(T**2) * (np.exp(log_pt) * log_ps).sum(-1).mean()
    assert distillation_soft_ce(zs, zt, T).item() == pytest.approx(expected, rel=1e-5)
    entropy = -(T**2) * (np.exp(log_pt) * log_pt).sum(-1).mean()
    assert distillation_soft_ce(zs, zt, T).item() - distillation_kl(zs, zt, T).item() == pytest.approx(
        entropy, rel=1e-4
    )


logit_rows = arrays(np.float64, (4, 6), elements=st.floats(-20, 20, allow_nan=False))


@settings(max_examples=40, deadline=None)
@given(student=logit_rows, teacher=logit_rows, temperature=st.floats(0.5, 20.0))
def test_gradient_of_t2_kl_is_t_times_probability_gap_over_batch(student, teacher, temperature):
    zs = torch.tensor(student, dtype=torch.float32, requires_grad=True)
    distillation_kl(zs, torch.tensor(teacher, dtype=torch.float32), temperature).backward()
    p_s = np.exp(numpy_log_softmax(student, temperature))
    p_t = np.exp(numpy_log_softmax(teacher, temperature))
    # per sample T (p_s - p_t); "batchmean" divides by B (Hinton et al. 2015 §2)
    np.testing.assert_allclose(zs.grad.numpy(), temperature * (p_s - p_t) / len(student), atol=2e-6)


@settings(max_examples=30, deadline=None)
@given(student=logit_rows, teacher=logit_rows, temperature=st.floats(0.1, 50.0))
def test_kl_is_non_negative_and_zero_when_student_equals_teacher(student, teacher, temperature):
    zs, zt = torch.tensor(student), torch.tensor(teacher)
    assert distillation_kl(zs.float(), zt.float(), temperature).item() >= -1e-5
    assert distillation_kl(zt.float(), zt.float(), temperature).item() == pytest.approx(0.0, abs=1e-5)


def test_soft_targets_linearise_as_temperature_grows():
    # p_i^T = 1/n + (z_i - mean z)/(n T) + O(1/T^2)  (Hinton et al. 2015 §2.1)
    z = torch.tensor([[3.0, -1.0, 0.5, 2.0, -4.0]])
    n = z.shape[1]
    errors = []
    for T in (10.0, 100.0, 1000.0):
        linear = 1 / n + (z - z.mean()) / (n * T)
        errors.append((soft_targets(z, T) - linear).abs().max().item())
    assert errors[1] < errors[0] / 50 and errors[2] < errors[1] / 50


def test_kd_tends_to_label_smoothing_as_temperature_grows():
    # a*CE + (1-a)*T^2*H(p_t^T, p_s) -> (a + (1-a)T^2) * LS(eps), eps = (1-a)T^2/(a+(1-a)T^2)
    # as the teacher's soft target tends to uniform (Yuan et al. 2020: KD and label smoothing).
    inputs = make_inputs(seed=4)
    zs, zt, labels, a = inputs.student_logits.double(), inputs.teacher_logits.double(), inputs.labels, 0.7
    log_ps = F.log_softmax(zs, 1)
    gaps = []
    for T in (3.0, 30.0, 300.0):
        kd = a * F.nll_loss(log_ps, labels) - (1 - a) * T**2 * (soft_targets(zt, T) * log_ps).sum(1).mean()
        eps = kd_equivalent_epsilon(a, T)
        smoothed = (a + (1 - a) * T**2) * label_smoothing_ce(zs, labels, eps)
        gaps.append(abs(kd.item() - smoothed.item()) / smoothed.item())
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-2


@pytest.mark.parametrize("convention, expected", [("hard", (0.3, 0.7)), ("soft", (0.7, 0.3))])
def test_alpha_weighs_the_loss_its_convention_names(convention, expected):
    params = HintonParams(alpha=0.3, alpha_weights=convention)
    assert params.resolved_weights() == pytest.approx(expected)
    assert params.sub_weights(0) == pytest.approx({"hard": expected[0], "soft": expected[1]})


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"alpha": 0.5}, "alpha needs alpha_weights"),
        ({"alpha": 0.5, "alpha_weights": "hard", "hard_weight": 1.0}, "not both"),
        ({"alpha_weights": "soft"}, "without alpha"),
    ],
)
def test_ambiguous_alpha_is_refused(bad, message):
    with pytest.raises(ValidationError, match=message):
        HintonParams(**bad)


def test_default_is_the_soft_term_alone_and_hard_part_is_masked():
    assert list(HintonLoss(HintonParams(), SHAPES)(make_inputs())) == ["soft"]
    inputs = make_inputs(labels=[1, -1, 2, -1, 0, 0, 1, 2])
    HintonLoss(HintonParams(hard_weight=1.0, soft_weight=0.0), SHAPES)(inputs)["hard"].backward()
    assert torch.all(inputs.student_logits.grad[inputs.labels < 0] == 0)


def numpy_bucket_kl(student_logits, values, indices, logsumexp, num_classes):
    """T = 1 KL over the top-k support plus one tail bucket, float64."""
    log_pt = values - logsumexp[:, None]
    tail_t = 1 - np.exp(log_pt).sum(1)
    log_ps = numpy_log_softmax(student_logits)
    support_s = np.take_along_axis(log_ps, indices, 1)
    tail_s = 1 - np.exp(support_s).sum(1)
    kl = (np.exp(log_pt) * (log_pt - support_s)).sum(1) + tail_t * (np.log(tail_t) - np.log(tail_s))
    return kl.mean()


def test_sparse_top_k_is_exact_at_t1_on_support_plus_tail_bucket():
    inputs = make_inputs(seed=5, sparse_k=3)
    sparse = inputs.teacher_sparse
    expected = numpy_bucket_kl(
        inputs.student_logits.detach().numpy().astype(np.float64),
        sparse.values.numpy(),
        sparse.indices.numpy(),
        sparse.logsumexp.numpy(),
        5,
    )
    value = sparse_distillation_kl(inputs.student_logits, sparse, 1.0)
    assert value.item() == pytest.approx(expected, rel=1e-4)


def test_sparse_with_every_class_stored_equals_dense_at_any_temperature():
    inputs = make_inputs(seed=6, sparse_k=5)
    for T in (1.0, 4.0):
        dense = distillation_kl(inputs.student_logits, inputs.teacher_logits, T)
        assert sparse_distillation_kl(
            inputs.student_logits, inputs.teacher_sparse, T
        ).item() == pytest.approx(dense.item(), rel=1e-5)


def test_dense_is_the_default_auto_uses_sparse_and_sparse_without_it_is_refused():
    inputs = make_inputs(seed=7, sparse_k=2)
    dense = HintonLoss(HintonParams(temperature=1.0), SHAPES)(inputs)["soft"]
    assert dense.item() == pytest.approx(
        distillation_kl(inputs.student_logits, inputs.teacher_logits, 1.0).item()
    )
    auto = HintonLoss(HintonParams(temperature=1.0, teacher_source="auto"), SHAPES)(inputs)["soft"]
    assert auto.item() == pytest.approx(
        sparse_distillation_kl(inputs.student_logits, inputs.teacher_sparse, 1.0).item()
    )
    with pytest.raises(MissingSparseLogitsError, match="top-k"):
        HintonLoss(HintonParams(teacher_source="sparse"), SHAPES)(make_inputs())


def test_logits_of_magnitude_1e4_stay_finite_dense_and_sparse():
    inputs = make_inputs(seed=8, logit_scale=1e4, sparse_k=2)
    for loss in (
        distillation_kl(inputs.student_logits, inputs.teacher_logits, 4.0),
        distillation_soft_ce(inputs.student_logits, inputs.teacher_logits, 4.0),
        sparse_distillation_kl(inputs.student_logits, inputs.teacher_sparse, 4.0),
    ):
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(inputs.student_logits.grad).all()


def test_sparse_tail_with_zero_mass_is_finite():
    values = torch.tensor([[10.0, 0.0]])
    sparse = SparseLogits(values, torch.tensor([[0, 1]]), values.logsumexp(1))  # K = 2 of C = 3, tail mass 0
    student = torch.zeros(1, 3, requires_grad=True)
    loss = sparse_distillation_kl(student, sparse, 2.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()
