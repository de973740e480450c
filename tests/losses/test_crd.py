"""CRD (Tian et al. 2020; InfoNCE of van den Oord et al. 2018): InfoNCE closed form, the log(B)
law, both anchorings, cache negatives."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipeline.losses.crd import (
    CRDLoss,
    CRDParams,
    MissingFeatureBankError,
    bank_info_nce,
    info_nce,
    symmetric_info_nce,
)
from pipeline.losses.recipe import build_recipe
from tests.losses.conftest import SHAPES, make_inputs


def numpy_info_nce(student, teacher, tau):
    s = student / np.linalg.norm(student, axis=1, keepdims=True)
    t = teacher / np.linalg.norm(teacher, axis=1, keepdims=True)
    logits = s @ t.T / tau
    log_softmax = (
        logits
        - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True))
        - logits.max(1, keepdims=True)
    )
    return -np.mean(np.diag(log_softmax))


def test_info_nce_matches_numpy():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(9, 5)), rng.normal(size=(9, 5))
    assert info_nce(torch.tensor(s), torch.tensor(t), 0.1).item() == pytest.approx(
        numpy_info_nce(s, t, 0.1), rel=1e-5
    )
    both = (numpy_info_nce(s, t, 0.5) + numpy_info_nce(t, s, 0.5)) / 2
    assert symmetric_info_nce(torch.tensor(s), torch.tensor(t), 0.5).item() == pytest.approx(both, rel=1e-5)


@settings(max_examples=20, deadline=None)
@given(rows=st.integers(2, 40), tau=st.floats(0.01, 10.0))
def test_info_nce_is_log_b_when_every_similarity_is_equal(rows, tau):
    same = torch.ones(rows, 3)
    assert info_nce(same, same, tau).item() == pytest.approx(np.log(rows), rel=1e-5)


@settings(max_examples=30, deadline=None)
@given(
    s=arrays(np.float64, (6, 4), elements=st.floats(-5, 5)),
    t=arrays(np.float64, (6, 4), elements=st.floats(-5, 5)),
    scale=st.floats(0.1, 10.0),
)
def test_info_nce_is_non_negative_and_invariant_to_feature_scale(s, t, scale):
    s, t = torch.tensor(s) + 0.01, torch.tensor(t) + 0.01  # no all-zero rows
    value = info_nce(s, t, 0.1).item()
    assert value >= -1e-9
    # info_nce computes in float32: logits of magnitude 1/tau = 10 carry ~1e-6 of rounding, so the
    # law holds to float32 precision, not to 1e-9 absolute (a near-zero loss failed at rel=1e-6).
    assert info_nce(scale * s, t, 0.1).item() == pytest.approx(value, rel=1e-5, abs=1e-5)


def test_bank_negatives_add_to_the_denominator_and_skip_batch_rows():
    rng = np.random.default_rng(1)
    s, t, n = rng.normal(size=(4, 3)), rng.normal(size=(4, 3)), rng.normal(size=(6, 3))
    skip = np.array([False, True, False, False, True, False])
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    logits = np.concatenate([unit(s) @ unit(t).T, unit(s) @ unit(n[~skip]).T], 1) / 0.2
    expected = np.mean(np.log(np.exp(logits).sum(1)) - np.diag(logits))
    value = bank_info_nce(torch.tensor(s), torch.tensor(t), torch.tensor(n), torch.tensor(skip), 0.2)
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_bank_term_draws_negatives_from_the_cache_and_flags_the_recipe():
    recipe = build_recipe(
        {
            "crd": {
                "kind": "crd",
                "student_tap": "embed",
                "teacher_tap": "embed",
                "negatives": "bank",
                "num_negatives": 16,
            }
        },
        SHAPES,
    )
    assert recipe.needs_feature_bank and not recipe.needs_peers
    inputs = make_inputs(seed=2)
    bank = {"embed": torch.randn(100, 8)}
    with_bank = type(inputs)(**{**inputs.__dict__, "teacher_feature_bank": bank})
    total, terms = recipe(with_bank)
    total.backward()
    assert torch.isfinite(total) and inputs.student_features["embed"].grad is not None
    with pytest.raises(MissingFeatureBankError, match="teacher_feature_bank"):
        recipe(inputs)


def test_crd_averages_over_taps():
    params = CRDParams(
        taps=[{"student": "embed", "teacher": "embed"}, {"student": "conv", "teacher": "conv"}]
    )
    loss, inputs = CRDLoss(params, SHAPES), make_inputs(seed=3)
    parts = [info_nce(*pair(inputs), 0.1) for pair in loss.pairs]
    assert loss(inputs)["crd"].item() == pytest.approx(sum(parts).item() / 2)
