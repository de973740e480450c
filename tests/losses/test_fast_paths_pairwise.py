"""The pairwise families' fused forms against their plain forms (the formulas as written,
differentiated by autograd, kept above them in rkd.py and mmd.py): float64 gradcheck of the
hand-written backward passes, then the same values and gradients in float64, edge cases included
(duplicate rows, all-zero rows, a batch of one row), and float32 accuracy under a large offset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.losses.mmd import _MMDSquared, mmd_squared, plain_mmd_squared
from pipeline.losses.rkd import _PairwiseRKD, plain_rkd_angle_pairwise, plain_rkd_distance, rkd_pairwise

BANDWIDTHS = (0.2, 0.5, 1.0, 2.0, 5.0)


def _features(seed, rows=9, dim=5, dtype=torch.float64):
    rng = np.random.default_rng(seed)
    return torch.tensor(rng.normal(size=(rows, dim)), dtype=dtype)


def _value_and_gradient(loss, student, *args):
    """loss(student, *args) and d loss / d student, as float64 numpy."""
    leaf = student.clone().requires_grad_(True)
    value = loss(leaf, *args)
    value.backward()
    return value.item(), leaf.grad.double().numpy()


def assert_same_value_and_gradient(fused, plain, rtol):
    """Values within rtol of each other; gradients within rtol of the largest gradient entry."""
    (fused_value, fused_grad), (plain_value, plain_grad) = fused, plain
    assert fused_value == pytest.approx(plain_value, rel=rtol, abs=rtol * 1e-3)
    np.testing.assert_allclose(fused_grad, plain_grad, rtol=rtol, atol=rtol * np.abs(plain_grad).max())


def _rkd_both(student, teacher, normalize, weights=(0.7, 1.9)):
    """One weighted sum of the two RKD outputs, fused and plain (both gradients checked at once)."""

    def fused(x):
        distance, angle = rkd_pairwise(x, teacher, normalize)
        return weights[0] * distance + weights[1] * angle

    def plain(x):
        return weights[0] * plain_rkd_distance(x, teacher, normalize) + weights[1] * plain_rkd_angle_pairwise(
            x, teacher
        )

    return _value_and_gradient(fused, student), _value_and_gradient(plain, student)


@pytest.mark.parametrize("normalize", [True, False])
def test_pairwise_rkd_backward_passes_float64_gradcheck(normalize):
    student = _features(0).requires_grad_(True)
    teacher = 2 * _features(1, dim=7)
    for output in (0, 1):
        assert torch.autograd.gradcheck(
            lambda x, output=output: _PairwiseRKD.apply(x, teacher, normalize)[output], (student,)
        )
    weights = torch.tensor([0.3, -1.7], dtype=torch.float64)  # both outputs at once
    assert torch.autograd.gradcheck(
        lambda x: torch.stack(_PairwiseRKD.apply(x, teacher, normalize)) @ weights, (student,)
    )


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("rows, dim", [(2, 3), (16, 8), (64, 32)])
def test_fused_pairwise_rkd_equals_the_plain_form_in_float64(rows, dim, normalize):
    student, teacher = _features(rows, rows, dim), 3 * _features(rows + 1, rows, dim + 2)
    assert_same_value_and_gradient(*_rkd_both(student, teacher, normalize), rtol=1e-9)


def test_fused_pairwise_rkd_handles_duplicate_and_zero_rows_as_the_plain_form():
    student = _features(5, rows=8)
    student[3] = student[1]  # a clamped (zero) distance
    student[6] = 0.0  # a clamped (zero) norm: its gradient is ~1e12, the tolerance scales with it
    teacher = _features(6, rows=8, dim=4)
    teacher[2] = 0.0
    assert_same_value_and_gradient(*_rkd_both(student, teacher, True), rtol=1e-9)


def test_pairwise_rkd_stays_exact_for_rows_with_a_large_common_offset():
    # Centring keeps ||x_i - x_j||^2 free of cancellation: the float32 fused form against the
    # float64 plain form.
    student, teacher = _features(9, rows=64, dim=32) + 30.0, 2 * _features(10, rows=64, dim=8) - 20.0
    student, teacher = student.float(), teacher.float()
    fused_value, fused_grad = _rkd_both(student, teacher, True)[0]
    plain_value, plain_grad = _rkd_both(student.double(), teacher.double(), True)[1]
    assert fused_value == pytest.approx(plain_value, rel=1e-5)
    assert np.linalg.norm(fused_grad - plain_grad) / np.linalg.norm(plain_grad) < 1e-5


def test_pairwise_rkd_of_one_row_is_zero_without_nan():
    student = _features(7, rows=1).requires_grad_(True)
    distance, angle = rkd_pairwise(student, _features(8, rows=1))
    (distance + angle).backward()
    assert distance.item() == 0.0 and angle.item() == pytest.approx(0.0, abs=1e-6)
    assert torch.isfinite(student.grad).all()


@pytest.mark.parametrize("unbiased", [False, True])
def test_mmd_backward_passes_float64_gradcheck(unbiased):
    student = (0.5 * _features(10, rows=7, dim=3)).requires_grad_(True)
    teacher = 0.5 * _features(11, rows=7, dim=3) + 0.3
    factors = tuple(-0.5 / (s * s) for s in BANDWIDTHS)
    assert torch.autograd.gradcheck(lambda x: _MMDSquared.apply(x, teacher, factors, unbiased), (student,))


@pytest.mark.parametrize("values_per_chunk", [1 << 16, 5 * 48, 48])  # 1 chunk, 5 rows, 1 row at a time
@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("rows, dim, spread", [(2, 3, 1.0), (16, 8, 0.3), (48, 32, 0.2), (24, 4, 10.0)])
def test_fused_mmd_equals_the_plain_form_in_float64(
    rows, dim, spread, unbiased, values_per_chunk, monkeypatch
):
    from pipeline.losses import mmd

    monkeypatch.setattr(mmd, "_VALUES_PER_CHUNK", values_per_chunk)
    student = spread * _features(rows, rows, dim)
    teacher = spread * _features(rows + 1, rows, dim) + 0.1
    # The fused form counts kernel values below exp(-50) as exp(-50): ~2e-22 per pair, far below rtol.
    assert_same_value_and_gradient(
        _value_and_gradient(mmd_squared, student, teacher, BANDWIDTHS, unbiased),
        _value_and_gradient(plain_mmd_squared, student, teacher, BANDWIDTHS, unbiased),
        rtol=1e-9,
    )
