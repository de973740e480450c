"""One transform implementation for cache, train, evaluate and export parity (docs/transforms.md).

A spec (list of steps, `params.py`) holds read-time steps (cast, scale, normalize, layout: no
randomness) and augmentations (crop, resized_crop, flip, shift, rotate, mixup, cutmix). `draw` turns
(spec, seed, sample id, view) into a `ViewParams` record a cache stores as columns (`VIEW_DTYPE`);
`apply` replays a record on an array, bit for bit.
"""

from pipeline.transforms.params import (
    AUGMENTATION_KINDS,
    READ_TIME_KINDS,
    TRANSFORMS_FORMAT,
    TransformError,
    TransformSpec,
    TransformStep,
    ViewsParams,
    check_view_count,
    parse_spec,
    spec_fingerprint,
    without_augmentations,
)
from pipeline.transforms.replay import apply, apply_batch, image_to_chw
from pipeline.transforms.shapes import step_shapes
from pipeline.transforms.views import (
    VIEW_COLUMNS,
    VIEW_DTYPE,
    PartnerPool,
    ViewDrawer,
    ViewParams,
    draw,
    draw_table,
    stack_views,
)

__all__ = [
    "AUGMENTATION_KINDS",
    "READ_TIME_KINDS",
    "TRANSFORMS_FORMAT",
    "VIEW_COLUMNS",
    "VIEW_DTYPE",
    "PartnerPool",
    "TransformError",
    "TransformSpec",
    "TransformStep",
    "ViewDrawer",
    "ViewParams",
    "ViewsParams",
    "apply",
    "apply_batch",
    "check_view_count",
    "draw",
    "draw_table",
    "image_to_chw",
    "parse_spec",
    "spec_fingerprint",
    "stack_views",
    "step_shapes",
    "without_augmentations",
]
