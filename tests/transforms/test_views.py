"""Drawing views: a function of (seed, sample id, view) alone, recorded exactly as fixed-width columns."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.transforms import (
    VIEW_COLUMNS,
    VIEW_DTYPE,
    PartnerPool,
    TransformError,
    ViewDrawer,
    ViewParams,
    apply_batch,
    draw,
    draw_table,
    stack_views,
)

DIGITS = (1, 8, 8)
SPEC = [{"kind": "shift", "pixels": 1}, {"kind": "rotate", "degrees": 15}, {"kind": "mixup", "alpha": 0.2}]
IMAGE_SPEC = [
    {"kind": "resized_crop", "size": 16, "scale": [0.25, 1.0]},
    {"kind": "flip"},
    {"kind": "shift", "pixels": 2},
    {"kind": "rotate", "degrees": [-30, 10]},
    {"kind": "cutmix", "alpha": 1.0},
]
POOL = PartnerPool(np.arange(100))


def test_a_view_depends_on_seed_sample_and_view_not_on_call_order():
    table = draw_table(SPEC, 7, np.arange(20), 4, POOL, input_shape=DIGITS)
    pairs = [(sample_id, view) for sample_id in range(20) for view in range(4)]
    order = np.random.default_rng(0).permutation(len(pairs))
    drawer = ViewDrawer(SPEC, 7, DIGITS, PartnerPool(np.arange(100)[::-1]))  # pool order plays no part
    for index in order:
        sample_id, view = pairs[index]
        assert drawer.draw(sample_id, view) == ViewParams.from_array(table[sample_id, view])
        assert draw(SPEC, 7, sample_id, view, POOL, input_shape=DIGITS) == drawer.draw(sample_id, view)
    assert len({tuple(row) for row in table.reshape(-1).tolist()}) == len(pairs)  # all views differ


def test_seed_view_and_sample_id_each_change_the_draw():
    base = draw(SPEC, 0, 5, 0, POOL, input_shape=DIGITS)
    others = [
        draw(SPEC, 1, 5, 0, POOL, input_shape=DIGITS),
        draw(SPEC, 0, 6, 0, POOL, input_shape=DIGITS),
        draw(SPEC, 0, 5, 1, POOL, input_shape=DIGITS),
        draw(SPEC, 0, "5", 0, POOL, input_shape=DIGITS),  # a string id is not the int id
    ]
    assert all(other != base for other in others)
    assert draw(SPEC, 0, np.int64(5), 0, POOL, input_shape=DIGITS) == base
    assert draw(SPEC, 0, -5, 0, POOL, input_shape=DIGITS) != base  # negative int64 ids are ids too


def test_each_augmentation_draws_from_its_own_stream():
    # Adding or removing one augmentation leaves the values of the others as they were.
    with_rotate = draw(SPEC, 3, 11, 2, POOL, input_shape=DIGITS)
    without = draw([SPEC[0], SPEC[2]], 3, 11, 2, POOL, input_shape=DIGITS)
    assert (with_rotate.shift_dy, with_rotate.shift_dx) == (without.shift_dy, without.shift_dx)
    assert (with_rotate.partner_id, with_rotate.lam) == (without.partner_id, without.lam)
    assert without.angle == 0.0 and with_rotate.angle != 0.0


def test_draws_are_pinned_so_a_changed_stream_is_noticed():
    # A change here re-draws every cached view: bump TRANSFORMS_FORMAT in the same change.
    drawn = draw(SPEC, 0, 5, 3, POOL, input_shape=DIGITS)
    assert (drawn.shift_dy, drawn.shift_dx, drawn.partner_id) == (0, 1, 28)
    assert (drawn.angle, drawn.lam) == (-8.614048957824707, 1.5265892216120847e-05)


def test_a_fresh_process_draws_and_applies_the_same_bytes():
    code = "from tests.transforms.test_views import image_digest\nprint(image_digest())\n"
    environment = {**os.environ, "PYTHONHASHSEED": "12345"}
    root = Path(__file__).resolve().parents[2]
    child = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=environment, cwd=root
    )
    assert child.stdout.strip() == image_digest()


def image_digest() -> str:
    """sha256 of a table of drawn views and the images they produce (uint8 and float32)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(6, 3, 20, 24), dtype=np.uint8)
    table = draw_table(IMAGE_SPEC, 11, np.arange(6), 3, PartnerPool(np.arange(6)), input_shape=(3, 20, 24))
    digest = hashlib.sha256(table.tobytes())
    for view in range(3):
        partners = images[table[:, view]["partner_id"]]
        digest.update(apply_batch(IMAGE_SPEC, table[:, view], images, partners).tobytes())
        floats = images.astype(np.float32) / 7
        digest.update(
            apply_batch(IMAGE_SPEC, table[:, view], floats, partners.astype(np.float32) / 7).tobytes()
        )
    return digest.hexdigest()


def test_the_column_layout_is_fixed_width_little_endian_and_documented():
    assert [name for name, _ in VIEW_COLUMNS] == list(VIEW_DTYPE.names)
    assert VIEW_DTYPE.names == (
        "crop_top", "crop_left", "crop_height", "crop_width", "flip", "shift_dy", "shift_dx",
        "angle", "partner_id", "lam", "cut_top", "cut_left", "cut_height", "cut_width",
    )  # fmt: skip
    assert VIEW_DTYPE.itemsize == 57 and VIEW_DTYPE["partner_id"] == np.dtype("<i8")
    identity = ViewParams.from_array(ViewParams().to_array())
    assert identity == ViewParams() and identity.lam == 1.0


def test_every_drawn_value_round_trips_its_column_exactly():
    table = draw_table(IMAGE_SPEC, 2, np.arange(30), 5, PartnerPool(np.arange(30)), input_shape=(3, 20, 24))
    views = [ViewParams.from_array(record) for record in table.reshape(-1)]
    assert np.array_equal(stack_views(views), table.reshape(-1))
    for view in views:
        assert ViewParams.from_array(view.to_array()) == view
        assert float(np.float32(view.angle)) == view.angle and float(np.float32(view.lam)) == view.lam
    record = {name: table[0, 0][name] for name in VIEW_DTYPE.names}  # a mapping of columns works too
    assert ViewParams.from_array(record) == views[0]
    assert json.loads(json.dumps(views[0].values())) == list(views[0].values())


def test_a_partner_is_never_the_sample_itself_and_comes_from_the_pool():
    pool = PartnerPool([3, 9, 4])
    partners = {draw(SPEC, 0, 4, view, pool, input_shape=DIGITS).partner_id for view in range(60)}
    assert partners == {3, 9}
    outsider = {draw(SPEC, 0, 100, view, pool, input_shape=DIGITS).partner_id for view in range(60)}
    assert outsider == {3, 4, 9}


@pytest.mark.parametrize(
    ("pool", "message"),
    [
        (None, r"transform 2 \(mixup\): needs a partner pool"),
        (np.array([], dtype=np.int64), "needs a partner pool"),
        ([4], "holds no sample other than the sample itself"),
        ([1, 1, 2], "repeats 1 sample id"),
        (["a", "b"], "a partner pool is a 1-D array of integer sample ids"),
    ],
)
def test_mixing_without_a_usable_partner_pool_is_refused(pool, message):
    with pytest.raises(TransformError, match=message):
        draw(SPEC, 0, 4, 0, pool, input_shape=DIGITS)


def test_mixup_lambda_follows_beta_alpha_alpha():
    table = draw_table([{"kind": "mixup", "alpha": 0.4}], 0, np.arange(400), 5, POOL, input_shape=(64,))
    lam = table["lam"].astype(np.float64).reshape(-1)
    assert lam.min() >= 0.0 and lam.max() <= 1.0
    # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)) = 0.1389 for a = 0.4; 2000 draws.
    assert abs(lam.mean() - 0.5) < 0.05 and abs(lam.var() / 0.1389 - 1) < 0.15


def test_a_cutmix_box_covers_one_minus_lambda_of_the_image():
    table = draw_table(
        [{"kind": "cutmix", "alpha": 1.0}], 0, np.arange(200), 2, POOL, input_shape=(3, 12, 10)
    )
    area = (table["cut_height"] * table["cut_width"]).astype(np.float64) / 120
    np.testing.assert_allclose(1.0 - area, table["lam"], rtol=1e-6, atol=1e-7)
    assert ((table["cut_top"] >= 0) & (table["cut_top"] + table["cut_height"] <= 12)).all()
    assert ((table["cut_left"] >= 0) & (table["cut_left"] + table["cut_width"] <= 10)).all()


@settings(max_examples=40, deadline=None)
@given(
    height=st.integers(1, 40),
    width=st.integers(1, 40),
    size=st.integers(1, 40),
    padding=st.integers(0, 6),
    sample_id=st.integers(-(2**63), 2**63 - 1),
)
def test_crop_boxes_lie_inside_the_padded_image(height, width, size, padding, sample_id):
    spec = [{"kind": "crop", "size": size, "padding": padding}]
    if size > min(height, width) + 2 * padding:
        with pytest.raises(TransformError, match="is larger than the image"):
            draw(spec, 0, sample_id, 0, input_shape=(height, width))
        return
    view = draw(spec, 0, sample_id, 0, input_shape=(height, width))
    assert (view.crop_height, view.crop_width) == (size, size)
    assert (
        0 <= view.crop_top <= height + 2 * padding - size
        and 0 <= view.crop_left <= width + 2 * padding - size
    )


@settings(max_examples=40, deadline=None)
@given(height=st.integers(1, 60), width=st.integers(1, 60), view=st.integers(0, 2**32 - 1))
def test_resized_crop_boxes_lie_inside_the_image(height, width, view):
    spec = [{"kind": "resized_crop", "size": [5, 7], "scale": [0.1, 0.9], "ratio": [0.5, 2.0]}]
    box = draw(spec, 9, 1, view, input_shape=(2, height, width))
    assert box.crop_height >= 1 and box.crop_width >= 1
    assert 0 <= box.crop_top <= height - box.crop_height and 0 <= box.crop_left <= width - box.crop_width


def test_shift_offsets_and_angles_stay_in_their_ranges_and_flip_follows_p():
    spec = [
        {"kind": "flip", "p": 0.25},
        {"kind": "shift", "pixels": 2},
        {"kind": "rotate", "degrees": [-30, 10]},
    ]
    table = draw_table(spec, 0, np.arange(300), 4, input_shape=(3, 5, 5))
    assert set(np.unique(table["shift_dy"])) == set(range(-2, 3)) == set(np.unique(table["shift_dx"]))
    assert table["angle"].min() >= -30 and table["angle"].max() <= 10
    assert abs(table["flip"].mean() - 0.25) < 0.04
    never = draw_table([{"kind": "flip", "p": 0.0}], 0, np.arange(50), 2, input_shape=(5, 5))
    assert not never["flip"].any()
