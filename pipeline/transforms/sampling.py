"""Bit-reproducible resampling: source coordinates in integer fixed point, interpolation in float64.

Why this is the same on every machine: coordinates are int64 multiples of 1/65536 pixel computed
with integer arithmetic only (no floor of a float that could land either side of an integer), and
the interpolation uses only elementwise IEEE-754 additions and multiplications, which are correctly
rounded on every CPU and vectorisation width. Nothing here sums or dots along an axis (reductions
change order with SIMD width and threads) and nothing calls a transcendental function on arrays
(numpy may dispatch sin/cos to different libraries per CPU). The rotation's cos/sin are computed
once per view in Python and rounded to 16 fraction bits, which a last-bit difference between C
libraries could change only if cos * 65536 sat within one ulp of a half-integer.
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.transforms.params import TransformError

FRACTION_BITS = 16
ONE = 1 << FRACTION_BITS
HALF = ONE >> 1


def fill_value(fill: float, dtype: np.dtype, what: str) -> np.generic:
    """`fill` as a scalar of `dtype`, or TransformError when an integer dtype cannot hold it exactly."""
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if fill != int(fill) or not info.min <= int(fill) <= info.max:
            raise TransformError(
                f"{what}: fill {fill} cannot be stored in {dtype.name}; use an integer in "
                f"{int(info.min)}..{int(info.max)}"
            )
        return dtype.type(int(fill))
    return dtype.type(fill)


def padded(image: np.ndarray, padding: int, fill: np.generic) -> np.ndarray:
    """`image` (..., H, W) with `padding` pixels of `fill` on every side of the last two axes."""
    height, width = image.shape[-2:]
    out = np.full((*image.shape[:-2], height + 2 * padding, width + 2 * padding), fill, dtype=image.dtype)
    out[..., padding : padding + height, padding : padding + width] = image
    return out


def round_to_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """float `values` as `dtype`: floats round to nearest (IEEE); integers round half to even and
    saturate at the dtype's range. NaN cannot become an integer (the caller checks)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return values.astype(dtype)
    info = np.iinfo(dtype)
    low, high = float(info.min), float(info.max)
    if int(high) > info.max:  # 2**63 - 1 and 2**64 - 1 are not floats: stay below them
        high = float(np.nextafter(high, 0.0))
    return np.clip(np.rint(values), low, high).astype(dtype)


def resample(
    image: np.ndarray, rows: np.ndarray, cols: np.ndarray, interpolation: str, fill: np.generic, what: str
) -> np.ndarray:
    """Sample `image` (..., H, W) at fixed-point source positions -> (..., h, w), same dtype.

    rows, cols: (h, w) int64, the source row/column of each output pixel in units of 1/65536 pixel,
    pixel centres at integers. Positions outside the image read `fill` (bilinear blends it in over
    the one-pixel border). `nearest` rounds half up and copies values (any dtype, no arithmetic);
    `bilinear` computes in float64 and rounds back (integer dtypes round half to even). `what`
    names the step in errors.
    """
    height, width = image.shape[-2:]
    if interpolation == "nearest":
        row = (rows + HALF) >> FRACTION_BITS
        col = (cols + HALF) >> FRACTION_BITS
        inside = (row >= 0) & (row < height) & (col >= 0) & (col < width)
        picked = image[..., np.clip(row, 0, height - 1), np.clip(col, 0, width - 1)]
        return np.where(inside, picked, fill).astype(image.dtype, copy=False)
    if image.dtype.itemsize == 8 and image.dtype.kind in "iu":
        raise TransformError(
            f"{what}: bilinear interpolation of {image.dtype.name} data is not exact in float64; "
            "use interpolation: nearest, or cast to a narrower dtype first"
        )
    flat = padded(image, 1, fill).reshape(*image.shape[:-2], -1)
    # +1: index into the padded image, whose one-pixel border is `fill`; far outside, clipping
    # sends both neighbours to the border.
    row, col = (rows >> FRACTION_BITS) + 1, (cols >> FRACTION_BITS) + 1
    row0, row1 = np.clip(row, 0, height + 1) * (width + 2), np.clip(row + 1, 0, height + 1) * (width + 2)
    col0, col1 = np.clip(col, 0, width + 1), np.clip(col + 1, 0, width + 1)

    def read(flat_index: np.ndarray) -> np.ndarray:
        return np.take(flat, flat_index, axis=-1).astype(np.float64)

    # Fractions k/65536 and 1 - k/65536 are exact in float64.
    below = (rows & (ONE - 1)) / ONE
    right = (cols & (ONE - 1)) / ONE
    above, left = 1.0 - below, 1.0 - right
    top_row = read(row0 + col0) * left + read(row0 + col1) * right
    bottom_row = read(row1 + col0) * left + read(row1 + col1) * right
    return round_to_dtype(top_row * above + bottom_row * below, image.dtype)


def rotation_grid(height: int, width: int, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-point source (rows, cols), each (H, W) int64, of a counter-clockwise rotation by
    `degrees` about the centre ((H-1)/2, (W-1)/2). A multiple of 90 degrees gives integer positions
    (on a square image: np.rot90 exactly)."""
    radians = math.radians(degrees)
    cos_q, sin_q = round(math.cos(radians) * ONE), round(math.sin(radians) * ONE)
    centre_row, centre_col = (height - 1) * HALF, (width - 1) * HALF
    out_row = np.arange(height, dtype=np.int64)[:, None] * ONE - centre_row
    out_col = np.arange(width, dtype=np.int64)[None, :] * ONE - centre_col
    # Inverse rotation (rows point down): source = R(-angle) applied to the output offset.
    source_col = (out_col * cos_q - out_row * sin_q + HALF) >> FRACTION_BITS
    source_row = (out_col * sin_q + out_row * cos_q + HALF) >> FRACTION_BITS
    return source_row + centre_row, source_col + centre_col


def resize_grid(
    top: int, left: int, box_height: int, box_width: int, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-point source (rows, cols), each (height, width) int64, that map the box (top, left,
    box_height, box_width) onto a height x width output (pixel centres aligned, half-pixel
    convention), clamped to the box so upsampling repeats the box's edge instead of reading past it.
    An output the size of the box gives the box's own integer positions."""

    def axis(start: int, box: int, size: int) -> np.ndarray:
        index = np.arange(size, dtype=np.int64)
        # start + (i + 1/2) * box / size - 1/2, rounded to 1/65536 with integer division.
        position = start * ONE + ((2 * index + 1) * box * ONE + size) // (2 * size) - HALF
        return np.clip(position, start * ONE, (start + box - 1) * ONE)

    rows = axis(top, box_height, height)[:, None]
    cols = axis(left, box_width, width)[None, :]
    return np.broadcast_to(rows, (height, width)), np.broadcast_to(cols, (height, width))
