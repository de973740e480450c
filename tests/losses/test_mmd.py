"""MMD (Gretton et al. 2012): both estimators against numpy, MMD(x, x) = 0, growth with a shift,
accuracy when student and teacher share a large offset, and the unbiased estimator's refusal of
fewer than 2 rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.losses.mmd import (
    MMDBatchError,
    MMDLoss,
    MMDParams,
    gaussian_kernel,
    mmd_squared,
    plain_mmd_squared,
)
from tests.losses.conftest import SHAPES, make_inputs

BANDWIDTHS = (0.2, 0.5, 1.0, 2.0, 5.0)


def numpy_kernel(x, y):
    squared = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    return np.mean([np.exp(-squared / (2 * s * s)) for s in BANDWIDTHS], axis=0)


def numpy_mmd(x, y, unbiased):
    kxx, kyy, kxy = numpy_kernel(x, x), numpy_kernel(y, y), numpy_kernel(x, y)
    if not unbiased:
        return kxx.mean() + kyy.mean() - 2 * kxy.mean()
    n = len(x)
    off = lambda k: (k.sum() - np.trace(k)) / (n * (n - 1))  # noqa: E731
    return off(kxx) + off(kyy) - 2 * kxy.mean()


@pytest.mark.parametrize("unbiased", [False, True])
def test_mmd_matches_numpy(unbiased):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(10, 3)), rng.normal(0.5, 1.5, size=(10, 3))
    value = mmd_squared(torch.tensor(x), torch.tensor(y), BANDWIDTHS, unbiased)
    assert value.item() == pytest.approx(numpy_mmd(x, y, unbiased), rel=1e-4, abs=1e-6)


def test_kernel_matches_numpy():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(4, 3)), rng.normal(size=(5, 3))
    np.testing.assert_allclose(
        gaussian_kernel(torch.tensor(x), torch.tensor(y), BANDWIDTHS).numpy(), numpy_kernel(x, y), rtol=1e-5
    )


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_mmd_of_a_set_with_itself_is_zero(seed):
    x = torch.tensor(np.random.default_rng(seed).normal(size=(8, 4)))
    assert mmd_squared(x, x, BANDWIDTHS).item() == pytest.approx(0.0, abs=1e-6)


def test_mmd_grows_with_a_shift():
    x = torch.tensor(np.random.default_rng(2).normal(size=(64, 2)))
    values = [mmd_squared(x, x + shift, BANDWIDTHS).item() for shift in (0.0, 0.1, 0.5, 1.0, 3.0)]
    assert values[0] == pytest.approx(0.0, abs=1e-6)
    assert all(a < b for a, b in zip(values, values[1:]))


def test_adapter_defaults_are_the_documents_bandwidths_and_biased_estimator():
    params = MMDParams(student_tap="embed", teacher_tap="embed")
    assert params.bandwidths == BANDWIDTHS and params.estimator == "biased"
    loss, inputs = MMDLoss(params, SHAPES), make_inputs()
    s, t = loss.pairs[0](inputs)
    assert loss(inputs)["mmd"].item() == pytest.approx(
        numpy_mmd(s.detach().numpy(), t.detach().numpy(), False), rel=1e-4
    )


def numpy_mmd_gradient(x, y, unbiased):
    """d MMD^2 / d x in closed form: each pair (a, b) of k(a, b) = mean_s exp(-|a - b|^2 / (2 s^2))
    contributes dk/da = -mean_s exp(.) / s^2 * (a - b)."""

    def slopes(a, b):  # (Ba, Bb, D): d k(a_i, b_j) / d a_i
        diff = a[:, None, :] - b[None, :, :]
        squared = (diff**2).sum(-1)
        factor = np.mean([-np.exp(-squared / (2 * s * s)) / (s * s) for s in BANDWIDTHS], axis=0)
        return factor[:, :, None] * diff

    n, m = len(x), len(y)
    same = 2 * slopes(x, x).sum(1) / (n * (n - 1) if unbiased else n * n)  # x_i appears as a and as b
    return same - 2 * slopes(x, y).sum(1) / (n * m)


def _offset_batch(kind, offset, rows=8, dim=16):
    # s, t ~ N(0, 0.3^2), t shifted by 0.05 (or their ReLUs), both then shifted by `offset`: the
    # float32 inputs are the data; the float64 closed form is taken on the same float32 values.
    rng = np.random.default_rng(0)
    s, t = rng.normal(0, 0.3, (rows, dim)), rng.normal(0, 0.3, (rows, dim)) + 0.05
    if kind == "relu":
        s, t = np.maximum(s, 0.0), np.maximum(t, 0.0)
    return (s + offset).astype(np.float32), (t + offset).astype(np.float32)


@pytest.mark.parametrize("loss", [mmd_squared, plain_mmd_squared], ids=["fused", "plain"])
@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("kind", ["normal", "relu"])
@pytest.mark.parametrize("offset", [0.0, 10.0, 100.0, 1000.0])
def test_mmd_keeps_float32_accuracy_when_student_and_teacher_share_an_offset(loss, unbiased, kind, offset):
    # Before centring, the fused form's |x|^2 + |y|^2 - 2 x.y was 3% off at offset 100 (gradient
    # 1.3%) and 15% off at 1000 (gradient 26x off).
    s, t = _offset_batch(kind, offset)
    student = torch.tensor(s, requires_grad=True)
    value = loss(student, torch.tensor(t), BANDWIDTHS, unbiased)
    value.backward()
    x, y = s.astype(np.float64), t.astype(np.float64)
    assert value.item() == pytest.approx(numpy_mmd(x, y, unbiased), rel=1e-4)
    expected = numpy_mmd_gradient(x, y, unbiased)
    np.testing.assert_allclose(student.grad.numpy(), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("loss", [mmd_squared, plain_mmd_squared], ids=["fused", "plain"])
def test_unbiased_mmd_refuses_fewer_than_two_rows_on_a_side(loss):
    rng = np.random.default_rng(3)
    two, one = torch.tensor(rng.normal(size=(2, 4))), torch.tensor(rng.normal(size=(1, 4)))
    for student, teacher in ((one, two), (two, one)):
        with pytest.raises(MMDBatchError, match="at least 2 student and 2 teacher rows.*estimator: biased"):
            loss(student, teacher, BANDWIDTHS, unbiased=True)
    assert np.isfinite(loss(one, two, BANDWIDTHS).item())  # the biased estimator is defined
    assert loss(two, two, BANDWIDTHS, unbiased=True).item() == pytest.approx(
        numpy_mmd(two.numpy(), two.numpy(), True), rel=1e-6
    )
