"""Hidden-state matching over a layer map (Jiao et al. 2020, TinyBERT; Romero et al. 2015, FitNets)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from pipeline.losses.hidden import HiddenLoss, HiddenParams, closed_form_residual, hidden_state_distance
from tests.losses.conftest import SHAPES, make_inputs


def test_layer_map_sums_frobenius_distances_of_projected_teacher_layers():
    params = HiddenParams(
        layers=[{"student": "embed", "teacher": "embed"}, {"student": "tokens", "teacher": "tokens"}]
    )
    loss, inputs = HiddenLoss(params, SHAPES), make_inputs(seed=1)
    expected = 0.0
    for pair, (s_tap, t_tap) in zip(loss.pairs, [("embed", "embed"), ("tokens", "tokens")]):
        w, b = pair.projection.weight.detach().numpy(), pair.projection.bias.detach().numpy()
        s = inputs.student_features[s_tap].detach().numpy().astype(np.float64)
        t = inputs.teacher_features[t_tap].detach().numpy() @ w.T + b  # phi on the last axis (tokens too)
        expected += ((s - t) ** 2).sum() / len(s)
    assert loss(inputs)["hidden"].item() == pytest.approx(expected, rel=1e-5)


def test_closed_form_projection_is_the_least_squares_residual():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(40, 3)), rng.normal(size=(40, 5))
    w, *_ = np.linalg.lstsq(t, s, rcond=None)  # W*^T of the ridge-free least squares
    expected = ((s - t @ w) ** 2).sum() / len(s)
    assert closed_form_residual(torch.tensor(s), torch.tensor(t), ridge=0.0).item() == pytest.approx(
        expected, rel=1e-4
    )
    # A student that is an exact linear map of the teacher has nothing left to match.
    m = rng.normal(size=(5, 3))
    assert closed_form_residual(torch.tensor(t @ m), torch.tensor(t), ridge=0.0).item() == pytest.approx(
        0.0, abs=1e-4
    )


def test_closed_form_term_has_no_parameters_and_grads_reach_the_student():
    params = HiddenParams(layers=[{"student": "embed", "teacher": "embed"}], project="closed_form")
    loss, inputs = HiddenLoss(params, SHAPES), make_inputs(rows=16)
    assert not list(loss.parameters())
    loss(inputs)["hidden"].backward()
    assert (
        inputs.student_features["embed"].grad.abs().sum() > 0
        and inputs.teacher_features["embed"].grad is None
    )


def test_hidden_distance_is_frobenius_over_batch():
    s, t = torch.ones(4, 2, 3), torch.zeros(4, 2, 3)
    assert hidden_state_distance(s, t).item() == pytest.approx(6.0)


def test_layer_map_must_not_be_empty():
    with pytest.raises(ValidationError, match="layers"):
        HiddenParams(layers=[])
