"""Bad input: a transform that cannot apply to the input is one clear line, from draw and from apply."""

from __future__ import annotations

import re

import numpy as np
import pytest

from pipeline.errors import DistilleryError
from pipeline.transforms import (
    TransformError,
    ViewParams,
    apply,
    apply_batch,
    draw,
    image_to_chw,
    step_shapes,
)

FEATURES = (64,)  # digits flattened
CROP_TOO_LARGE = re.escape(
    "transform 0 (crop): size [9, 9] is larger than the image [8, 8] plus padding 0; "
    "use a size of at most [8, 8] or more padding"
)
ROTATE_FEATURES = re.escape(
    "transform 1 (rotate): needs an image (H, W) or (C, H, W) but got a 1-D feature vector of shape (64,); "
    "drop rotate for this data, or give the input its image shape (e.g. input_shape [1, 8, 8])"
)
WRONG_CHANNELS = re.escape(
    "transform 0 (normalize): 2 mean/std values for an input of shape (3, 8, 8) with 3 channel(s) "
    "(axis 0); give 3 values or one for all"
)


@pytest.mark.parametrize(
    ("spec", "shape", "message"),
    [
        ([{"kind": "crop", "size": 9}], (1, 8, 8), CROP_TOO_LARGE),
        ([{"kind": "scale", "factor": 2}, {"kind": "rotate", "degrees": 10}], FEATURES, ROTATE_FEATURES),
        ([{"kind": "flip"}], FEATURES, r"transform 0 \(flip\): needs an image .* 1-D feature vector"),
        ([{"kind": "shift", "pixels": 1}], FEATURES, r"transform 0 \(shift\): needs an image"),
        ([{"kind": "cutmix"}], FEATURES, r"transform 0 \(cutmix\): needs an image"),
        ([{"kind": "resized_crop", "size": 4}], (2, 3, 4, 5), r"needs an image .* got a 4-D input"),
        ([{"kind": "normalize", "mean": [0, 0], "std": [1, 1]}], (3, 8, 8), WRONG_CHANNELS),
        ([{"kind": "normalize", "mean": [0, 0], "std": [1, 1]}], (8, 8), r"with 1 channel"),
        ([{"kind": "layout", "to": "channels_first"}], (8, 8), r"transform 0 \(layout\): needs a 3-D image"),
        ([{"kind": "flip"}], (0, 8), r"transforms need a non-empty input"),
    ],
)  # fmt: skip
def test_a_transform_that_cannot_apply_is_refused_by_draw_and_apply_alike(spec, shape, message):
    with pytest.raises(TransformError, match=message) as drawn:
        draw(spec, 0, 1, 0, [5], input_shape=shape)
    with pytest.raises(TransformError, match=message) as applied:
        apply(spec, ViewParams(), np.zeros(shape, np.float32))
    assert str(drawn.value) == str(applied.value) and "\n" not in str(drawn.value)
    assert isinstance(drawn.value, DistilleryError)


def test_the_shape_each_step_sees_is_tracked_through_the_spec():
    spec = [{"kind": "layout", "to": "channels_first"}, {"kind": "crop", "size": 4, "padding": 1}]
    spec.append({"kind": "rotate", "degrees": 5})
    assert step_shapes(spec, (6, 5, 3)) == [(6, 5, 3), (3, 6, 5), (3, 4, 4), (3, 4, 4)]
    assert step_shapes([{"kind": "resized_crop", "size": [2, 3]}], (9, 9))[-1] == (2, 3)
    with pytest.raises(
        TransformError, match=r"transform 1 \(crop\): size \[7, 7\] is larger than the image \[6, 5\]"
    ):
        step_shapes([spec[0], {"kind": "crop", "size": 7}], (6, 5, 3))


def test_mixing_without_the_partner_input_or_with_a_misfit_one_is_refused():
    spec = [{"kind": "mixup"}]
    image = np.zeros((1, 8, 8), np.float32)
    with pytest.raises(
        TransformError, match=r"transform 0 \(mixup\): this view mixes in sample 7; pass its input"
    ):
        apply(spec, ViewParams(partner_id=7, lam=0.5), image)
    with pytest.raises(
        TransformError, match=r"the partner's shape \(1, 8, 9\) differs from the sample's \(1, 8, 8\)"
    ):
        apply(spec, ViewParams(lam=0.5), image, np.zeros((1, 8, 9), np.float32))
    with pytest.raises(TransformError, match="a partner array was given but the spec has no mixup or cutmix"):
        apply([{"kind": "flip"}], ViewParams(), image, image)


def test_a_recorded_box_that_does_not_fit_the_input_is_refused():
    image = np.zeros((1, 8, 8), np.float32)
    with pytest.raises(TransformError, match="drawn for another spec or input shape"):
        apply([{"kind": "crop", "size": 4}], ViewParams(crop_top=6, crop_height=4, crop_width=4), image)
    with pytest.raises(TransformError, match="drawn for another spec or input shape"):
        apply([{"kind": "crop", "size": 4}], ViewParams(crop_height=3, crop_width=4), image)
    with pytest.raises(TransformError, match=r"the recorded box \(top 0, left 0, 0x0\) is not inside"):
        apply([{"kind": "resized_crop", "size": 4}], ViewParams(), image)


def test_values_a_dtype_cannot_hold_are_refused():
    pixels = np.zeros((1, 4, 4), np.uint8)
    with pytest.raises(
        TransformError,
        match=r"transform 0 \(shift\): fill 300.0 cannot be stored in uint8; use an integer in 0..255",
    ):
        apply([{"kind": "shift", "pixels": 1, "fill": 300}], ViewParams(), pixels)
    with pytest.raises(TransformError, match="fill 0.5 cannot be stored in uint8"):
        apply([{"kind": "rotate", "degrees": 5, "fill": 0.5}], ViewParams(angle=3.0), pixels)
    with pytest.raises(
        TransformError, match=r"transform 0 \(cast\): the input holds NaN or inf, which int16 cannot store"
    ):
        apply([{"kind": "cast", "dtype": "int16"}], ViewParams(), np.array([1.0, np.nan]))
    with pytest.raises(TransformError, match="transforms apply to integer or float arrays; got dtype bool"):
        apply([{"kind": "flip"}], ViewParams(), np.zeros((4, 4), bool))
    with pytest.raises(
        TransformError,
        match=r"transform 0 \(rotate\): bilinear interpolation of int64 data is not exact in float64",
    ):
        apply([{"kind": "rotate", "degrees": 5}], ViewParams(angle=3.0), np.zeros((4, 4), np.int64))
    nearest = apply(
        [{"kind": "rotate", "degrees": 5, "interpolation": "nearest"}],
        ViewParams(angle=3.0),
        np.zeros((4, 4), np.int64),
    )
    assert nearest.dtype == np.int64


def test_a_batch_needs_one_view_and_one_partner_per_sample():
    images = np.zeros((3, 4, 4), np.float32)
    with pytest.raises(TransformError, match="3 samples but 2 views; give one view per sample"):
        apply_batch([{"kind": "flip"}], [ViewParams()] * 2, images)
    with pytest.raises(TransformError, match="3 samples but 1 partner arrays"):
        apply_batch([{"kind": "mixup"}], [ViewParams()] * 3, images, images[:1])


def test_a_decoded_image_must_be_two_or_three_dimensional():
    with pytest.raises(
        TransformError, match=r"a decoded image is \(H, W\) or \(H, W, C\); got shape \(1, 2, 3, 4\)"
    ):
        image_to_chw(np.zeros((1, 2, 3, 4), np.uint8))


def test_seeds_and_view_indices_out_of_range_are_refused():
    with pytest.raises(TransformError, match="views seed -1 must be in 0..2"):
        draw([{"kind": "flip"}], -1, 0, 0, input_shape=(4, 4))
    with pytest.raises(TransformError, match="view index 4294967296 must be in 0..2"):
        draw([{"kind": "flip"}], 0, 0, 2**32, input_shape=(4, 4))
