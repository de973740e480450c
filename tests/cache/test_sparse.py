"""The top-k form: exact on its support at T = 1, exact everywhere at k = C, KL error reported."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipeline.cache.sparse import densify_top_k, kl_per_row, top_k_form

logit_rows = arrays(
    np.float32, st.tuples(st.integers(1, 6), st.integers(2, 12)), elements=st.floats(-30, 30, width=32)
)


def _softmax(z, t=1.0):
    e = np.exp((z - z.max(axis=1, keepdims=True)) / t)
    return e / e.sum(axis=1, keepdims=True)


@settings(max_examples=60, deadline=None)
@given(logit_rows, st.integers(1, 12))
def test_top_k_probabilities_are_exact_on_the_stored_support(logits, k):
    values, indices, lse = top_k_form(logits, k)
    p = _softmax(logits.astype(np.float64))
    stored_p = np.exp(values.astype(np.float64) - lse[:, None].astype(np.float64))
    np.testing.assert_allclose(
        stored_p, np.take_along_axis(p, indices.astype(np.int64), 1), rtol=1e-5, atol=1e-7
    )
    assert (np.diff(values, axis=1) <= 0).all()  # descending
    dense_p = _softmax(densify_top_k(values, indices, lse, logits.shape[1]))
    np.testing.assert_allclose(dense_p.sum(axis=1), 1.0, rtol=1e-9)
    tail = 1 - stored_p.sum(axis=1)
    if k < logits.shape[1]:
        missing = np.ones_like(p, bool)
        np.put_along_axis(missing, indices.astype(np.int64), False, 1)
        np.testing.assert_allclose((dense_p * missing).sum(axis=1), np.clip(tail, 0, None), atol=1e-5)


def test_top_k_with_k_equal_to_classes_is_lossless_at_every_temperature():
    logits = np.random.default_rng(0).normal(size=(50, 6)).astype(np.float32) * 4
    values, indices, lse = top_k_form(logits, 6)
    dense = densify_top_k(values, indices, lse, 6)
    for t in (1, 2, 4, 8):
        assert kl_per_row(logits, dense, t).max() < 1e-10


def test_kl_per_row_matches_the_closed_form():
    p_logits, q_logits = (
        np.array([[0.0, np.log(3.0)]]),
        np.array([[0.0, 0.0]]),
    )  # p = (1/4, 3/4), q = (1/2, 1/2)
    expected = 0.25 * np.log(0.5) + 0.75 * np.log(1.5)
    np.testing.assert_allclose(kl_per_row(p_logits, q_logits, 1.0), [expected], rtol=1e-12)
