"""Applying a view: each transform's geometry, dtypes, and bit-equal replay."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import pipeline.transforms.replay as replay_module
from pipeline.transforms import (
    PartnerPool,
    ViewParams,
    apply,
    apply_batch,
    draw,
    draw_table,
    image_to_chw,
)

GEOMETRIC = [
    (
        [{"kind": "crop", "size": [5, 6], "padding": 2}],
        ViewParams(crop_top=1, crop_left=3, crop_height=5, crop_width=6),
    ),
    ([{"kind": "resized_crop", "size": 9}], ViewParams(crop_top=1, crop_left=2, crop_height=5, crop_width=4)),
    ([{"kind": "flip"}], ViewParams(flip=1)),
    ([{"kind": "shift", "pixels": 3, "fill": 7}], ViewParams(shift_dy=-2, shift_dx=3)),
    ([{"kind": "rotate", "degrees": 40}], ViewParams(angle=33.5)),
    ([{"kind": "rotate", "degrees": 40, "interpolation": "nearest"}], ViewParams(angle=-21.25)),
]
DTYPES = [np.uint8, np.int16, np.int32, np.float16, np.float32, np.float64]


def _image(dtype, shape=(3, 8, 10), seed=0):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return (rng.random(shape) * 100).astype(dtype)
    return rng.integers(0, 120, size=shape).astype(dtype)


def test_a_crop_returns_the_pixels_of_its_box():
    image = _image(np.uint8)
    view = ViewParams(crop_top=2, crop_left=3, crop_height=4, crop_width=5)
    out = apply([{"kind": "crop", "size": [4, 5]}], view, image)
    np.testing.assert_array_equal(out, image[:, 2:6, 3:8])
    # With padding the box is in padded coordinates; the padding is the fill value.
    padded = apply([{"kind": "crop", "size": [4, 5], "padding": 2, "fill": 9}], view, image)
    np.testing.assert_array_equal(
        padded[:, :, :], np.pad(image, [(0, 0), (2, 2), (2, 2)], constant_values=9)[:, 2:6, 3:8]
    )


@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
def test_a_resized_crop_of_its_own_size_returns_the_box_and_of_the_whole_image_the_image(interpolation):
    image = _image(np.float32)
    view = ViewParams(crop_top=1, crop_left=2, crop_height=5, crop_width=6)
    spec = [{"kind": "resized_crop", "size": [5, 6], "interpolation": interpolation}]
    np.testing.assert_array_equal(apply(spec, view, image), image[:, 1:6, 2:8])
    whole = ViewParams(crop_height=8, crop_width=10)
    spec = [{"kind": "resized_crop", "size": [8, 10], "interpolation": interpolation}]
    np.testing.assert_array_equal(apply(spec, whole, image), image)


def test_a_resized_crop_upsamples_by_repeating_or_blending_neighbours():
    image = np.array([[0.0, 4.0], [8.0, 12.0]], dtype=np.float32)
    view = ViewParams(crop_height=2, crop_width=2)
    nearest = apply([{"kind": "resized_crop", "size": 4, "interpolation": "nearest"}], view, image)
    np.testing.assert_array_equal(nearest, np.repeat(np.repeat(image, 2, axis=0), 2, axis=1))
    blended = apply([{"kind": "resized_crop", "size": 4}], view, image)
    # Half-pixel centres: output column positions -0.25, 0.25, 0.75, 1.25 clamped to [0, 1].
    np.testing.assert_allclose(blended[0], [0.0, 1.0, 3.0, 4.0], rtol=1e-6)
    np.testing.assert_allclose(blended[:, 0], [0.0, 2.0, 6.0, 8.0], rtol=1e-6)


@settings(max_examples=30, deadline=None)
@given(image=hnp.arrays(st.sampled_from(DTYPES), hnp.array_shapes(min_dims=2, max_dims=3, max_side=7)))
def test_flip_twice_is_the_identity_and_once_mirrors_the_last_axis(image):
    spec = [{"kind": "flip"}]
    once = apply(spec, ViewParams(flip=1), image)
    np.testing.assert_array_equal(once, image[..., ::-1])
    assert apply(spec, ViewParams(flip=1), once).tobytes() == image.tobytes()
    assert apply(spec, ViewParams(flip=0), image).tobytes() == image.tobytes()


@pytest.mark.parametrize(("dy", "dx"), [(1, 2), (-2, 0), (0, -3), (3, -1)])
def test_shift_moves_a_marked_pixel_by_dy_dx_and_fills_the_uncovered_border(dy, dx):
    image = np.zeros((1, 6, 7), dtype=np.uint8)
    image[0, 2, 3] = 200
    out = apply([{"kind": "shift", "pixels": 3, "fill": 5}], ViewParams(shift_dy=dy, shift_dx=dx), image)
    assert out[0, 2 + dy, 3 + dx] == 200 and out.dtype == np.uint8
    expected_fill = np.ones((6, 7), bool)
    expected_fill[max(dy, 0) : 6 + min(dy, 0), max(dx, 0) : 7 + min(dx, 0)] = False
    assert (out[0][expected_fill] == 5).all()
    assert (out[0][~expected_fill] != 5).all()


def test_a_shift_as_large_as_the_image_leaves_only_fill():
    out = apply(
        [{"kind": "shift", "pixels": 9}], ViewParams(shift_dy=9, shift_dx=-9), _image(np.float32, (4, 4))
    )
    assert (out == 0).all()


@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
def test_rotating_a_square_by_multiples_of_90_degrees_is_np_rot90(interpolation, dtype):
    image = _image(dtype, (3, 9, 9))
    for turns, angle in [(1, 90.0), (2, 180.0), (3, 270.0), (-1, -90.0), (0, 0.0)]:
        spec = [{"kind": "rotate", "degrees": [angle, angle], "interpolation": interpolation}]
        out = apply(spec, ViewParams(angle=angle), image)
        np.testing.assert_array_equal(out, np.rot90(image, turns, axes=(-2, -1)))
        assert out.dtype == image.dtype


def test_a_positive_angle_turns_counter_clockwise_and_outside_pixels_take_the_fill():
    image = np.zeros((5, 5), dtype=np.float32)
    image[2, 4] = 1.0  # right of the centre
    out = apply([{"kind": "rotate", "degrees": 90, "fill": 3}], ViewParams(angle=90.0), image)
    assert out[0, 2] == 1.0  # now above the centre
    rotated = apply(
        [{"kind": "rotate", "degrees": 45, "fill": 3}], ViewParams(angle=45.0), np.zeros((7, 7), np.float32)
    )
    assert rotated[0, 0] == 3.0 and rotated[3, 3] == 0.0  # a corner comes from outside, the centre stays


@pytest.mark.parametrize(("spec", "view"), GEOMETRIC)
@pytest.mark.parametrize("dtype", DTYPES)
def test_geometric_transforms_keep_the_dtype(spec, view, dtype):
    image = _image(dtype)
    out = apply(spec, view, image)
    assert out.dtype == image.dtype and out.ndim == 3
    assert apply(spec, view, image[0]).dtype == image.dtype  # (H, W) too


def test_bilinear_uint8_rounds_to_the_nearest_integer_and_stays_in_range():
    image = np.array([[0, 255], [255, 0]], dtype=np.uint8)
    out = apply([{"kind": "resized_crop", "size": 3}], ViewParams(crop_height=2, crop_width=2), image)
    assert out.dtype == np.uint8 and out[1, 1] == 128  # 127.5 rounds half to even
    assert out[0, 0] == 0 and out[0, 2] == 255


def test_mixup_blends_with_lambda_and_its_endpoints_are_the_two_inputs():
    image, partner = _image(np.float32, seed=1), _image(np.float32, seed=2)
    spec = [{"kind": "mixup"}]
    np.testing.assert_array_equal(apply(spec, ViewParams(lam=1.0), image, partner), image)
    np.testing.assert_array_equal(apply(spec, ViewParams(lam=0.0), image, partner), partner)
    np.testing.assert_allclose(
        apply(spec, ViewParams(lam=0.25), image, partner), 0.25 * image + 0.75 * partner, rtol=1e-6
    )
    mixed = apply(spec, ViewParams(lam=0.5), _image(np.uint8, seed=1), _image(np.uint8, seed=2))
    assert mixed.dtype == np.float32  # integer input is mixed in float32
    assert apply(spec, ViewParams(lam=0.5), image.astype(np.float64), partner).dtype == np.float64


def test_cutmix_pastes_the_partner_box_covering_one_minus_lambda_and_keeps_uint8():
    spec = [{"kind": "cutmix", "alpha": 1.0}]
    image, partner = np.zeros((3, 12, 10), np.uint8), np.full((3, 12, 10), 255, np.uint8)
    table = draw_table(spec, 0, np.arange(30), 2, PartnerPool(np.arange(30)), input_shape=image.shape)
    for record in table.reshape(-1):
        view = ViewParams.from_array(record)
        out = apply(spec, view, image, partner)
        assert out.dtype == np.uint8
        np.testing.assert_allclose((out == 255).mean(), 1 - view.lam, rtol=1e-6, atol=1e-7)


def test_the_partner_goes_through_the_same_steps_before_the_mix():
    spec = [
        {"kind": "crop", "size": 4},
        {"kind": "flip"},
        {"kind": "rotate", "degrees": 20},
        {"kind": "mixup"},
    ]
    image = _image(np.float64, (2, 8, 10))
    view = draw(spec, 0, 1, 0, [2], input_shape=image.shape)
    out = apply(spec, view, image, image + 1.0)
    alone, partner = apply(spec[:3], view, image), apply(spec[:3], view, image + 1.0)
    assert out.shape == (2, 4, 4) and not np.array_equal(partner, image[:, :4, :4] + 1.0)
    np.testing.assert_array_equal(out, view.lam * alone + (1.0 - view.lam) * partner)


def test_read_time_steps_cast_scale_normalize_and_layout():
    pixels = np.array([[[0, 128, 255]]], dtype=np.uint8).repeat(2, axis=0)  # (2, 1, 3)
    scaled = apply([{"kind": "scale", "factor": 1 / 255}], ViewParams(), pixels)
    assert scaled.dtype == np.float32 and scaled[0, 0, 2] == np.float32(255) * np.float32(1 / 255)
    spec = [{"kind": "normalize", "mean": [0, 100], "std": [1, 2]}]
    np.testing.assert_array_equal(
        apply(spec, ViewParams(), pixels)[1], (pixels[1].astype(np.float32) - 100) / 2
    )
    features = np.array([1.0, 2.0, 3.0], dtype=np.float64)
    per_feature = apply([{"kind": "normalize", "mean": [1, 2, 3], "std": [1, 1, 2]}], ViewParams(), features)
    np.testing.assert_array_equal(per_feature, [0.0, 0.0, 0.0])
    cast = apply([{"kind": "cast", "dtype": "uint8"}], ViewParams(), np.array([-3.0, 0.5, 1.5, 254.6, 300.0]))
    np.testing.assert_array_equal(
        cast, np.array([0, 0, 2, 255, 255], dtype=np.uint8)
    )  # half to even, saturate
    wide = apply([{"kind": "cast", "dtype": "int8"}], ViewParams(), np.array([-300, 5, 300], dtype=np.int64))
    np.testing.assert_array_equal(wide, np.array([-128, 5, 127], dtype=np.int8))
    hwc = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    chw = apply([{"kind": "layout", "to": "channels_first"}], ViewParams(), hwc)
    np.testing.assert_array_equal(chw, hwc.transpose(2, 0, 1))
    np.testing.assert_array_equal(apply([{"kind": "layout", "to": "channels_last"}], ViewParams(), chw), hwc)


def test_a_decoded_pillow_image_becomes_channels_first_uint8():
    image_module = pytest.importorskip("PIL.Image")
    rgb = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    chw = image_to_chw(image_module.fromarray(rgb))
    assert chw.shape == (3, 5, 7) and chw.dtype == np.uint8
    np.testing.assert_array_equal(chw, rgb.transpose(2, 0, 1))
    assert image_to_chw(image_module.fromarray(rgb[:, :, 0])).shape == (1, 5, 7)


def test_the_digits_default_takes_every_augmentation_and_replays_bit_for_bit():
    rng = np.random.default_rng(0)
    digits = rng.integers(0, 17, size=(40, 1, 8, 8)).astype(np.float32)  # (1, 8, 8) in [0, 16]
    spec = [
        {"kind": "shift", "pixels": 1},
        {"kind": "rotate", "degrees": 15},
        {"kind": "mixup", "alpha": 0.2},
    ]
    pool = PartnerPool(np.arange(40))
    table = draw_table(spec, 0, np.arange(40), 4, pool, input_shape=(1, 8, 8))
    for view in range(4):
        views = table[:, view]
        out = apply_batch(spec, views, digits, digits[views["partner_id"]])
        assert out.shape == digits.shape and out.dtype == np.float32
        assert out.min() >= 0.0 and out.max() <= 16.0  # blends of [0, 16] and the fill 0
        for row in range(40):
            replayed = ViewParams.from_array(views[row].copy())
            alone = apply(spec, replayed, digits[row], digits[views["partner_id"][row]])
            assert alone.tobytes() == out[row].tobytes()
    cropped = [{"kind": "crop", "size": 8, "padding": 1}, {"kind": "flip"}, {"kind": "cutmix"}]
    crop_views = draw_table(cropped, 0, np.arange(40), 2, pool, input_shape=(1, 8, 8))[:, 1]
    out = apply_batch(cropped, crop_views, digits, digits[crop_views["partner_id"]])
    assert out.shape == digits.shape and out.dtype == np.float32 and out.max() <= 16.0
    flat = digits.reshape(40, 64)  # digits as feature vectors: mixup applies, geometry does not
    mixed = apply([spec[2]], ViewParams.from_array(table[0, 0]), flat[0], flat[1])
    assert mixed.shape == (64,)


@pytest.mark.parametrize(
    "spec",
    [
        [{"kind": "crop", "size": [6, 7], "padding": 2, "fill": 3}, {"kind": "flip"}, {"kind": "cutmix"}],
        [{"kind": "resized_crop", "size": 5, "interpolation": "nearest"}, {"kind": "shift", "pixels": 2}],
        [{"kind": "resized_crop", "size": [9, 6]}, {"kind": "rotate", "degrees": 40}, {"kind": "mixup"}],
        [
            {"kind": "scale", "factor": 0.5},
            {"kind": "rotate", "degrees": [-90, 90], "interpolation": "nearest"},
        ],
    ],
)
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_a_batch_gives_each_row_the_bytes_it_gets_alone(spec, dtype, monkeypatch):
    monkeypatch.setattr(replay_module, "CHUNK_VALUES", 5 * 3 * 8 * 10)  # chunks of 5 rows, then 2
    images, partners = _image(dtype, (12, 3, 8, 10)), _image(dtype, (12, 3, 8, 10), seed=5)
    table = draw_table(spec, 4, np.arange(12), 1, PartnerPool(np.arange(12)), input_shape=(3, 8, 10))[:, 0]
    table["angle"][::3] = 0.0  # rows left untouched beside rotated ones
    mixes = spec[-1]["kind"] in ("mixup", "cutmix")
    batch = apply_batch(spec, table, images, partners if mixes else None)
    for row in range(12):
        alone = apply(spec, table[row], images[row], partners[row] if mixes else None)
        assert alone.tobytes() == batch[row].tobytes() and alone.dtype == batch.dtype


def test_apply_never_modifies_its_inputs_and_returns_a_new_array():
    image, partner = _image(np.uint8), _image(np.uint8, seed=3)
    before = image.copy(), partner.copy()
    for spec, view in GEOMETRIC + [([{"kind": "cutmix"}], ViewParams(cut_height=2, cut_width=2, lam=0.9))]:
        out = apply(spec, view, image, partner if spec[0]["kind"] == "cutmix" else None)
        assert not np.shares_memory(out, image)
    assert apply([], ViewParams(), image) is not image
    np.testing.assert_array_equal(image, before[0])
    np.testing.assert_array_equal(partner, before[1])
