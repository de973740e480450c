"""The pairwise families' closed-form backward passes: float64 gradcheck, and the same values and
gradients as plain autograd through the textbook formulas, edge cases included (duplicate rows,
all-zero rows, a batch of one row)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.losses.rkd import _PairwiseRKD, rkd_pairwise


def _autograd_rkd(student, teacher, normalize=True):
    """Plain autograd reference: the formulas of Park et al. 2019 as written."""

    def distances(x):
        gram = x @ x.T
        squared = gram.diagonal()[:, None] + gram.diagonal()[None, :] - 2 * gram
        d = squared.clamp(min=1e-12).sqrt() * (1 - torch.eye(len(x), dtype=x.dtype))
        pairs = max(len(x) * (len(x) - 1), 1)
        return d / (d.sum() / pairs).clamp(min=1e-12) if normalize else d

    def cosines(x):
        unit = F.normalize(x, dim=1)
        return unit @ unit.T

    return (
        F.smooth_l1_loss(distances(student), distances(teacher)),
        F.smooth_l1_loss(cosines(student), cosines(teacher)),
    )


def _features(seed, rows=9, dim=5, dtype=torch.float64):
    rng = np.random.default_rng(seed)
    return torch.tensor(rng.normal(size=(rows, dim)), dtype=dtype)


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


def _compare(student, teacher, normalize=True, rtol=1e-5, atol=1e-7):
    weights = (0.7, 1.9)
    fast_leaf = student.clone().requires_grad_(True)
    fast = rkd_pairwise(fast_leaf, teacher, normalize)
    (weights[0] * fast[0] + weights[1] * fast[1]).backward()
    plain_leaf = student.clone().requires_grad_(True)
    plain = _autograd_rkd(plain_leaf, teacher, normalize)
    (weights[0] * plain[0] + weights[1] * plain[1]).backward()
    for a, b in zip(fast, plain):
        assert a.item() == pytest.approx(b.item(), rel=rtol, abs=atol)
    np.testing.assert_allclose(fast_leaf.grad.numpy(), plain_leaf.grad.numpy(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("rows, dim", [(2, 3), (16, 8), (64, 32)])
def test_pairwise_rkd_equals_autograd_of_the_formulas(rows, dim, normalize):
    _compare(
        _features(rows, rows, dim, torch.float32),
        3 * _features(rows + 1, rows, dim + 2, torch.float32),
        normalize,
        rtol=2e-4,
        atol=1e-6,
    )


def test_pairwise_rkd_handles_duplicate_and_zero_rows_like_autograd():
    student = _features(5, rows=8)
    student[3] = student[1]  # a clamped (zero) distance
    student[6] = 0.0  # a clamped (zero) norm
    teacher = _features(6, rows=8, dim=4)
    teacher[2] = 0.0
    _compare(student, teacher, rtol=1e-4, atol=1e-6)  # float32 vs float64; the zero row's gradient is ~1e9


def test_pairwise_rkd_stays_exact_for_rows_with_a_large_common_offset():
    # Centring keeps ||x_i - x_j||^2 free of cancellation: float32 against float64 autograd.
    student, teacher = _features(9, rows=64, dim=32) + 30.0, 2 * _features(10, rows=64, dim=8) - 20.0
    student, teacher = student.float(), teacher.float()
    fast_leaf = student.clone().requires_grad_(True)
    fast = rkd_pairwise(fast_leaf, teacher)
    sum(fast).backward()
    plain_leaf = student.double().requires_grad_(True)
    plain = _autograd_rkd(plain_leaf, teacher.double())
    sum(plain).backward()
    for a, b in zip(fast, plain):
        assert a.item() == pytest.approx(b.item(), rel=1e-5)
    error = (fast_leaf.grad.double() - plain_leaf.grad).norm() / plain_leaf.grad.norm()
    assert error < 1e-5


def test_pairwise_rkd_of_one_row_is_zero_without_nan():
    student = _features(7, rows=1).requires_grad_(True)
    distance, angle = rkd_pairwise(student, _features(8, rows=1))
    (distance + angle).backward()
    assert distance.item() == 0.0 and angle.item() == pytest.approx(0.0, abs=1e-6)
    assert torch.isfinite(student.grad).all()


def _autograd_mmd(student, teacher, bandwidths, unbiased):
    """Plain autograd reference of Gretton et al. 2012's MMD (the kernel stack, clamped at exp(-50))."""

    def kernel_mean(x, y, leave_out_diagonal):
        squared = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
        factors = torch.tensor([-0.5 / (s * s) for s in bandwidths], dtype=x.dtype)
        stack = torch.exp((squared[None] * factors[:, None, None]).clamp(min=-50.0, max=0.0))
        if not leave_out_diagonal:
            return stack.mean()
        rows = len(x)
        return (stack.sum() - stack.diagonal(dim1=1, dim2=2).sum()) / (len(bandwidths) * rows * (rows - 1))

    return (
        kernel_mean(student, student, unbiased)
        + kernel_mean(teacher, teacher, unbiased)
        - 2 * kernel_mean(student, teacher, False)
    )


BANDWIDTHS = (0.2, 0.5, 1.0, 2.0, 5.0)


@pytest.mark.parametrize("unbiased", [False, True])
def test_mmd_backward_passes_float64_gradcheck(unbiased):
    from pipeline.losses.mmd import _MMDSquared

    student = (0.5 * _features(10, rows=7, dim=3)).requires_grad_(True)
    teacher = 0.5 * _features(11, rows=7, dim=3) + 0.3
    factors = tuple(-0.5 / (s * s) for s in BANDWIDTHS)
    assert torch.autograd.gradcheck(lambda x: _MMDSquared.apply(x, teacher, factors, unbiased), (student,))


@pytest.mark.parametrize("values_per_chunk", [1 << 16, 5 * 48, 48])  # 1 chunk, 5 rows, 1 row at a time
@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("rows, dim, spread", [(2, 3, 1.0), (16, 8, 0.3), (48, 32, 0.2), (24, 4, 10.0)])
def test_mmd_equals_autograd_of_the_kernel_stack(rows, dim, spread, unbiased, values_per_chunk, monkeypatch):
    from pipeline.losses import mmd
    from pipeline.losses.mmd import mmd_squared

    monkeypatch.setattr(mmd, "_VALUES_PER_CHUNK", values_per_chunk)
    student = (spread * _features(rows, rows, dim, torch.float32)).requires_grad_(True)
    teacher = spread * _features(rows + 1, rows, dim, torch.float32) + 0.1
    fast = mmd_squared(student, teacher, BANDWIDTHS, unbiased)
    fast.backward()
    fast_grad, student.grad = student.grad, None
    plain = _autograd_mmd(student.double(), teacher.double(), BANDWIDTHS, unbiased)
    plain.backward()
    assert fast.item() == pytest.approx(plain.item(), rel=1e-4, abs=1e-6)
    np.testing.assert_allclose(fast_grad.numpy(), student.grad.numpy(), rtol=1e-3, atol=1e-6)
