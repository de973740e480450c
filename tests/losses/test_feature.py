"""Feature MSE (FitNets hints, Romero et al. 2015): the 1/(2D) closed form, both projection
directions, conv maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from pipeline.losses._taps import MissingTapError, TapShapeError
from pipeline.losses.feature import FeatureLoss, FeatureParams, feature_mse
from tests.losses.conftest import SHAPES, make_inputs


def numpy_feature_mse(student, teacher):
    student, teacher = np.asarray(student, np.float64), np.asarray(teacher, np.float64)
    rows, dim = student.shape[0], student[0].size
    return ((student - teacher) ** 2).reshape(rows, -1).sum(1).mean() / (2 * dim)


def test_feature_mse_matches_numpy_one_over_2d():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(7, 12)), rng.normal(size=(7, 12))
    assert feature_mse(torch.tensor(s), torch.tensor(t)).item() == pytest.approx(numpy_feature_mse(s, t))


def test_teacher_to_student_projection_is_phi_of_the_teacher_summed_over_taps():
    params = FeatureParams(
        taps=[{"student": "embed", "teacher": "embed"}, {"student": "conv", "teacher": "conv"}]
    )
    loss = FeatureLoss(params, SHAPES)
    inputs = make_inputs(seed=1)
    linear, conv = loss.pairs[0].projection, loss.pairs[1].projection
    assert isinstance(linear, torch.nn.Linear) and (linear.in_features, linear.out_features) == (8, 6)
    assert isinstance(conv, torch.nn.Conv2d) and conv.kernel_size == (1, 1)
    w, b = linear.weight.detach().numpy(), linear.bias.detach().numpy()
    embed = numpy_feature_mse(
        inputs.student_features["embed"].detach().numpy(),
        inputs.teacher_features["embed"].detach().numpy() @ w.T + b,
    )
    cw, cb = conv.weight.detach().numpy()[:, :, 0, 0], conv.bias.detach().numpy()
    projected = (
        np.einsum("oc,bchw->bohw", cw, inputs.teacher_features["conv"].detach().numpy())
        + cb[None, :, None, None]
    )
    maps = numpy_feature_mse(inputs.student_features["conv"].detach().numpy(), projected)
    assert loss(inputs)["feature"].item() == pytest.approx(embed + maps, rel=1e-5)


def test_student_to_teacher_projection_maps_the_student_as_fitnets():
    loss = FeatureLoss(
        FeatureParams(student_tap="embed", teacher_tap="embed", project="student_to_teacher"), SHAPES
    )
    inputs = make_inputs(seed=2)
    w, b = (p.detach().numpy() for p in (loss.pairs[0].projection.weight, loss.pairs[0].projection.bias))
    expected = numpy_feature_mse(
        inputs.student_features["embed"].detach().numpy() @ w.T + b,
        inputs.teacher_features["embed"].detach().numpy(),
    )
    assert loss(inputs)["feature"].item() == pytest.approx(expected, rel=1e-5)


def test_unknown_tap_lists_the_valid_ones():
    with pytest.raises(
        MissingTapError,
        match=r"teacher tap 'img' is not in the teacher cache, which holds attn \(2, 5, 5\), conv "
        r"\(4, 4, 4\), embed \(8,\), tokens \(3, 8\); if the teacher has an output 'img', add it to "
        r"teacher.tap_names in params.yaml .* re-run `dvc repro cache`",
    ):
        FeatureLoss(FeatureParams(student_tap="embed", teacher_tap="img"), SHAPES)
    with pytest.raises(MissingTapError, match="student tap 'img' does not exist; valid student taps: "):
        FeatureLoss(FeatureParams(student_tap="img", teacher_tap="embed"), SHAPES)


def test_unequal_shapes_without_projection_say_how_to_fix():
    with pytest.raises(TapShapeError, match="set project"):
        FeatureLoss(FeatureParams(student_tap="embed", teacher_tap="embed", project="none"), SHAPES)


def test_taps_are_named_one_way_only():
    with pytest.raises(ValidationError, match="not both"):
        FeatureParams(student_tap="embed", teacher_tap="embed", taps=[{"student": "conv", "teacher": "conv"}])
    with pytest.raises(ValidationError, match="name the taps"):
        FeatureParams()
