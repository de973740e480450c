"""Fast paths give the values and gradients of the plain forms they replace (float tolerance),
including masked (-inf) teacher classes, float16 inputs and logits of magnitude 1e4."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.losses._probs import (
    hard_ce_rows,
    kl_batch_mean,
    kl_rows,
    log_softmax_at,
    soft_ce_batch_mean,
    soft_ce_rows,
)
from pipeline.losses.recipe import Recipe, build_recipe
from tests.losses.conftest import numpy_log_softmax


def _logits(
    seed: int, rows: int = 7, classes: int = 6, scale: float = 3.0, dtype=torch.float32
) -> torch.Tensor:
    values = scale * np.random.default_rng(seed).normal(size=(rows, classes))
    return torch.tensor(values, dtype=dtype).requires_grad_(True)


def _value_and_grad(loss_of, student: torch.Tensor) -> tuple[float, np.ndarray]:
    leaf = student.detach().clone().requires_grad_(True)
    value = loss_of(leaf)
    value.backward()
    return value.item(), leaf.grad.double().numpy()


@pytest.mark.parametrize("scale", [1.0, 10.0, 1e4])
@pytest.mark.parametrize("temperature", [1.0, 4.0])
@pytest.mark.parametrize("fast, plain", [(kl_batch_mean, kl_rows), (soft_ce_batch_mean, soft_ce_rows)])
def test_fused_kl_and_soft_ce_equal_the_masked_row_forms(fast, plain, temperature, scale):
    student, teacher = _logits(0, scale=scale), _logits(1, scale=scale).detach()
    target = log_softmax_at(teacher, temperature)
    fast_value, fast_grad = _value_and_grad(
        lambda z: fast(target, log_softmax_at(z, temperature), scale=temperature**2), student
    )
    plain_value, plain_grad = _value_and_grad(
        lambda z: temperature**2 * plain(target, log_softmax_at(z, temperature)).mean(), student
    )
    assert np.isfinite(fast_value) and np.isfinite(fast_grad).all()
    assert fast_value == pytest.approx(plain_value, rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(fast_grad, plain_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("fast, plain", [(kl_batch_mean, kl_rows), (soft_ce_batch_mean, soft_ce_rows)])
def test_teacher_classes_masked_with_minus_inf_contribute_nothing(fast, plain):
    teacher = _logits(2).detach().clone()
    teacher[:, 0] = float("-inf")
    teacher[3, 2:] = float("-inf")
    target = log_softmax_at(teacher, 2.0)
    student = _logits(3)
    fast_value, fast_grad = _value_and_grad(lambda z: fast(target, log_softmax_at(z, 2.0)), student)
    plain_value, plain_grad = _value_and_grad(lambda z: plain(target, log_softmax_at(z, 2.0)).mean(), student)
    assert np.isfinite(fast_value) and np.isfinite(fast_grad).all()
    assert fast_value == pytest.approx(plain_value, rel=1e-6)
    np.testing.assert_allclose(fast_grad, plain_grad, rtol=1e-6, atol=1e-8)


def test_fused_kl_matches_numpy_in_float16():
    student, teacher = _logits(4, dtype=torch.float16), _logits(5, dtype=torch.float16).detach()
    value = kl_batch_mean(log_softmax_at(teacher, 3.0), log_softmax_at(student, 3.0), scale=9.0)
    assert value.dtype == torch.float32
    log_pt = numpy_log_softmax(teacher.float().numpy(), 3.0)
    log_ps = numpy_log_softmax(student.detach().float().numpy(), 3.0)
    expected = 9.0 * (np.exp(log_pt) * (log_pt - log_ps)).sum(-1).mean()
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_fused_kl_gives_the_teacher_no_gradient():
    student, teacher = _logits(6), _logits(7)
    kl_batch_mean(log_softmax_at(teacher), log_softmax_at(student)).backward()
    assert teacher.grad is None and student.grad is not None


def test_hard_ce_rows_is_minus_log_softmax_at_the_label_and_zero_without_label():
    student = _logits(8)
    labels = torch.tensor([0, 5, -1, 2, -1, 1, 3])
    rows = hard_ce_rows(student, labels)
    rows.sum().backward()
    log_p = numpy_log_softmax(student.detach().numpy())
    keep = labels.numpy() >= 0
    np.testing.assert_allclose(rows.detach().numpy()[keep], -log_p[keep, labels.numpy()[keep]], rtol=1e-6)
    assert torch.all(rows[~torch.from_numpy(keep)] == 0)
    assert torch.all(student.grad[~torch.from_numpy(keep)] == 0)


def test_hard_ce_rows_computes_in_float32_for_float16_logits():
    rows = hard_ce_rows(_logits(9, scale=1e4, dtype=torch.float16), torch.tensor([0, 1, 2, 3, 4, 5, 0]))
    assert rows.dtype == torch.float32 and torch.isfinite(rows).all()


class _ExplodingRecipe(Recipe):
    """A recipe whose total turns NaN from epoch 1 on (to check the loop's deferred divergence check)."""

    def forward(self, inputs):
        total, terms = super().forward(inputs)
        return (total * float("nan") if inputs.epoch >= 1 else total), terms


def _exploding_ce(loss, shapes):
    ce = build_recipe({"ce": {"kind": "ce", "weight": 1.0}}, shapes)
    return _ExplodingRecipe(ce.params, dict(ce.terms))


def test_the_loop_sums_terms_on_device_and_a_nan_loss_stops_the_run_keeping_the_last_good_checkpoint(
    tmp_path, monkeypatch
):
    from pipeline.train.checkpoint import load_checkpoint
    from pipeline.train.data import join_training_data
    from pipeline.train.loop import DivergedError, run_seed
    from tests.train.helpers import make_cache, make_prepared, student_params

    prepared = make_prepared()
    data = join_training_data(make_cache(prepared), prepared, "labelled")
    # a checkpoint at every epoch end too (by time: any time is due), so the last good one is epoch 0's end
    params = student_params(epochs=3, checkpoint_every_steps=2, checkpoint_every_seconds=1e-9)
    monkeypatch.setattr("pipeline.train.loop.build_recipe", _exploding_ce)
    with pytest.raises(DivergedError, match="epoch 1.*optimizer.lr"):
        run_seed(params, data, 0, tmp_path, "hash", progress=False)
    state, _ = load_checkpoint(tmp_path, "hash")
    assert state.epoch == 1 and state.step_in_epoch == 0  # written at the end of epoch 0, never after
    (metrics,) = state.history[0].values()
    assert np.isfinite(metrics["train/loss"]) and metrics["train/loss"] == pytest.approx(metrics["train/ce"])
    assert metrics["lr"] > 0
