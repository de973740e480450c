"""The optional sparse form of cached logits, and the KL error of any stored form.

Top-k stores the k largest raw logits, their class indices, and the log-sum-exp of the *full* row
(docs/cache_format.md, "The sparse form"). At T = 1 the probabilities on the stored support are exact,
log p_1(i) = z_i - lse, and the tail mass 1 - sum_K p_1(i) is known but not its shape. To compare
it with the dense logits at any T we densify it with a flat tail: every missing class gets the
logit v with (C - k) e^v = tail mass * e^lse, i.e. the tail mass spread uniformly at T = 1 (the
"marginal smoothing" of Shen & Xing 2022, "A Fast Knowledge Distillation Framework for Visual
Recognition", arXiv:2112.01528). This is biased (Anshumann et al. 2025, "Sparse Logit Sampling:
Accelerating Knowledge Distillation in LLMs", arXiv:2503.16870: the student learns an up-scaled head
and a flat tail), and the bias grows with T because the tail
holds most of the mass at high T, which is why the cache report always prints its KL error.
"""

from __future__ import annotations

import numpy as np

TAIL_MASS_FLOOR = 1e-30
"""Smallest tail mass a densified row gets (k < C), so its KL error stays finite."""


def top_k_form(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The top-k form of raw logits.

    logits: (N, C) float. Returns values (N, k) float32 descending (ties: lower class first),
    indices (N, k) int32, logsumexp (N,) float32 of the full row at T = 1.
    """
    logits = np.asarray(logits, np.float32)
    k = min(k, logits.shape[1])
    order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    values = np.take_along_axis(logits, order, axis=1)
    row_max = logits.max(axis=1, keepdims=True).astype(np.float64)
    lse = (row_max[:, 0] + np.log(np.exp(logits - row_max).sum(axis=1))).astype(np.float32)
    return values, order.astype(np.int32), lse


def densify_top_k(
    values: np.ndarray, indices: np.ndarray, logsumexp: np.ndarray, num_classes: int
) -> np.ndarray:
    """(N, C) float64 logits rebuilt from the top-k form with a flat tail (module docstring).

    values, indices: (N, k); logsumexp: (N,). Exact at T = 1 on the stored support; the tail
    logit is -inf when k == C; the tail mass is floored at TAIL_MASS_FLOOR otherwise.
    """
    values = np.asarray(values, np.float64)
    lse = np.asarray(logsumexp, np.float64)[:, None]
    n, k = values.shape
    head_mass = np.exp(values - lse).sum(axis=1, keepdims=True)
    missing = num_classes - k
    # The floor keeps the tail finite when rounding (float16 values) makes the head sum to >= 1.
    tail_mass = np.clip(1.0 - head_mass, TAIL_MASS_FLOOR if missing else 0.0, None)
    with np.errstate(divide="ignore"):
        tail_logit = lse + np.log(tail_mass) - np.log(max(missing, 1))
    dense = np.repeat(tail_logit, num_classes, axis=1)
    np.put_along_axis(dense, np.asarray(indices, np.int64), values, axis=1)
    return dense


def log_softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """log softmax(logits / T) along the last axis, in float64 (Hinton et al. 2015 §2)."""
    scaled = np.asarray(logits, np.float64) / temperature
    finite_max = np.max(np.where(np.isfinite(scaled), scaled, -np.inf), axis=-1, keepdims=True)
    shifted = scaled - finite_max
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def kl_per_row(reference_logits: np.ndarray, approx_logits: np.ndarray, temperature: float) -> np.ndarray:
    """(N,) KL(p_T(reference) || p_T(approx)) in nats, p_T = softmax(z / T).

    The error a student sees when it learns from `approx` instead of `reference` at temperature T.
    Classes where p_T(approx) = 0 but p_T(reference) > 0 give +inf.
    """
    log_p = log_softmax(reference_logits, temperature)
    log_q = log_softmax(approx_logits, temperature)
    p = np.exp(log_p)
    with np.errstate(invalid="ignore"):
        terms = np.where(p > 0, p * (log_p - log_q), 0.0)
    return np.maximum(terms.sum(axis=-1), 0.0)
