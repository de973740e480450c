"""What shape each step of a spec sees, and the one clear error when a step cannot apply.

`draw` needs the image size at each random step (a crop after a crop, a cutmix box after a resize)
and `apply` must refuse the same inputs with the same words, so both ask `step_shapes`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.transforms.params import TransformError, parse_spec

IMAGE_ONLY = frozenset({"crop", "resized_crop", "flip", "shift", "rotate", "cutmix"})


def describe(step: Any, index: int) -> str:
    """`transform 2 (rotate)`: how messages name a step (0-based position in the spec)."""
    return f"transform {index} ({step.kind})"


def channel_count(shape: tuple[int, ...]) -> int:
    """Channels seen by `normalize`: axis 0 of a (C, H, W) image or of a (D,) feature vector; an
    (H, W) image has one."""
    return 1 if len(shape) == 2 else shape[0]


def _check_image(step: Any, index: int, shape: tuple[int, ...]) -> None:
    if len(shape) not in (2, 3):
        kind = "a 1-D feature vector" if len(shape) == 1 else f"a {len(shape)}-D input"
        raise TransformError(
            f"{describe(step, index)}: needs an image (H, W) or (C, H, W) but got {kind} of shape "
            f"{shape}; drop {step.kind} for this data, or give the input its image shape "
            "(e.g. input_shape [1, 8, 8])"
        )


def _next_shape(step: Any, index: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    if step.kind in IMAGE_ONLY:
        _check_image(step, index, shape)
    if step.kind == "layout":
        if len(shape) != 3:
            raise TransformError(
                f"{describe(step, index)}: needs a 3-D image (H, W, C) or (C, H, W); got shape {shape}"
            )
        return (
            (shape[2], shape[0], shape[1]) if step.to == "channels_first" else (shape[1], shape[2], shape[0])
        )
    if step.kind == "normalize":
        channels, given = channel_count(shape), max(len(step.mean), len(step.std))
        if given not in (1, channels):
            raise TransformError(
                f"{describe(step, index)}: {given} mean/std values for an input of shape {shape} with "
                f"{channels} channel(s) (axis 0); give {channels} values or one for all"
            )
    if step.kind == "crop":
        height, width = shape[-2] + 2 * step.padding, shape[-1] + 2 * step.padding
        if step.size[0] > height or step.size[1] > width:
            raise TransformError(
                f"{describe(step, index)}: size {list(step.size)} is larger than the image {list(shape[-2:])}"
                f" plus padding {step.padding}; use a size of at most [{height}, {width}] or more padding"
            )
        return (*shape[:-2], *step.size)
    if step.kind == "resized_crop":
        return (*shape[:-2], *step.size)
    return shape


def step_shapes(spec: Sequence[Any], input_shape: Sequence[int]) -> list[tuple[int, ...]]:
    """[shape seen by step 0, by step 1, ..., the output shape] for one sample of `input_shape`
    (no batch axis); TransformError names the first step that cannot apply."""
    spec = parse_spec(spec)
    shape = tuple(int(size) for size in input_shape)
    if any(size < 1 for size in shape) or not shape:
        raise TransformError(f"transforms need a non-empty input; got shape {shape}")
    shapes = [shape]
    for index, step in enumerate(spec):
        shape = _next_shape(step, index, shape)
        shapes.append(shape)
    return shapes


def check_dtype(dtype: np.dtype) -> None:
    """TransformError unless `dtype` is a real number dtype (bool, complex, strings are refused)."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "iuf":
        raise TransformError(
            f"transforms apply to integer or float arrays; got dtype {dtype.name}; cast the data first"
        )
