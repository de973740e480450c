"""The sampled forward-KL estimator is unbiased (value and gradient), importance weights reach other
temperatures, and top-k on k + 1 buckets is biased by exactly its tail term."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from pipeline.cache.token_batch import SampledTokens, TopKTokens
from pipeline.cache.token_forms import sample_token_targets, top_k_token_targets
from pipeline.losses.token_divergences import (
    dense_token_divergence,
    divergence_tokens,
    top_k_token_divergence,
)
from pipeline.losses.token_kd import token_divergence
from pipeline.losses.token_sampled import SampledTemperatureError, sampled_forward_kl_tokens
from tests.losses.conftest import numpy_log_softmax

TOKENS, VOCAB, REPLICATES = 4, 6, 600


def teacher_and_student(seed=0):
    rng = np.random.default_rng(seed)
    return 1.5 * rng.normal(size=(TOKENS, VOCAB)), 1.5 * rng.normal(size=(TOKENS, VOCAB))


def replicated_estimates(
    teacher, student, draws, student_temperature, sampling_temperature, estimator="counts", **sampling
):
    """(R,) sampled estimates of the token-mean forward KL at the student's temperature and (R, N, V)
    their gradients, from R independent samplings of the same teacher (one call on the teacher tiled
    R times) at the sampling temperature."""
    sampled = sample_token_targets(
        np.tile(teacher, (REPLICATES, 1)),
        draws=draws,
        seed=1,
        temperature=sampling_temperature,
        log_prob_dtype="float32",
        **sampling,
    )
    logits = torch.tensor(np.tile(student, (REPLICATES, 1)), requires_grad=True)
    per_token = sampled_forward_kl_tokens(
        logits, SampledTokens.from_targets(sampled), student_temperature, estimator=estimator
    )
    per_token.sum().backward()
    values = per_token.detach().double().reshape(REPLICATES, TOKENS).mean(1).numpy()
    return values, logits.grad.double().reshape(REPLICATES, TOKENS, VOCAB).numpy() / TOKENS


def dense_value_and_gradient(teacher, student, temperature):
    logits = torch.tensor(student, requires_grad=True)
    value = dense_token_divergence(logits, torch.tensor(teacher), "forward_kl", temperature).mean()
    value.backward()
    return value.item(), logits.grad.double().numpy()


def assert_unbiased(samples, expected, sigmas=4.0):
    """The mean of `samples` (R, ...) is within `sigmas` standard errors of `expected` everywhere."""
    mean = samples.mean(0)
    error = samples.std(0, ddof=1) / np.sqrt(len(samples))
    gap = np.abs(mean - expected)
    # an element that never varies (e.g. a gradient that is q alone) must match to rounding
    assert (gap <= sigmas * error + 1e-9 + 1e-6 * np.abs(expected)).all(), (mean, expected, error)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_sampled_forward_kl_and_its_gradient_are_unbiased_at_the_sampling_temperature(temperature):
    teacher, student = teacher_and_student()
    values, gradients = replicated_estimates(teacher, student, 8, temperature, temperature)
    dense_value, dense_gradient = dense_value_and_gradient(teacher, student, temperature)
    assert_unbiased(values, dense_value)
    assert_unbiased(gradients, dense_gradient)
    assert values.std() > 0.01  # it is an estimate: single draws do vary


@pytest.mark.parametrize("student_temperature, sampling_temperature", [(1.0, 1.0), (1.0, 2.0)])
def test_inclusion_weights_are_unbiased_and_vary_less_than_counts(student_temperature, sampling_temperature):
    teacher, student = teacher_and_student(seed=5)
    stored = {"normalizer_temperatures": (1.0,)} if sampling_temperature != student_temperature else {}
    args = (teacher, student, 8, student_temperature, sampling_temperature)
    values, gradients = replicated_estimates(*args, estimator="inclusion", **stored)
    dense_value, dense_gradient = dense_value_and_gradient(teacher, student, student_temperature)
    assert_unbiased(values, dense_value)
    assert_unbiased(gradients, dense_gradient)
    counted, counted_gradients = replicated_estimates(*args, **stored)  # the same draws, weighed by c / D
    assert values.var() < counted.var() and gradients.var(0).sum() < counted_gradients.var(0).sum()


def test_importance_weights_from_a_stored_normaliser_reach_a_cooler_temperature_unbiasedly():
    teacher, student = teacher_and_student(seed=3)
    values, gradients = replicated_estimates(teacher, student, 16, 1.0, 2.0, normalizer_temperatures=(1.0,))
    dense_value, dense_gradient = dense_value_and_gradient(teacher, student, 1.0)
    assert_unbiased(values, dense_value)
    assert_unbiased(gradients, dense_gradient)


def test_exact_weights_without_the_normaliser_are_refused_and_self_normalised_ones_are_consistent():
    teacher, student = teacher_and_student(seed=4)
    sampled = SampledTokens.from_targets(
        sample_token_targets(teacher, draws=20_000, seed=0, temperature=2.0, log_prob_dtype="float32")
    )
    with pytest.raises(SampledTemperatureError, match=r"drawn at T = 2.0 with normalisers at T in \[2.0\]"):
        token_divergence(torch.tensor(student), sampled, temperature=1.0)
    estimate = token_divergence(torch.tensor(student), sampled, temperature=1.0, importance="self_normalized")
    dense, _ = dense_value_and_gradient(teacher, student, 1.0)
    assert estimate.item() == pytest.approx(dense, rel=0.05)


def test_float16_log_probs_change_the_kl_value_by_rounding_only_and_the_gradient_not_at_all():
    teacher, student = teacher_and_student(seed=5)
    results = []
    for dtype in ("float16", "float32"):
        targets = sample_token_targets(teacher, draws=32, seed=9, log_prob_dtype=dtype)
        logits = torch.tensor(student, requires_grad=True)
        value = token_divergence(logits, SampledTokens.from_targets(targets))
        value.backward()
        results.append((value.item(), logits.grad.clone()))
    (half, half_grad), (full, full_grad) = results
    entropy_scale = np.abs(numpy_log_softmax(teacher)).max()
    assert half == pytest.approx(full, abs=1e-3 * entropy_scale)
    torch.testing.assert_close(half_grad, full_grad, rtol=0, atol=0)


def test_tokens_without_draws_add_nothing_and_masks_select_the_real_tokens():
    teacher, student = teacher_and_student(seed=6)
    targets = SampledTokens.from_targets(sample_token_targets(teacher, draws=8, seed=0, width=8))
    mask = torch.tensor([True, True, False, True])
    masked = token_divergence(torch.tensor(student), targets, token_mask=mask)
    real = SampledTokens.from_targets(sample_token_targets(teacher, draws=8, seed=0, width=8))
    keep = mask.numpy()
    per_token = sampled_forward_kl_tokens(torch.tensor(student), real)
    assert masked.item() == pytest.approx(per_token[keep].mean().item(), rel=1e-6)
    empty = SampledTokens(
        targets.ids,
        torch.zeros_like(targets.counts),
        targets.log_probs,
        targets.log_normalizers,
        8,
        1.0,
        (1.0,),
        VOCAB,
    )
    assert (sampled_forward_kl_tokens(torch.tensor(student), empty) == 0).all()


def tail_kl(teacher, student, top_ids):
    """tail_p x KL(p's tail shape || q's tail shape) per token, float64: forward KL's top-k bias."""
    log_p, log_q = numpy_log_softmax(teacher), numpy_log_softmax(student)
    result = []
    for row, ids in enumerate(top_ids):
        tail = np.setdiff1d(np.arange(teacher.shape[1]), ids)
        p, q = np.exp(log_p[row, tail]), np.exp(log_q[row, tail])
        result.append(p.sum() * np.sum(p / p.sum() * np.log((p / p.sum()) / (q / q.sum()))))
    return np.array(result)


def test_top_k_forward_kl_is_the_dense_kl_minus_exactly_the_tail_term():
    teacher, student = teacher_and_student(seed=7)
    targets = top_k_token_targets(teacher, k=2, log_prob_dtype="float32")
    buckets = top_k_token_divergence(torch.tensor(student), TopKTokens.from_targets(targets), "forward_kl")
    dense = dense_token_divergence(torch.tensor(student), torch.tensor(teacher), "forward_kl")
    bias = tail_kl(teacher, student, targets.ids.astype(np.int64))
    np.testing.assert_allclose((dense - buckets).numpy(), bias, rtol=1e-4, atol=1e-6)
    assert bias.mean() > 0.05 * dense.mean().item()  # the tail matters here: top-k is biased low


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd", "tvd"])
def test_every_divergence_on_top_k_buckets_is_at_most_the_dense_one_and_equal_at_k_equal_v(divergence):
    teacher, student = (torch.tensor(x) for x in teacher_and_student(seed=8))
    dense = dense_token_divergence(student, teacher, divergence)
    for k, check in (
        (3, lambda a, b: (a <= b + 1e-6).all()),
        (VOCAB, lambda a, b: torch.allclose(a, b, rtol=1e-5)),
    ):
        top_k = TopKTokens.from_targets(top_k_token_targets(teacher.numpy(), k=k, log_prob_dtype="float32"))
        assert check(top_k_token_divergence(student, top_k, divergence), dense)


def test_sequence_batches_reshape_the_targets_to_the_students_leading_axes():
    teacher, student = teacher_and_student(seed=9)
    targets = SampledTokens.from_targets(sample_token_targets(teacher, draws=8, seed=0))
    flat = token_divergence(torch.tensor(student), targets)
    batched = token_divergence(torch.tensor(student.reshape(2, 2, VOCAB)), targets.reshape(2, 2).to("cpu"))
    assert batched.item() == pytest.approx(flat.item(), rel=1e-6)
    assert targets.reshape(2, 2).ids.shape == (2, 2, targets.ids.shape[-1])


@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
def test_top_k_at_another_temperature_is_exact_when_the_tail_is_flat(temperature):
    teacher, student = teacher_and_student(seed=10)
    teacher[:, 3:] = -2.0  # every tail id alike: the maximum-entropy tail is the true one
    teacher[:, :3] = [[4.0, 3.0, 2.0]]
    top_k = TopKTokens.from_targets(
        top_k_token_targets(teacher, k=3, temperature=2.0, log_prob_dtype="float32")
    )
    for divergence in ("forward_kl", "tvd"):
        buckets = top_k_token_divergence(torch.tensor(student), top_k, divergence, temperature)
        log_p = torch.tensor(numpy_log_softmax(teacher, temperature))
        log_q = torch.log_softmax(torch.tensor(student) / temperature, -1)
        dense_buckets = [
            torch.cat([x[:, :3], x[:, 3:].logsumexp(-1, keepdim=True)], 1) for x in (log_p, log_q)
        ]
        expected = divergence_tokens(divergence, *dense_buckets)
        torch.testing.assert_close(buckets.double(), expected, rtol=1e-5, atol=1e-6)


def test_ids_and_counts_alone_give_the_same_gradient_and_the_kl_plus_the_teachers_entropy():
    teacher, student = teacher_and_student(seed=4)
    full = sample_token_targets(teacher, draws=16, seed=2, log_prob_dtype="float32")
    alone = SampledTokens.from_targets(dataclasses.replace(full, log_probs=None, log_normalizers=None))
    values, gradients = [], []
    for targets in (SampledTokens.from_targets(full), alone):
        logits = torch.tensor(student, requires_grad=True)
        value = token_divergence(logits, targets)
        value.backward()
        values.append(value.item())
        gradients.append(logits.grad)
    torch.testing.assert_close(
        gradients[1], gradients[0], rtol=1e-5, atol=1e-6 * float(gradients[0].abs().max())
    )
    live = full.counts > 0
    entropy_estimate = -(full.counts * np.where(live, full.log_probs, 0.0)).sum(1).mean() / 16
    np.testing.assert_allclose(values[1], values[0] + entropy_estimate, rtol=1e-5)


@pytest.mark.parametrize(
    ("estimator", "temperature"), [("inclusion", 1.0), ("counts", 2.0)], ids=["inclusion", "other_T"]
)
def test_ids_and_counts_alone_refuse_what_needs_the_log_probs_naming_the_fix(estimator, temperature):
    teacher, student = teacher_and_student()
    full = sample_token_targets(teacher, draws=8, seed=0)
    alone = SampledTokens.from_targets(dataclasses.replace(full, log_probs=None, log_normalizers=None))
    with pytest.raises(SampledTemperatureError, match="ids \\+ counts alone .* store_log_probs: true"):
        token_divergence(torch.tensor(student), alone, temperature=temperature, estimator=estimator)
