"""Applying a spec with a drawn view: a pure function, bit-identical for the same inputs on any run.

Every step is numpy slicing, padding, elementwise IEEE arithmetic or the fixed-point resampler of
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
    padded,
    resample,
    resize_grid,
    rotation_grid,
    round_to_dtype,
)
from pipeline.transforms.shapes import channel_count, check_dtype, describe, step_shapes
from pipeline.transforms.views import ViewParams


def _float_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype arithmetic steps compute in: a float dtype is kept, integers become float32."""
    return dtype if dtype.kind == "f" else np.dtype(np.float32)


def _cast(step: Any, view: ViewParams, array: np.ndarray, what: str) -> np.ndarray:
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


def _scale(step: Any, view: ViewParams, array: np.ndarray, what: str) -> np.ndarray:
    dtype = _float_dtype(array.dtype)
    return array.astype(dtype) * dtype.type(step.factor)


def _normalize(step: Any, view: ViewParams, array: np.ndarray, what: str) -> np.ndarray:
    dtype = _float_dtype(array.dtype)
    channels = channel_count(array.shape)
    mean = np.broadcast_to(np.asarray(step.mean, dtype=dtype), (channels,))
    std = np.broadcast_to(np.asarray(step.std, dtype=dtype), (channels,))
    axes = (channels,) + (1,) * (array.ndim - 1) if array.ndim != 2 else ()
    return (array.astype(dtype) - mean.reshape(axes)) / std.reshape(axes)


def _layout(step: Any, view: ViewParams, array: np.ndarray, what: str) -> np.ndarray:
    source, target = (2, 0) if step.to == "channels_first" else (0, 2)
    return np.ascontiguousarray(np.moveaxis(array, source, target))


def _crop(step: Any, view: ViewParams, array: np.ndarray, what: str) -> np.ndarray:
    if step.padding:
        array = padded(array, step.padding, fill_value(step.fill, array.dtype, what))
    height, width = array.shape[-2:]
    top, left, box_height, box_width = view.crop_top, view.crop_left, view.crop_height, view.crop_width
    if (box_height, box_width) != tuple(step.size) or not (
        0 <= top <= height - box_height and 0 <= left <= width - box_width
    ):
        raise TransformError(
            f"{what}: the recorded box (top {top}, left {left}, {box_height}x{box_width}) does not fit "
            f"a {list(step.size)} crop of this {height}x{width} (padded) image; the view was drawn for "
            "another spec or input shape"
        )
    return array[..., top : top + box_height, left : left + box_width].copy()


def _resized_crop(step: Any, view: ViewParams, array: np.ndarray, what: str) -> np.ndarray:
    height, width = array.shape[-2:]
    top, left, box_height, box_width = view.crop_top, view.crop_left, view.crop_height, view.crop_width
    if not (box_height >= 1 and box_width >= 1 and 0 <= top <= height - box_height) or not (
        0 <= left <= width - box_width
    ):
        raise TransformError(
            f"{what}: the recorded box (top {top}, left {left}, {box_height}x{box_width}) is not inside "
            f"this {height}x{width} image; the view was drawn for another spec or input shape"
        )
    rows, cols = resize_grid(top, left, box_height, box_width, *step.size)
    return resample(array, rows, cols, step.interpolation, array.dtype.type(0), what)


def _flip(step: Any, view: ViewParams, array: np.ndarray, what: str) -> np.ndarray:
    return array[..., ::-1].copy() if view.flip else array


def _overlap(offset: int, size: int) -> tuple[slice, slice]:
    """(target, source) slices of one axis when content moves by `offset` pixels (may be empty)."""
    moved = min(abs(offset), size)
    if offset >= 0:
        return slice(moved, size), slice(0, size - moved)
    return slice(0, size - moved), slice(moved, size)


def _shift(step: Any, view: ViewParams, array: np.ndarray, what: str) -> np.ndarray:
    shifted = np.full_like(array, fill_value(step.fill, array.dtype, what))
    rows_to, rows_from = _overlap(view.shift_dy, array.shape[-2])
    cols_to, cols_from = _overlap(view.shift_dx, array.shape[-1])
    shifted[..., rows_to, cols_to] = array[..., rows_from, cols_from]
    return shifted


def _rotate(step: Any, view: ViewParams, array: np.ndarray, what: str) -> np.ndarray:
    if view.angle == 0.0:
        return array
    rows, cols = rotation_grid(array.shape[-2], array.shape[-1], view.angle)
    return resample(array, rows, cols, step.interpolation, fill_value(step.fill, array.dtype, what), what)


def _mixup(step: Any, view: ViewParams, array: np.ndarray, partner: np.ndarray) -> np.ndarray:
    dtype = _float_dtype(np.result_type(array.dtype, partner.dtype))
    lam = dtype.type(view.lam)
    return lam * array.astype(dtype) + (dtype.type(1) - lam) * partner.astype(dtype)


def _cutmix(step: Any, view: ViewParams, array: np.ndarray, partner: np.ndarray) -> np.ndarray:
    mixed = array.astype(np.result_type(array.dtype, partner.dtype))
    rows = slice(view.cut_top, view.cut_top + view.cut_height)
    cols = slice(view.cut_left, view.cut_left + view.cut_width)
    mixed[..., rows, cols] = partner[..., rows, cols]
    return mixed


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
    spec = parse_spec(spec)
    params = params if isinstance(params, ViewParams) else ViewParams.from_array(params)
    array = np.asarray(array)
    original = array
    check_dtype(array.dtype)
    step_shapes(spec, array.shape)
    mixes = any(step.kind in MIX_KINDS for step in spec)
    partner = None if partner_array is None else np.asarray(partner_array)
    if partner is not None and not mixes:
        raise TransformError("a partner array was given but the spec has no mixup or cutmix step")
    if partner is not None and partner.shape != array.shape:
        raise TransformError(
            f"the partner's shape {partner.shape} differs from the sample's {array.shape}; mixing "
            "needs inputs of one shape (put a crop or resize before the mix)"
        )
    if partner is not None:
        check_dtype(partner.dtype)
    for index, step in enumerate(spec):
        what = describe(step, index)
        if step.kind in MIX_FUNCTIONS:
            if partner is None:
                raise TransformError(
                    f"{what}: this view mixes in sample {params.partner_id}; pass its input as partner_array"
                )
            array, partner = MIX_FUNCTIONS[step.kind](step, params, array, partner), None
            continue
        array = STEP_FUNCTIONS[step.kind](step, params, array, what)
        if partner is not None:
            partner = STEP_FUNCTIONS[step.kind](step, params, partner, what)
    return array.copy() if array is original else array


def apply_batch(
    spec: Sequence[Any],
    params: Sequence[ViewParams] | np.ndarray,
    arrays: Any,
    partner_arrays: Any | None = None,
) -> np.ndarray:
    """`apply` to each sample of `arrays` (B, ...) with its own view (B ViewParams, or a (B,) array
    of VIEW_DTYPE) -> (B, ...) stacked; partner_arrays (B, ...) when the spec mixes. Row b equals
    apply(spec, params[b], arrays[b], partner_arrays[b]) bit for bit."""
    spec = parse_spec(spec)
    arrays = np.asarray(arrays)
    if len(params) != len(arrays):
        raise TransformError(f"{len(arrays)} samples but {len(params)} views; give one view per sample")
    if partner_arrays is not None and len(partner_arrays) != len(arrays):
        raise TransformError(f"{len(arrays)} samples but {len(partner_arrays)} partner arrays")
    results = [
        apply(spec, view, array, None if partner_arrays is None else partner_arrays[row])
        for row, (view, array) in enumerate(zip(params, arrays))
    ]
    return np.stack(results) if results else np.empty((0,) + arrays.shape[1:], dtype=arrays.dtype)


def image_to_chw(image: Any) -> np.ndarray:
    """A decoded image (a Pillow image, or an (H, W) / (H, W, C) array, e.g. uint8) -> (C, H, W)
    array of the same dtype; a grayscale (H, W) image gets C = 1."""
    array = np.asarray(image)
    if array.ndim == 2:
        return array[None].copy()
    if array.ndim == 3:
        return np.ascontiguousarray(array.transpose(2, 0, 1))
    raise TransformError(f"a decoded image is (H, W) or (H, W, C); got shape {array.shape}")
