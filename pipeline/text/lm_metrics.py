"""Per-token metrics of a causal LM, on padded batches: only real tokens count.

Every function takes logits (B, L, V) and a mask (B, L) (1 = a real target at that position,
0 = padding), selects the real positions and scores them as rows with the classification metrics
of pipeline/evaluate/metrics.py (float64, natural logs). Perplexity is exp of the mean negative
log-likelihood per real token; agreement and KL are per real token too.
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.evaluate.metrics import MetricInputError, agreement, log_softmax, mean_kl


def _positions(logits: np.ndarray, mask: np.ndarray, name: str = "logits") -> np.ndarray:
    logits = np.asarray(logits)
    mask = np.asarray(mask)
    if logits.ndim != 3 or mask.shape != logits.shape[:2]:
        raise MetricInputError(
            f"{name}: expected (B, L, V) logits with a (B, L) mask, got {logits.shape} and {mask.shape}"
        )
    if not mask.any():
        raise MetricInputError("mask: no real token to score (every position is padding)")
    return mask.astype(bool)


def shift_for_next_token(input_ids: np.ndarray, attention_mask: np.ndarray):
    """The LM's view of a padded batch of whole sequences (<bos> ... <eos>): inputs ids[:, :-1],
    targets ids[:, 1:], target mask mask[:, 1:]. All (B, L-1) int64."""
    ids, mask = np.asarray(input_ids, dtype=np.int64), np.asarray(attention_mask, dtype=np.int64)
    return ids[:, :-1], mask[:, :-1], ids[:, 1:], mask[:, 1:]


def nll_sum(logits: np.ndarray, targets: np.ndarray, mask: np.ndarray) -> tuple[float, int]:
    """(sum of -log p(target) over real positions in nats, number of real positions). logits
    (B, L, V), targets (B, L) int in [0, V), mask (B, L). Sums add across batches."""
    real = _positions(logits, mask)
    rows = np.asarray(logits)[real]
    labels = np.asarray(targets, dtype=np.int64)[real]
    if labels.min() < 0 or labels.max() >= rows.shape[1]:
        raise MetricInputError(
            f"targets: ids must be in [0, {rows.shape[1]}), got [{labels.min()}, {labels.max()}]"
        )
    log_probs = log_softmax(rows)[np.arange(len(labels)), labels]
    return float(-log_probs.sum()), int(len(labels))


def perplexity(logits: np.ndarray, targets: np.ndarray, mask: np.ndarray) -> float:
    """exp(mean -log p(target) per real token): 1 for a perfect model, V for a uniform one."""
    total, count = nll_sum(logits, targets, mask)
    return math.exp(total / count)


def top1_agreement(teacher_logits: np.ndarray, student_logits: np.ndarray, mask: np.ndarray) -> float:
    """Fraction of real positions where the student's most likely next token is the teacher's."""
    real = _positions(teacher_logits, mask, "teacher_logits")
    _positions(student_logits, mask, "student_logits")
    return agreement(np.asarray(student_logits)[real], np.asarray(teacher_logits)[real])


def token_kl(
    teacher_logits: np.ndarray, student_logits: np.ndarray, mask: np.ndarray, temperature: float = 1.0
) -> float:
    """Mean over real positions of KL(p_teacher || p_student) in nats, both softmax(z / T),
    without the T^2 factor of a training loss."""
    real = _positions(teacher_logits, mask, "teacher_logits")
    _positions(student_logits, mask, "student_logits")
    return mean_kl(np.asarray(teacher_logits)[real], np.asarray(student_logits)[real], temperature)


def unigram_log_probs(train_targets: np.ndarray, vocab_size: int) -> np.ndarray:
    """(V,) float64 log-probabilities of the add-one-smoothed unigram model of `train_targets`
    (the token ids an LM is trained to predict): the baseline an LM's perplexity must beat."""
    counts = (
        np.bincount(np.asarray(train_targets, dtype=np.int64), minlength=vocab_size).astype(np.float64) + 1.0
    )
    return np.log(counts / counts.sum())


def unigram_perplexity(log_probs: np.ndarray, targets: np.ndarray, mask: np.ndarray) -> float:
    """Perplexity of a unigram model `log_probs` (V,) on targets (B, L) at the real positions."""
    real = np.asarray(mask).astype(bool)
    return math.exp(-float(np.asarray(log_probs)[np.asarray(targets)[real]].mean()))
