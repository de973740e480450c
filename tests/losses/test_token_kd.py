"""token_kd on dense teacher logits: closed forms, temperatures, masks of padded tokens, refusals,
and composition with the recipe."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.cache.token_batch import SampledTokens, TopKTokens
from pipeline.cache.token_forms import sample_token_targets, top_k_token_targets
from pipeline.config import ParamsError
from pipeline.losses._contract import LossInputs, TapShapes
from pipeline.losses.recipe import build_recipe
from pipeline.losses.token_divergences import generalized_jsd_tokens
from pipeline.losses.token_kd import (
    TokenTargetsError,
    VocabularyMismatchError,
    token_divergence,
)
from tests.losses.conftest import numpy_log_softmax

VOCAB = 7


def numpy_divergences(teacher_logits, student_logits, temperature=1.0, beta=0.5) -> dict[str, np.ndarray]:
    """Per-token divergences in float64, written out from their definitions."""
    log_p = numpy_log_softmax(teacher_logits, temperature)
    log_q = numpy_log_softmax(student_logits, temperature)
    p, q = np.exp(log_p), np.exp(log_q)
    m = beta * p + (1 - beta) * q
    return {
        "forward_kl": (p * (log_p - log_q)).sum(-1),
        "reverse_kl": (q * (log_q - log_p)).sum(-1),
        "jsd": beta * (p * np.log(p / m)).sum(-1) + (1 - beta) * (q * np.log(q / m)).sum(-1),
        "tvd": 0.5 * np.abs(p - q).sum(-1),
    }


def pair(tokens=6, vocab=VOCAB, seed=0, scale=2.0):
    rng = np.random.default_rng(seed)
    return scale * rng.normal(size=(tokens, vocab)), scale * rng.normal(size=(tokens, vocab))


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd", "tvd"])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_dense_divergences_match_their_float64_definitions_scaled_by_t_squared_or_t(divergence, temperature):
    teacher, student = pair()
    expected = numpy_divergences(teacher, student, temperature, beta=0.3)[divergence].mean()
    power = 1 if divergence == "tvd" else 2
    value = token_divergence(torch.tensor(student), torch.tensor(teacher), divergence, temperature, beta=0.3)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(temperature**power * expected, rel=1e-5)


def test_dense_forward_kl_gradient_is_t_times_the_probability_gap_over_tokens():
    teacher, student = pair(tokens=4)
    logits = torch.tensor(student, requires_grad=True)
    token_divergence(logits, torch.tensor(teacher), "forward_kl", temperature=3.0).backward()
    p, q = np.exp(numpy_log_softmax(teacher, 3.0)), np.exp(numpy_log_softmax(student, 3.0))
    np.testing.assert_allclose(logits.grad.numpy(), 3.0 * (q - p) / 4, rtol=1e-5, atol=1e-7)


def test_jsd_is_symmetric_at_one_half_bounded_by_log_two_and_tends_to_the_kls_at_the_ends():
    teacher, student = (torch.log_softmax(torch.tensor(x), -1) for x in pair(scale=4.0))
    forward, backward = generalized_jsd_tokens(teacher, student), generalized_jsd_tokens(student, teacher)
    torch.testing.assert_close(forward, backward)
    assert (forward <= np.log(2) + 1e-6).all()
    # the limits need beta p << q (and the reverse) on every id: milder logits, float64
    teacher, student = (torch.log_softmax(torch.tensor(x), -1) for x in pair(scale=1.0))
    kl = numpy_divergences(*(x.numpy() for x in (teacher, student)))
    small = generalized_jsd_tokens(teacher, student, beta=1e-6) / 1e-6
    large = generalized_jsd_tokens(teacher, student, beta=1 - 1e-6) / 1e-6
    np.testing.assert_allclose(small.numpy(), kl["forward_kl"], rtol=1e-3)
    np.testing.assert_allclose(large.numpy(), kl["reverse_kl"], rtol=1e-3)


def test_padded_tokens_of_a_sequence_batch_change_nothing_and_get_no_gradient():
    teacher, student = pair(tokens=2 * 5)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    real = mask.reshape(-1).numpy()
    expected = numpy_divergences(teacher[real], student[real])["forward_kl"].mean()
    garbage = student.copy()
    garbage[~real] = 1e4 * np.random.default_rng(1).normal(size=(2, VOCAB))
    for student_values in (student, garbage):
        logits = torch.tensor(student_values.reshape(2, 5, VOCAB), requires_grad=True)
        value = token_divergence(logits, torch.tensor(teacher.reshape(2, 5, VOCAB)), token_mask=mask)
        value.backward()
        assert value.item() == pytest.approx(expected, rel=1e-5)
        assert (logits.grad[~mask] == 0).all() and (logits.grad[mask] != 0).any()


def test_a_batch_with_no_real_token_gives_an_exact_zero_on_the_graph():
    teacher, student = pair(tokens=3)
    logits = torch.tensor(student, requires_grad=True)
    value = token_divergence(logits, torch.tensor(teacher), token_mask=torch.zeros(3, dtype=torch.bool))
    value.backward()
    assert value.item() == 0 and (logits.grad == 0).all()


def test_vocabularies_of_different_sizes_are_refused_naming_both():
    teacher, _ = pair(vocab=9)
    _, student = pair(vocab=VOCAB)
    with pytest.raises(
        VocabularyMismatchError, match="teacher's vocabulary has 9 tokens and the student's 7"
    ):
        token_divergence(torch.tensor(student), torch.tensor(teacher))
    sampled = SampledTokens.from_targets(sample_token_targets(teacher, draws=4, seed=0))
    with pytest.raises(VocabularyMismatchError, match="has 9 tokens and the student's 7"):
        token_divergence(torch.tensor(student), sampled)


def test_targets_for_other_tokens_than_the_students_are_refused():
    teacher, student = pair(tokens=6)
    top_k = TopKTokens.from_targets(top_k_token_targets(teacher[:4], k=2))
    with pytest.raises(
        TokenTargetsError, match=r"the top-k targets cover tokens \(4,\); the student's logits cover \(6,\)"
    ):
        token_divergence(torch.tensor(student), top_k)


@pytest.mark.parametrize("divergence", ["reverse_kl", "jsd", "tvd"])
def test_a_sampled_cache_is_refused_for_divergences_it_cannot_serve_naming_what_works(divergence):
    with pytest.raises(
        ParamsError, match="use divergence: forward_kl with the sampled cache, or teacher_source"
    ):
        build_recipe(
            {"kd": {"kind": "token_kd", "divergence": divergence, "teacher_source": "sampled"}}, SHAPES
        )
    recipe = build_recipe({"kd": {"kind": "token_kd", "divergence": divergence}}, SHAPES)  # auto
    teacher, student = pair()
    sampled = SampledTokens.from_targets(sample_token_targets(teacher, draws=8, seed=0))
    with pytest.raises(TokenTargetsError, match=f"divergence {divergence} needs the teacher's probability"):
        recipe(inputs(student, teacher, sampled))


def test_teacher_source_sampled_without_sampled_targets_in_the_batch_is_refused():
    recipe = build_recipe({"kd": {"kind": "token_kd", "teacher_source": "sampled"}}, SHAPES)
    teacher, student = pair()
    with pytest.raises(
        TokenTargetsError, match="needs a batch with sampled token targets; it carries NoneType"
    ):
        recipe(inputs(student, teacher))


SHAPES = TapShapes(num_classes=VOCAB)


def inputs(student, teacher, tokens=None, labels=None):
    return LossInputs(
        student_logits=torch.tensor(student, requires_grad=True),
        teacher_logits=torch.tensor(teacher),
        labels=torch.tensor(labels if labels is not None else [-1] * len(student)),
        teacher_tokens=tokens,
    )


def test_token_kd_composes_with_the_recipe_weights_and_is_logged_unweighted():
    teacher, student = pair()
    labels = np.random.default_rng(2).integers(0, VOCAB, len(student))
    recipe = build_recipe(
        {"ce": {"kind": "ce", "weight": 0.5}, "kd": {"kind": "token_kd", "weight": 2.0, "divergence": "tvd"}},
        SHAPES,
    )
    total, terms = recipe(inputs(student, teacher, labels=labels))
    assert set(terms) == {"ce", "kd"}
    assert terms["kd"].item() == pytest.approx(numpy_divergences(teacher, student)["tvd"].mean(), rel=1e-5)
    assert total.item() == pytest.approx(0.5 * terms["ce"].item() + 2.0 * terms["kd"].item(), rel=1e-6)


def test_auto_uses_the_batch_token_targets_and_dense_logits_otherwise():
    teacher, student = pair(vocab=VOCAB)
    recipe = build_recipe({"kd": {"kind": "token_kd"}}, SHAPES)
    top_k = TopKTokens.from_targets(top_k_token_targets(teacher, k=VOCAB, log_prob_dtype="float32"))
    _, dense_terms = recipe(inputs(student, teacher))
    _, top_k_terms = recipe(inputs(student, np.zeros_like(teacher), top_k))  # dense logits ignored
    assert top_k_terms["kd"].item() == pytest.approx(dense_terms["kd"].item(), rel=1e-5)
