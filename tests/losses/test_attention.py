"""Attention transfer: exported maps (Jiao et al. 2020) and the spatial form (Zagoruyko & Komodakis 2017)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.losses._taps import TapShapeError
from pipeline.losses.attention import (
    AttentionLoss,
    AttentionParams,
    attention_map_distance,
    spatial_attention_distance,
)
from tests.losses.conftest import SHAPES, make_inputs


def test_map_distance_matches_numpy():
    inputs = make_inputs(seed=1)
    s, t = (
        inputs.student_features["attn"].detach().numpy(),
        inputs.teacher_features["attn"].detach().numpy(),
    )
    expected = ((s - t) ** 2).sum() / len(s)
    value = AttentionLoss(AttentionParams(layers=[{"student": "attn", "teacher": "attn"}]), SHAPES)(inputs)
    assert value["attention"].item() == pytest.approx(expected, rel=1e-5)
    assert attention_map_distance(torch.tensor(s), torch.tensor(s)).item() == 0.0


def numpy_spatial(fmap, p=2.0):
    pooled = (np.abs(fmap) ** p).mean(axis=1).reshape(len(fmap), -1)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def test_spatial_form_is_normalised_channel_pooled_squares_and_ignores_channel_count():
    inputs = make_inputs(seed=2)
    s, t = (
        inputs.student_features["conv"].detach().numpy(),
        inputs.teacher_features["conv"].detach().numpy(),
    )
    expected = ((numpy_spatial(s) - numpy_spatial(t)) ** 2).sum() / len(s)
    params = AttentionParams(layers=[{"student": "conv", "teacher": "conv"}], form="spatial")
    assert AttentionLoss(params, SHAPES)(inputs)["attention"].item() == pytest.approx(expected, rel=1e-5)
    # scaling a feature map does not change its normalised attention
    x = torch.tensor(s)
    assert spatial_attention_distance(3 * x, x).item() == pytest.approx(0.0, abs=1e-10)


def test_head_mean_compares_maps_with_different_head_counts():
    shapes = type(SHAPES)(5, {"attn": (2, 5, 5)}, {"attn": (4, 5, 5)})
    with pytest.raises(TapShapeError, match="head_reduction"):
        AttentionLoss(AttentionParams(layers=[{"student": "attn", "teacher": "attn"}]), shapes)
    loss = AttentionLoss(
        AttentionParams(layers=[{"student": "attn", "teacher": "attn"}], head_reduction="mean"), shapes
    )
    s, t = torch.rand(3, 2, 5, 5), torch.rand(3, 4, 5, 5)
    inputs = make_inputs(rows=3)
    inputs = type(inputs)(
        **{**inputs.__dict__, "student_features": {"attn": s}, "teacher_features": {"attn": t}}
    )
    expected = ((s.mean(1).numpy() - t.mean(1).numpy()) ** 2).sum() / 3
    assert loss(inputs)["attention"].item() == pytest.approx(expected, rel=1e-5)
