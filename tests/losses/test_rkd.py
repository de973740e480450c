"""RKD (Park et al. 2019): closed forms of distance and both angle forms,
invariances, the reference implementation, and bounded memory of the O(B^3) triplet angle."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.losses.rkd import (
    RKDLoss,
    RKDParams,
    plain_rkd_angle_triplet,
    rkd_angle_pairwise,
    rkd_angle_triplet,
    rkd_distance,
)
from tests.losses.conftest import SHAPES, make_inputs


def smooth_l1(a, b):
    diff = np.abs(a - b)
    return np.where(diff < 1, 0.5 * diff**2, diff - 0.5).mean()


def numpy_distance(student, teacher, normalize=True):
    def dist(x):
        d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
        off = ~np.eye(len(x), dtype=bool)
        return d / d[off].mean() if normalize else d

    return smooth_l1(dist(student), dist(teacher))


def numpy_pairwise_angle(student, teacher):
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    return smooth_l1(unit(student) @ unit(student).T, unit(teacher) @ unit(teacher).T)


def numpy_triplet_angle(student, teacher):
    def cosines(x):
        diff = x[None, :, :] - x[:, None, :]  # [i, j] = x_j - x_i
        norm = np.linalg.norm(diff, axis=2, keepdims=True)
        unit = np.divide(diff, norm, out=np.zeros_like(diff), where=norm > 0)
        return np.einsum("ijd,ikd->ijk", unit, unit)  # angle at vertex i

    return smooth_l1(cosines(student), cosines(teacher))


@pytest.fixture
def pair():
    rng = np.random.default_rng(0)
    return rng.normal(size=(11, 4)), 3 * rng.normal(size=(11, 7))


@pytest.mark.parametrize("normalize", [True, False])
def test_distance_matches_numpy(pair, normalize):
    s, t = pair
    value = rkd_distance(torch.tensor(s), torch.tensor(t), normalize)
    assert value.item() == pytest.approx(numpy_distance(s, t, normalize), rel=1e-4)


def test_pairwise_angle_matches_numpy(pair):
    s, t = pair
    assert rkd_angle_pairwise(torch.tensor(s), torch.tensor(t)).item() == pytest.approx(
        numpy_pairwise_angle(s, t), rel=1e-5
    )


@pytest.mark.parametrize("chunk", [None, 1, 4, 11])
def test_triplet_angle_matches_numpy_for_any_chunking(pair, chunk):
    s, t = pair
    value = rkd_angle_triplet(torch.tensor(s), torch.tensor(t), anchors_per_chunk=chunk)
    assert value.item() == pytest.approx(numpy_triplet_angle(s, t), rel=1e-4)


@pytest.mark.parametrize("chunk", [None, 1, 3])
def test_fused_triplet_angle_equals_the_plain_form_in_float64(chunk):
    # The plain form is Park et al.'s code (B^3 cosines, B^2 D differences), differentiated by autograd.
    rng = np.random.default_rng(1)
    student, teacher = torch.tensor(rng.normal(size=(13, 5))), torch.tensor(rng.normal(size=(13, 6)))
    values, grads = [], []
    for loss in (lambda s, t: rkd_angle_triplet(s, t, anchors_per_chunk=chunk), plain_rkd_angle_triplet):
        leaf = student.clone().requires_grad_(True)
        value = loss(leaf, teacher)
        value.backward()
        values.append(value.item())
        grads.append(leaf.grad.numpy())
    assert values[0] == pytest.approx(values[1], rel=1e-9)
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-9, atol=1e-9 * np.abs(grads[1]).max())


def _orthogonal(seed, dim):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(dim, dim)))
    return q


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.1, 10.0))
def test_rkd_is_unchanged_by_a_common_rotation_and_distance_by_scaling(seed, scale):
    rng = np.random.default_rng(seed)
    s, t = rng.normal(size=(9, 4)), rng.normal(size=(9, 5))
    rs, rt = s @ _orthogonal(seed, 4), t @ _orthogonal(seed + 1, 5)
    for loss in (rkd_distance, rkd_angle_pairwise, rkd_angle_triplet):
        base = loss(torch.tensor(s), torch.tensor(t)).item()
        assert loss(torch.tensor(rs), torch.tensor(rt)).item() == pytest.approx(base, rel=1e-3, abs=1e-6)
    base = rkd_distance(torch.tensor(s), torch.tensor(t)).item()
    scaled = rkd_distance(torch.tensor(scale * s), torch.tensor(scale * t)).item()
    assert scaled == pytest.approx(base, rel=1e-3, abs=1e-6)
    # the triplet angle does not see scale either
    triplet = rkd_angle_triplet(torch.tensor(s), torch.tensor(t)).item()
    assert rkd_angle_triplet(torch.tensor(scale * s), torch.tensor(t)).item() == pytest.approx(
        triplet, rel=1e-3, abs=1e-6
    )


def test_rkd_is_zero_when_student_relations_equal_teachers():
    x = torch.randn(10, 6)
    for loss in (rkd_distance, rkd_angle_pairwise, rkd_angle_triplet):
        assert loss(x, x).item() == pytest.approx(0.0, abs=1e-6)


def _saved_bytes_for_backward(rows: int) -> int:
    student = torch.randn(rows, 8, requires_grad=True)
    saved = [0]

    def count(tensor):
        saved[0] += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(count, lambda tensor: tensor):
        loss = rkd_angle_triplet(student, torch.randn(rows, 16))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()
    return saved[0]


def test_triplet_angle_keeps_only_b_squared_values_for_backward():
    # The B^3 cosines are never kept: what backward holds grows as B^2 (x4 when B doubles, not
    # x8), about 45 MiB at B = 1024 where the cosines alone would be 4 GiB (benchmarks/bench_losses.py
    # runs B = 1024 forward and backward and prints its peak).
    small, large = _saved_bytes_for_backward(96), _saved_bytes_for_backward(192)
    assert large / small == pytest.approx(4.0, rel=0.05)
    assert large < 192**2 * 4 * 16


def test_adapter_returns_distance_and_angle_with_the_documents_weights():
    loss = RKDLoss(RKDParams(student_tap="embed", teacher_tap="embed", angle="pairwise"), SHAPES)
    inputs = make_inputs()
    terms = loss(inputs)
    s, t = (
        inputs.student_features["embed"].detach().numpy(),
        inputs.teacher_features["embed"].detach().numpy(),
    )
    assert terms["distance"].item() == pytest.approx(numpy_distance(s, t), rel=1e-4)
    assert terms["angle"].item() == pytest.approx(numpy_pairwise_angle(s, t), rel=1e-4)
    assert loss.params.sub_weights(0) == {"distance": 25.0, "angle": 50.0}
