"""The fixed-point resampler: integer source positions, exact where the geometry is exact."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.transforms.sampling import ONE, fill_value, resample, resize_grid, rotation_grid, round_to_dtype


def test_a_quarter_turn_of_a_square_lands_on_integer_positions():
    rows, cols = (grid[0] for grid in rotation_grid(5, 5, np.array([90.0])))
    assert ((rows % ONE) == 0).all() and ((cols % ONE) == 0).all()
    output_rows, output_cols = np.indices((5, 5))
    np.testing.assert_array_equal(rows // ONE, output_cols)  # out[y, x] = in[x, n - 1 - y]
    np.testing.assert_array_equal(cols // ONE, 4 - output_rows)


def test_a_box_resized_to_its_own_size_reads_its_own_pixels():
    rows, cols = resize_grid(np.array([2, 0]), np.array([3, 0]), np.array([4, 8]), np.array([5, 10]), 4, 5)
    np.testing.assert_array_equal(rows[0, :, 0], np.arange(2, 6) * ONE)
    np.testing.assert_array_equal(cols[0, 0, :], np.arange(3, 8) * ONE)
    np.testing.assert_array_equal(rows[1, :, 0], [ONE // 2, 5 * ONE // 2, 9 * ONE // 2, 13 * ONE // 2])


def test_halving_reads_between_pixel_pairs():
    rows, _ = resize_grid(np.array([0]), np.array([0]), np.array([4]), np.array([4]), 2, 2)
    np.testing.assert_array_equal(rows[0, :, 0], [ONE // 2, 5 * ONE // 2])  # centres 0.5 and 2.5


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_positions_outside_the_image_read_the_fill(interpolation):
    images = np.ones((1, 2, 3, 3), np.float32)
    rows = np.array([[[-3 * ONE, ONE, 5 * ONE]]])
    cols = np.array([[[ONE, ONE, ONE]]])
    out = resample(images, rows, cols, interpolation, np.float32(7), "test")
    np.testing.assert_array_equal(out[0, :, 0], [[7, 1, 7], [7, 1, 7]])


def test_rounding_to_an_integer_dtype_is_half_to_even_and_saturating():
    values = np.array([-1.0, 0.5, 1.5, 2.5, 254.5, 1e9])
    np.testing.assert_array_equal(round_to_dtype(values, np.uint8), [0, 0, 2, 2, 254, 255])
    assert round_to_dtype(np.array([1e30, -1e30]), np.int64).tolist() == [2**63 - 1024, -(2**63)]
    assert fill_value(3.0, np.uint8, "x") == 3 and fill_value(0.25, np.float16, "x") == np.float16(0.25)
