"""MMD (Gretton et al. 2012): both estimators against numpy, MMD(x, x) = 0, growth with a shift."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.losses.mmd import MMDLoss, MMDParams, gaussian_kernel, mmd_squared
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
