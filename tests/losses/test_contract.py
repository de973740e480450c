"""Every family honours the adapter contract (docs/losses.md), parametrized over FAMILIES."""

from __future__ import annotations

import pytest
import torch

from pipeline.losses import FAMILIES
from tests.losses.conftest import EXAMPLES, SHAPES, make_inputs, student_tensors, teacher_tensors


def _adapter(kind: str):
    family = FAMILIES[kind]
    return family.adapter(family.params.model_validate(EXAMPLES[kind]), SHAPES), family


def test_every_family_has_a_contract_example():
    assert set(EXAMPLES) == set(FAMILIES)


@pytest.mark.parametrize("kind", sorted(FAMILIES))
def test_family_returns_finite_terms_with_stable_keys_matching_its_weights(kind):
    adapter, family = _adapter(kind)
    first, second = adapter(make_inputs(seed=1)), adapter(make_inputs(seed=2))
    assert list(first) == list(second)
    assert set(first) == set(adapter.params.sub_weights(0))
    for value in first.values():
        assert value.shape == () and value.dtype == torch.float32 and torch.isfinite(value)


@pytest.mark.parametrize("kind", sorted(FAMILIES))
def test_gradients_reach_student_and_projections_never_the_teacher(kind):
    adapter, _ = _adapter(kind)
    inputs = make_inputs(seed=3)
    sum(adapter(inputs).values()).backward()
    assert any(t.grad is not None and t.grad.abs().sum() > 0 for t in student_tensors(inputs))
    assert all(t.grad is None for t in teacher_tensors(inputs))
    for name, parameter in adapter.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name


@pytest.mark.parametrize("kind", sorted(FAMILIES))
def test_float16_inputs_give_finite_terms_close_to_float32(kind):
    adapter, _ = _adapter(kind)
    full = adapter(make_inputs(seed=4))
    half = adapter(make_inputs(seed=4, dtype=torch.float16))
    for key in full:
        assert torch.isfinite(half[key])
        assert half[key].item() == pytest.approx(full[key].item(), rel=2e-2, abs=2e-2)


@pytest.mark.parametrize("kind", sorted(FAMILIES))
def test_all_unlabelled_batch_gives_finite_loss_and_finite_gradients(kind):
    adapter, _ = _adapter(kind)
    inputs = make_inputs(seed=5, labels=[-1] * 8)
    terms = adapter(inputs)
    total = sum(terms.values())
    assert torch.isfinite(total)
    total.backward()
    for tensor in student_tensors(inputs):
        assert tensor.grad is None or torch.isfinite(tensor.grad).all()


@pytest.mark.parametrize("kind", sorted(FAMILIES))
def test_logits_of_magnitude_1e4_give_finite_terms_and_gradients(kind):
    adapter, _ = _adapter(kind)
    inputs = make_inputs(seed=6, logit_scale=1e4)
    total = sum(adapter(inputs).values())
    total.backward()
    assert torch.isfinite(total)
    assert all(t.grad is None or torch.isfinite(t.grad).all() for t in student_tensors(inputs))
