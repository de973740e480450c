"""Per-token LM metrics in closed form: uniform and certain models, masks, agreement and KL."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.evaluate.metrics import MetricInputError
from pipeline.text.lm_metrics import (
    nll_sum,
    perplexity,
    shift_for_next_token,
    token_kl,
    top1_agreement,
    unigram_log_probs,
    unigram_perplexity,
)

RNG = np.random.default_rng(0)


def test_a_uniform_model_has_perplexity_equal_to_the_vocabulary_size():
    logits = np.zeros((2, 5, 37))
    assert perplexity(logits, RNG.integers(0, 37, (2, 5)), np.ones((2, 5))) == pytest.approx(37, rel=1e-12)


def test_a_certain_and_right_model_has_perplexity_one():
    targets = RNG.integers(0, 11, (3, 4))
    logits = np.where(np.arange(11) == targets[..., None], 50.0, -50.0)
    assert perplexity(logits, targets, np.ones((3, 4))) == pytest.approx(1.0, rel=1e-9)


def test_padding_positions_count_for_nothing():
    logits, targets = RNG.normal(size=(2, 6, 9)), RNG.integers(0, 9, (2, 6))
    mask = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]])
    noisy = logits.copy()
    noisy[mask == 0] = RNG.normal(scale=100, size=noisy[mask == 0].shape)
    assert perplexity(noisy, targets, mask) == perplexity(logits, targets, mask)
    total, count = nll_sum(logits, targets, mask)
    assert count == 6
    by_hand = -sum(
        logits[b, t, targets[b, t]] - math.log(np.exp(logits[b, t]).sum()) for b, t in zip(*np.nonzero(mask))
    )
    assert total == pytest.approx(by_hand, rel=1e-12)


def test_agreement_and_kl_of_a_model_with_itself_are_one_and_zero():
    logits, mask = RNG.normal(size=(2, 5, 7)), np.ones((2, 5))
    assert top1_agreement(logits, logits, mask) == 1.0
    assert token_kl(logits, logits, mask) == pytest.approx(0.0, abs=1e-12)


def test_kl_and_agreement_match_their_closed_forms_at_the_real_positions():
    p, q = np.array([0.7, 0.2, 0.1]), np.array([0.2, 0.5, 0.3])
    teacher = np.log(np.tile(p, (1, 2, 1)))
    student = np.log(np.stack([[q, p]]))
    mask = np.array([[1, 0]])
    assert token_kl(teacher, student, mask) == pytest.approx(float((p * np.log(p / q)).sum()), rel=1e-12)
    assert top1_agreement(teacher, student, mask) == 0.0
    assert top1_agreement(teacher, student, np.array([[1, 1]])) == 0.5


def test_the_unigram_baseline_of_uniform_counts_is_the_vocabulary_size():
    log_probs = unigram_log_probs(np.repeat(np.arange(8), 5), 8)
    assert unigram_perplexity(log_probs, RNG.integers(0, 8, (3, 4)), np.ones((3, 4))) == pytest.approx(8)


def test_whole_sequences_shift_into_inputs_and_next_token_targets():
    ids, mask = np.array([[2, 5, 6, 3], [2, 7, 3, 0]]), np.array([[1, 1, 1, 1], [1, 1, 1, 0]])
    inputs, input_mask, targets, target_mask = shift_for_next_token(ids, mask)
    assert inputs.tolist() == [[2, 5, 6], [2, 7, 3]] and targets.tolist() == [[5, 6, 3], [7, 3, 0]]
    assert target_mask.tolist() == [[1, 1, 1], [1, 1, 0]] and input_mask.tolist() == [[1, 1, 1], [1, 1, 1]]


def test_metric_inputs_that_cannot_be_scored_are_refused():
    with pytest.raises(MetricInputError, match="no real token"):
        perplexity(np.zeros((1, 2, 3)), np.zeros((1, 2), dtype=int), np.zeros((1, 2)))
    with pytest.raises(MetricInputError, match=r"\(B, L, V\)"):
        perplexity(np.zeros((2, 3)), np.zeros((2,), dtype=int), np.ones((2,)))
    with pytest.raises(MetricInputError, match="targets"):
        perplexity(np.zeros((1, 2, 3)), np.array([[0, 5]]), np.ones((1, 2)))
