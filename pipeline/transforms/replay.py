"""Applying recorded views: a pure function, bit-identical for the same inputs on any run.

One implementation, batch-native: every step works on a batch (B, *sample_shape) with one VIEW_DTYPE
record per row, and `apply` is a batch of one, so a sample gives the same bytes alone or in any batch.
Every step is numpy indexing, padding, elementwise IEEE arithmetic or the fixed-point resampler of
sampling.py; no reduction, no threads, no library whose output depends on the CPU (Pillow is not
used: decoded images come in as arrays, see `image_to_chw`).

Dtypes: geometric steps (crop, resized_crop, flip, shift, rotate) and cutmix keep the input dtype
(uint8 stays uint8; interpolated values round half to even). scale, normalize and mixup turn integer
input into float32 and keep a float dtype. cast converts as its params say.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.transforms.params import MIX_KINDS, TransformError, parse_spec
from pipeline.transforms.sampling import (
    fill_value,
    gather,
    padded,
    resample,
    resize_grid,
    rotation_grid,
    round_to_dtype,
)
from pipeline.transforms.shapes import channel_count, check_dtype, describe, step_shapes
from pipeline.transforms.views import ViewParams, as_view_table


def _float_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype arithmetic steps compute in: a float dtype is kept, integers become float32."""
    return dtype if dtype.kind == "f" else np.dtype(np.float32)


def _per_sample(column: np.ndarray, ndim: int) -> np.ndarray:
    """(B,) -> (B, 1, ..., 1) with `ndim` axes: one value per row, broadcast over the sample."""
    return column.reshape(-1, *(1,) * (ndim - 1))


def _check_rows(ok: np.ndarray, what: str, message: str, views: np.ndarray) -> None:
    """TransformError naming the first row whose recorded box fails `ok` (the row only in a batch)."""
    if ok.all():
        return
    row = int(np.argmin(ok))
    record = views[row]
    where = f"row {row}: " if len(views) > 1 else ""
    box = {name: int(record[name]) for name in ("crop_top", "crop_left", "crop_height", "crop_width")}
    raise TransformError(
        f"{what}: {where}the recorded box (top {box['crop_top']}, left {box['crop_left']}, "
        f"{box['crop_height']}x{box['crop_width']}) {message}; the view was drawn for another spec or "
        "input shape"
    )


def _take_window(array: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """array (B, ..., H, W) at per-row row indices (B, h) and column indices (B, w) -> (B, ..., h, w)."""
    return gather(array, rows[:, :, None] * array.shape[-1] + cols[:, None, :])


def _cast(step: Any, views: np.ndarray, array: np.ndarray, what: str) -> np.ndarray:
    target = np.dtype(step.dtype)
    if target == array.dtype:
        return array
    if target.kind == "f":
        return array.astype(target)
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise TransformError(f"{what}: the input holds NaN or inf, which {target.name} cannot store")
        return round_to_dtype(array, target)
    source, wanted = np.iinfo(array.dtype), np.iinfo(target)
    # Saturate within bounds both dtypes can hold, then convert.
    low, high = max(source.min, wanted.min), min(source.max, wanted.max)
    return np.clip(array, array.dtype.type(low), array.dtype.type(high)).astype(target)


def _scale(step: Any, views: np.ndarray, array: np.ndarray, what: str) -> np.ndarray:
    dtype = _float_dtype(array.dtype)
    return array.astype(dtype) * dtype.type(step.factor)


def _normalize(step: Any, views: np.ndarray, array: np.ndarray, what: str) -> np.ndarray:
    dtype, sample_shape = _float_dtype(array.dtype), array.shape[1:]
    channels = channel_count(sample_shape)
    mean = np.broadcast_to(np.asarray(step.mean, dtype=dtype), (channels,))
    std = np.broadcast_to(np.asarray(step.std, dtype=dtype), (channels,))
    # The channel axis is the sample's axis 0 (batch axis 1); an (H, W) image has one channel.
    axes = (1, channels) + (1,) * (len(sample_shape) - 1) if len(sample_shape) != 2 else ()
    return (array.astype(dtype) - mean.reshape(axes)) / std.reshape(axes)


def _layout(step: Any, views: np.ndarray, array: np.ndarray, what: str) -> np.ndarray:
    source, target = (-1, 1) if step.to == "channels_first" else (1, -1)
    return np.ascontiguousarray(np.moveaxis(array, source, target))


def _crop(step: Any, views: np.ndarray, array: np.ndarray, what: str) -> np.ndarray:
    if step.padding:
        array = padded(array, step.padding, fill_value(step.fill, array.dtype, what))
    (height, width), (box_height, box_width) = array.shape[-2:], step.size
    tops, lefts = views["crop_top"].astype(np.int64), views["crop_left"].astype(np.int64)
    ok = (views["crop_height"] == box_height) & (views["crop_width"] == box_width)
    ok &= (tops >= 0) & (tops <= height - box_height) & (lefts >= 0) & (lefts <= width - box_width)
    _check_rows(
        ok, what, f"does not fit a {list(step.size)} crop of this {height}x{width} (padded) image", views
    )
    rows = tops[:, None] + np.arange(box_height)
    cols = lefts[:, None] + np.arange(box_width)
    return _take_window(array, rows, cols)


def _resized_crop(step: Any, views: np.ndarray, array: np.ndarray, what: str) -> np.ndarray:
    height, width = array.shape[-2:]
    tops, lefts = views["crop_top"].astype(np.int64), views["crop_left"].astype(np.int64)
    box_heights, box_widths = views["crop_height"].astype(np.int64), views["crop_width"].astype(np.int64)
    ok = (box_heights >= 1) & (box_widths >= 1) & (tops >= 0) & (tops <= height - box_heights)
    ok &= (lefts >= 0) & (lefts <= width - box_widths)
    _check_rows(ok, what, f"is not inside this {height}x{width} image", views)
    rows, cols = resize_grid(tops, lefts, box_heights, box_widths, *step.size)
    return resample(array, rows, cols, step.interpolation, array.dtype.type(0), what)


def _flip(step: Any, views: np.ndarray, array: np.ndarray, what: str) -> np.ndarray:
    mirrored = _per_sample(views["flip"] != 0, array.ndim)
    return np.where(mirrored, array[..., ::-1], array) if mirrored.any() else array


def _source_index(offsets: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the source index (B, size) of each target index when content moves by `offsets`
    (B,), clipped into range, and whether it lies inside (B, size)."""
    source = np.arange(size)[None, :] - offsets.astype(np.int64)[:, None]
    return np.clip(source, 0, size - 1), (source >= 0) & (source < size)


def _shift(step: Any, views: np.ndarray, array: np.ndarray, what: str) -> np.ndarray:
    height, width = array.shape[-2:]
    rows, rows_inside = _source_index(views["shift_dy"], height)
    cols, cols_inside = _source_index(views["shift_dx"], width)
    inside = rows_inside[:, :, None] & cols_inside[:, None, :]
    moved = _take_window(array, rows, cols)
    inside = inside.reshape(len(inside), *(1,) * (array.ndim - 3), height, width)
    return np.where(inside, moved, fill_value(step.fill, array.dtype, what))


def _rotate(step: Any, views: np.ndarray, array: np.ndarray, what: str) -> np.ndarray:
    turned = views["angle"] != 0  # an angle of 0 leaves its row untouched
    if not turned.any():
        return array
    fill = fill_value(step.fill, array.dtype, what)
    rows, cols = rotation_grid(array.shape[-2], array.shape[-1], views["angle"][turned])
    rotated = array.copy()
    rotated[turned] = resample(array[turned], rows, cols, step.interpolation, fill, what)
    return rotated


def _mixup(step: Any, views: np.ndarray, array: np.ndarray, partner: np.ndarray) -> np.ndarray:
    dtype = _float_dtype(np.result_type(array.dtype, partner.dtype))
    lam = _per_sample(views["lam"].astype(dtype), array.ndim)
    return lam * array.astype(dtype) + (dtype.type(1) - lam) * partner.astype(dtype)


def _cutmix(step: Any, views: np.ndarray, array: np.ndarray, partner: np.ndarray) -> np.ndarray:
    height, width = array.shape[-2:]
    rows, cols = np.arange(height)[None, :], np.arange(width)[None, :]
    tops, lefts = views["cut_top"][:, None], views["cut_left"][:, None]
    in_rows = (rows >= tops) & (rows < tops + views["cut_height"][:, None])
    in_cols = (cols >= lefts) & (cols < lefts + views["cut_width"][:, None])
    pasted = (in_rows[:, :, None] & in_cols[:, None, :]).reshape(
        len(views), *(1,) * (array.ndim - 3), height, width
    )
    return np.where(pasted, partner, array)


STEP_FUNCTIONS = {
    "cast": _cast,
    "scale": _scale,
    "normalize": _normalize,
    "layout": _layout,
    "crop": _crop,
    "resized_crop": _resized_crop,
    "flip": _flip,
    "shift": _shift,
    "rotate": _rotate,
}
MIX_FUNCTIONS = {"mixup": _mixup, "cutmix": _cutmix}
CHUNK_VALUES = 1 << 18
"""apply_batch works on at most this many input values at once (or one row, if larger)."""


def _apply_rows(
    spec: tuple, views: np.ndarray, arrays: np.ndarray, partners: np.ndarray | None
) -> np.ndarray:
    """The batch form every call goes through: arrays (B, ...) with views (B,) of VIEW_DTYPE."""
    check_dtype(arrays.dtype)
    step_shapes(spec, arrays.shape[1:])
    mixes = any(step.kind in MIX_KINDS for step in spec)
    if partners is not None and not mixes:
        raise TransformError("a partner array was given but the spec has no mixup or cutmix step")
    if partners is not None and partners.shape != arrays.shape:
        raise TransformError(
            f"the partner's shape {partners.shape[1:]} differs from the sample's {arrays.shape[1:]}; "
            "mixing needs inputs of one shape (put a crop or resize before the mix)"
        )
    if partners is not None:
        check_dtype(partners.dtype)
    result = arrays
    for index, step in enumerate(spec):
        what = describe(step, index)
        if step.kind in MIX_FUNCTIONS:
            if partners is None:
                raise TransformError(
                    f"{what}: this view mixes in sample {int(views['partner_id'][0])}; pass its input as "
                    "partner_array"
                )
            result, partners = MIX_FUNCTIONS[step.kind](step, views, result, partners), None
            continue
        result = STEP_FUNCTIONS[step.kind](step, views, result, what)
        if partners is not None:
            partners = STEP_FUNCTIONS[step.kind](step, views, partners, what)
    return result.copy() if np.may_share_memory(result, arrays) else result


def apply(
    spec: Sequence[Any],
    params: ViewParams | np.void | np.ndarray,
    array: Any,
    partner_array: Any | None = None,
) -> np.ndarray:
    """`array` (one sample: (D,), (H, W) or (C, H, W), any integer or float dtype) through `spec`
    with the drawn values `params` (a ViewParams or one VIEW_DTYPE record) -> a new array (the
    input is never modified).

    partner_array: the raw input of sample `params.partner_id`, needed when the spec mixes; it goes
    through the same steps with the same drawn values up to the mix (same crop box, flip, shift,
    angle), so both images are aligned. Steps after the mix apply to the mixed image. A spec without
    augmentations needs `ViewParams()` only.
    """
    views = as_view_table(params)
    if len(views) != 1:
        raise TransformError(f"apply takes one view; got {len(views)} (use apply_batch)")
    partners = None if partner_array is None else np.asarray(partner_array)[None]
    return _apply_rows(parse_spec(spec), views, np.asarray(array)[None], partners)[0]


def apply_batch(
    spec: Sequence[Any],
    params: Sequence[ViewParams] | np.ndarray,
    arrays: Any,
    partner_arrays: Any | None = None,
) -> np.ndarray:
    """Each sample of `arrays` (B, ...) with its own view (B ViewParams, or a (B,) array of
    VIEW_DTYPE) -> (B, ...); partner_arrays (B, ...) when the spec mixes. Row b equals
    apply(spec, params[b], arrays[b], partner_arrays[b]) bit for bit (the same code, vectorised)."""
    views, arrays = as_view_table(params), np.asarray(arrays)
    if len(arrays) == 0:
        raise TransformError("apply_batch needs at least one sample")
    if len(views) != len(arrays):
        raise TransformError(f"{len(arrays)} samples but {len(views)} views; give one view per sample")
    if partner_arrays is not None and len(partner_arrays) != len(arrays):
        raise TransformError(f"{len(arrays)} samples but {len(partner_arrays)} partner arrays")
    partners = None if partner_arrays is None else np.asarray(partner_arrays)
    spec = parse_spec(spec)
    # Rows are independent: chunks keep the float64 intermediates of large images in cache and memory.
    rows_per_chunk = max(1, CHUNK_VALUES // max(1, arrays[0].size))
    chunks = [
        _apply_rows(
            spec, views[start:stop], arrays[start:stop], None if partners is None else partners[start:stop]
        )
        for start, stop in (
            (start, start + rows_per_chunk) for start in range(0, len(arrays), rows_per_chunk)
        )
    ]
    return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)


def image_to_chw(image: Any) -> np.ndarray:
    """A decoded image (a Pillow image, or an (H, W) / (H, W, C) array, e.g. uint8) -> (C, H, W)
    array of the same dtype; a grayscale (H, W) image gets C = 1."""
    array = np.asarray(image)
    if array.ndim == 2:
        return array[None].copy()
    if array.ndim == 3:
        return np.ascontiguousarray(array.transpose(2, 0, 1))
    raise TransformError(f"a decoded image is (H, W) or (H, W, C); got shape {array.shape}")
