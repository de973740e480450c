"""Feature and hidden losses on per-token (B, L, D) taps: padding contributes nothing, and the value
is the closed form computed on each row's real tokens alone. The row-relation families (rkd, gram,
crd, mmd) pool each row's real tokens first: their value is the value on those pooled rows."""

from __future__ import annotations

import pytest
import torch

from pipeline.losses._contract import LossInputs, TapShapes
from pipeline.losses._taps import TapShapeError
from pipeline.losses.feature import FeatureLoss, FeatureParams, feature_mse
from pipeline.losses.hidden import HiddenLoss, HiddenParams, closed_form_residual, hidden_state_distance

LENGTHS = [5, 2, 3]
D = 4


def _padded(seed: int, garbage: float = 0.0):
    """(B, L, D) per-token values, the rows' real tokens, and the (B, L) mask; padding = garbage."""
    generator = torch.Generator().manual_seed(seed)
    longest = max(LENGTHS)
    values = torch.full((len(LENGTHS), longest, D), garbage)
    rows = [torch.randn(n, D, generator=generator) for n in LENGTHS]
    for b, row in enumerate(rows):
        values[b, : len(row)] = row
    mask = torch.arange(longest)[None, :] < torch.tensor(LENGTHS)[:, None]
    return values, rows, mask


def test_masked_feature_mse_is_the_mean_over_real_tokens_only():
    student, student_rows, mask = _padded(0, garbage=7.0)
    teacher, teacher_rows, _ = _padded(1, garbage=-3.0)
    real_s, real_t = torch.cat(student_rows), torch.cat(teacher_rows)
    expected = (real_s - real_t).pow(2).sum() / (2 * D * len(real_s))
    torch.testing.assert_close(feature_mse(student, teacher, mask), expected)


def test_masked_feature_mse_without_padding_equals_the_unmasked_form():
    generator = torch.Generator().manual_seed(2)
    student, teacher = torch.randn(3, 4, D, generator=generator), torch.randn(3, 4, D, generator=generator)
    full = torch.ones(3, 4, dtype=torch.bool)
    torch.testing.assert_close(feature_mse(student, teacher, full), feature_mse(student, teacher))


def test_masked_hidden_distance_sums_real_tokens_per_row():
    student, student_rows, mask = _padded(3, garbage=5.0)
    teacher, teacher_rows, _ = _padded(4, garbage=1.0)
    expected = sum((s - t).pow(2).sum() for s, t in zip(student_rows, teacher_rows)) / len(LENGTHS)
    torch.testing.assert_close(hidden_state_distance(student, teacher, mask), expected)


def test_the_closed_form_residual_ignores_what_padding_holds():
    student, _, mask = _padded(5, garbage=9.0)
    teacher, _, _ = _padded(6, garbage=-9.0)
    clean_student, _, _ = _padded(5)
    clean_teacher, _, _ = _padded(6)
    torch.testing.assert_close(
        closed_form_residual(student, teacher, 1e-3, mask),
        closed_form_residual(clean_student, clean_teacher, 1e-3),
    )


def _inputs(student, teacher, mask):
    return LossInputs(
        student_logits=torch.zeros(len(LENGTHS), 3),
        teacher_logits=torch.zeros(len(LENGTHS), 3),
        labels=torch.zeros(len(LENGTHS), dtype=torch.int64),
        student_features={"tokens": student},
        teacher_features={"hidden": teacher},
        tap_mask=mask,
    )


SHAPES = TapShapes(3, {"tokens": (None, D)}, {"hidden": (None, D)})


def test_the_feature_and_hidden_terms_read_the_batch_token_mask():
    student, student_rows, mask = _padded(7, garbage=4.0)
    teacher, teacher_rows, _ = _padded(8, garbage=2.0)
    feature = FeatureLoss(FeatureParams(student_tap="tokens", teacher_tap="hidden", project="none"), SHAPES)
    hidden = HiddenLoss(
        HiddenParams(layers=[{"student": "tokens", "teacher": "hidden"}], project="none"), SHAPES
    )
    inputs = _inputs(student, teacher, mask)
    real_s, real_t = torch.cat(student_rows), torch.cat(teacher_rows)
    torch.testing.assert_close(
        feature(inputs)["feature"], (real_s - real_t).pow(2).sum() / (2 * D * len(real_s))
    )
    torch.testing.assert_close(hidden(inputs)["hidden"], (real_s - real_t).pow(2).sum() / len(LENGTHS))


def test_per_token_taps_of_other_lengths_are_refused_in_one_line():
    student, _, mask = _padded(9)
    teacher, _, _ = _padded(10)
    feature = FeatureLoss(FeatureParams(student_tap="tokens", teacher_tap="hidden", project="none"), SHAPES)
    with pytest.raises(TapShapeError, match="must have one length per row"):
        feature(_inputs(student[:, :3], teacher, mask))


def _row_means(rows: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([row.mean(dim=0) for row in rows])


@pytest.mark.parametrize(
    "family",
    [
        {"kind": "rkd"},
        {"kind": "gram"},
        {"kind": "crd", "project": "none", "tau": 0.5},
        {"kind": "mmd", "project": "none"},
    ],
    ids=lambda family: family["kind"],
)
def test_row_relation_terms_on_token_taps_are_their_value_on_each_rows_mean_of_real_tokens(family):
    from pipeline.losses.recipe import build_recipe

    student, student_rows, mask = _padded(11, garbage=6.0)
    teacher, teacher_rows, _ = _padded(12, garbage=-4.0)
    pooled_s, pooled_t = _row_means(student_rows), _row_means(teacher_rows)
    on_tokens = build_recipe({"term": {**family, "student_tap": "tokens", "teacher_tap": "hidden"}}, SHAPES)
    on_rows = build_recipe(
        {"term": {**family, "student_tap": "s", "teacher_tap": "t"}}, TapShapes(3, {"s": (D,)}, {"t": (D,)})
    )
    rows = LossInputs(
        student_logits=torch.zeros(len(LENGTHS), 3),
        teacher_logits=torch.zeros(len(LENGTHS), 3),
        labels=torch.zeros(len(LENGTHS), dtype=torch.int64),
        student_features={"s": pooled_s},
        teacher_features={"t": pooled_t},
    )
    (_, expected), (_, got) = on_rows(rows), on_tokens(_inputs(student, teacher, mask))
    assert got.keys() == expected.keys()
    for name in got:
        torch.testing.assert_close(got[name], expected[name])
