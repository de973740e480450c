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


def gather(images: np.ndarray, index: np.ndarray) -> np.ndarray:
    """images (B, ..., H, W), index (B, h, w) int64 flat positions (row * W + col) into each row's
    H x W planes -> (B, ..., h, w): one np.take over the whole batch, a copy of the values."""
    batch, (height, width) = images.shape[0], images.shape[-2:]
    planes = math.prod(images.shape[1:-2])
    base = (np.arange(batch * planes, dtype=np.int64) * (height * width)).reshape(batch, planes, 1)
    picked = np.take(np.ascontiguousarray(images).reshape(-1), base + index.reshape(batch, 1, -1))
    return picked.reshape(*images.shape[:-2], *index.shape[1:])


def _per_row(values: np.ndarray, lead: int) -> np.ndarray:
    """(B, h, w) -> (B, 1 x lead, h, w): one row's values, broadcast over its channels."""
    return values.reshape(values.shape[0], *(1,) * lead, *values.shape[1:])


def resample(
    images: np.ndarray, rows: np.ndarray, cols: np.ndarray, interpolation: str, fill: np.generic, what: str
) -> np.ndarray:
    """Sample each image of `images` (B, ..., H, W) at its fixed-point source positions -> (B, ..., h, w),
    same dtype.

    rows, cols: int64, broadcastable to (B, h, w): the source row/column of each output pixel in units
    of 1/65536 pixel, pixel centres at integers. Positions outside the image read `fill` (bilinear
    blends it in over the one-pixel border). `nearest` rounds half up and copies values (any dtype, no
    arithmetic); `bilinear` computes in float64 and rounds back (integer dtypes round half to even;
    inputs must be finite, as 0 * inf is NaN). `what` names the step in errors.
    """
    lead, (height, width) = images.ndim - 3, images.shape[-2:]
    rows, cols = np.broadcast_arrays(rows, cols)
    if interpolation == "nearest":
        row, col = (rows + HALF) >> FRACTION_BITS, (cols + HALF) >> FRACTION_BITS
        inside = (row >= 0) & (row < height) & (col >= 0) & (col < width)
        picked = gather(images, np.clip(row, 0, height - 1) * width + np.clip(col, 0, width - 1))
        return np.where(_per_row(inside, lead), picked, fill).astype(images.dtype, copy=False)
    if images.dtype.itemsize == 8 and images.dtype.kind in "iu":
        raise TransformError(
            f"{what}: bilinear interpolation of {images.dtype.name} data is not exact in float64; "
            "use interpolation: nearest, or cast to a narrower dtype first"
        )
    bordered = padded(images, 1, fill)
    # +1: index into the padded image, whose one-pixel border is `fill`; far outside, clipping
    # sends both neighbours to the border.
    row, col = (rows >> FRACTION_BITS) + 1, (cols >> FRACTION_BITS) + 1
    row0, row1 = np.clip(row, 0, height + 1) * (width + 2), np.clip(row + 1, 0, height + 1) * (width + 2)
    col0, col1 = np.clip(col, 0, width + 1), np.clip(col + 1, 0, width + 1)

    def read(index: np.ndarray) -> np.ndarray:
        return gather(bordered, index).astype(np.float64)

    # Fractions k/65536 and 1 - k/65536 are exact in float64.
    below = _per_row((rows & (ONE - 1)) / ONE, lead)
    right = _per_row((cols & (ONE - 1)) / ONE, lead)
    above, left = 1.0 - below, 1.0 - right
    top_row = read(row0 + col0) * left + read(row0 + col1) * right
    bottom_row = read(row1 + col0) * left + read(row1 + col1) * right
    return round_to_dtype(top_row * above + bottom_row * below, images.dtype)


def rotation_grid(height: int, width: int, degrees: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-point source (rows, cols), each (B, H, W) int64, of counter-clockwise rotations by
    `degrees` (B,) about the centre ((H-1)/2, (W-1)/2). A multiple of 90 degrees gives integer
    positions (on a square image: np.rot90 exactly)."""
    radians = [math.radians(float(angle)) for angle in np.ravel(degrees)]
    cos_q = np.array([round(math.cos(angle) * ONE) for angle in radians], dtype=np.int64)[:, None, None]
    sin_q = np.array([round(math.sin(angle) * ONE) for angle in radians], dtype=np.int64)[:, None, None]
    centre_row, centre_col = (height - 1) * HALF, (width - 1) * HALF
    out_row = np.arange(height, dtype=np.int64)[None, :, None] * ONE - centre_row
    out_col = np.arange(width, dtype=np.int64)[None, None, :] * ONE - centre_col
    # Inverse rotation (rows point down): source = R(-angle) applied to the output offset.
    source_col = (out_col * cos_q - out_row * sin_q + HALF) >> FRACTION_BITS
    source_row = (out_col * sin_q + out_row * cos_q + HALF) >> FRACTION_BITS
    return source_row + centre_row, source_col + centre_col


def resize_grid(
    tops: np.ndarray,
    lefts: np.ndarray,
    box_heights: np.ndarray,
    box_widths: np.ndarray,
    height: int,
    width: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-point source rows (B, height, 1) and cols (B, 1, width), int64, that map each box (tops,
    lefts, box_heights, box_widths: (B,) each) onto a height x width output (pixel centres aligned,
    half-pixel convention), clamped to the box so upsampling repeats the box's edge instead of
    reading past it. An output the size of the box gives the box's own integer positions."""

    def axis(starts: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
        start, box = np.asarray(starts, np.int64)[:, None], np.asarray(boxes, np.int64)[:, None]
        index = np.arange(size, dtype=np.int64)[None, :]
        # start + (i + 1/2) * box / size - 1/2, rounded to 1/65536 with integer division.
        position = start * ONE + ((2 * index + 1) * box * ONE + size) // (2 * size) - HALF
        return np.clip(position, start * ONE, (start + box - 1) * ONE)

    return axis(tops, box_heights, height)[:, :, None], axis(lefts, box_widths, width)[:, None, :]
