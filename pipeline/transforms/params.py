"""Transform specs: what params.yaml declares, validated, and its fingerprint.

A spec is a list of steps applied in order (docs/transforms.md):

```yaml
transforms:
  - {kind: scale, factor: 0.0625}           # read-time: deterministic, same at cache/train/evaluate/export
  - {kind: shift, pixels: 1}                # augmentations: values drawn per (seed, sample id, view)
  - {kind: rotate, degrees: 15}
  - {kind: mixup, alpha: 0.2}
```

Read-time steps (`cast`, `scale`, `normalize`, `layout`) draw nothing. Augmentations (`crop`,
`resized_crop`, `flip`, `shift`, `rotate`, `mixup`, `cutmix`) each fill their own columns of one
`ViewParams` record, so a spec holds each augmentation at most once, and at most one crop and one mix.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from pipeline.config import ParamsError, StrictModel, format_validation_error
from pipeline.errors import DistilleryError

TRANSFORMS_FORMAT = "distillery-transforms/1"
"""Part of every fingerprint: bump it when `apply` or `draw` change meaning, so old caches are stale."""

DTypeName = Literal["uint8", "int8", "uint16", "int16", "int32", "int64", "float16", "float32", "float64"]
Interpolation = Literal["bilinear", "nearest"]


def _invalid(message: str) -> PydanticCustomError:
    """A validation error whose message reaches the user as written (no "Value error," prefix)."""
    return PydanticCustomError("transform_spec", message.replace("{", "(").replace("}", ")"))


class TransformError(DistilleryError, ValueError):
    """A transform cannot apply to the input it was given (shape, channels, dtype, a missing partner)."""


def _pair(value: Any) -> Any:
    """`8` -> (8, 8): sizes may be written as one number for a square."""
    return (value, value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


Size = Annotated[tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]], BeforeValidator(_pair)]
"""(height, width) in pixels; one number means a square."""


class Cast(StrictModel):
    """Read-time: convert to `dtype`. Float -> integer rounds half to even and saturates at the
    integer range; integer -> integer saturates; NaN/inf cannot become an integer (TransformError)."""

    kind: Literal["cast"]
    dtype: DTypeName


class Scale(StrictModel):
    """Read-time: multiply by `factor` (e.g. 1/255). Integer input becomes float32, float keeps its dtype."""

    kind: Literal["scale"]
    factor: float = Field(allow_inf_nan=False)


class Normalize(StrictModel):
    """Read-time: (x - mean[c]) / std[c] per channel c (one value = every channel). The channel axis is
    axis 0 of a (C, H, W) image or of a (D,) feature vector (per-feature); an (H, W) image has one.
    Integer input becomes float32, float keeps its dtype."""

    kind: Literal["normalize"]
    mean: list[Annotated[float, Field(allow_inf_nan=False)]] = Field(min_length=1)
    std: list[Annotated[float, Field(gt=0, allow_inf_nan=False)]] = Field(min_length=1)

    @model_validator(mode="after")
    def _same_length(self) -> Normalize:
        if len(self.mean) != len(self.std) and 1 not in (len(self.mean), len(self.std)):
            raise _invalid(
                f"mean has {len(self.mean)} values but std has {len(self.std)}; give one per channel"
            )
        return self


class Layout(StrictModel):
    """Read-time: `channels_first` turns (H, W, C) into (C, H, W) (decoded images); `channels_last`
    the reverse."""

    kind: Literal["layout"]
    to: Literal["channels_first", "channels_last"]


class Crop(StrictModel):
    """Augmentation: pad every side by `padding` pixels of `fill`, then cut a `size` (h, w) window at a
    random position (the CIFAR recipe: padding 4, size 32). Records the window in padded coordinates."""

    kind: Literal["crop"]
    size: Size
    padding: int = Field(0, ge=0)
    fill: float = Field(0.0, allow_inf_nan=False)


class ResizedCrop(StrictModel):
    """Augmentation: a random box covering `scale` of the area with aspect ratio (w/h) in `ratio`
    (log-uniform), resampled to `size` (h, w): the RandomResizedCrop of Szegedy et al. 2015. No
    antialiasing. Records the box in input coordinates."""

    kind: Literal["resized_crop"]
    size: Size
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    interpolation: Interpolation = "bilinear"

    @model_validator(mode="after")
    def _ranges(self) -> ResizedCrop:
        low, high = self.scale
        if not 0 < low <= high <= 1:
            raise _invalid(f"scale must satisfy 0 < low <= high <= 1; got [{low}, {high}]")
        low, high = self.ratio
        if not (0 < low <= high and math.isfinite(high)):
            raise _invalid(f"ratio must satisfy 0 < low <= high; got [{low}, {high}]")
        return self


class Flip(StrictModel):
    """Augmentation: mirror left-right (the last axis) with probability `p`."""

    kind: Literal["flip"]
    p: float = Field(0.5, ge=0, le=1)


class Shift(StrictModel):
    """Augmentation: translate by whole pixels dy, dx drawn uniformly from [-pixels, pixels]; the
    uncovered border takes `fill`."""

    kind: Literal["shift"]
    pixels: int = Field(ge=0)
    fill: float = Field(0.0, allow_inf_nan=False)


class Rotate(StrictModel):
    """Augmentation: rotate counter-clockwise about the image centre by an angle in degrees drawn
    uniformly from `degrees` ([low, high]; one number d means [-d, d]); outside pixels take `fill`."""

    kind: Literal["rotate"]
    degrees: tuple[float, float]
    interpolation: Interpolation = "bilinear"
    fill: float = Field(0.0, allow_inf_nan=False)

    @field_validator("degrees", mode="before")
    @classmethod
    def _symmetric(cls, value: Any) -> Any:
        return (
            (-abs(value), abs(value))
            if isinstance(value, (int, float)) and not isinstance(value, bool)
            else value
        )

    @model_validator(mode="after")
    def _ordered(self) -> Rotate:
        low, high = self.degrees
        if not (math.isfinite(low) and math.isfinite(high) and low <= high):
            raise _invalid(f"degrees must be [low, high] with low <= high; got [{low}, {high}]")
        return self


class Mixup(StrictModel):
    """Augmentation: x = lam * x + (1 - lam) * partner, lam ~ Beta(alpha, alpha), the partner drawn
    from the partner pool (Zhang et al. 2018, "mixup: Beyond Empirical Risk Minimization",
    arXiv:1710.09412)."""

    kind: Literal["mixup"]
    alpha: float = Field(0.2, gt=0, allow_inf_nan=False)


class Cutmix(StrictModel):
    """Augmentation: paste a box of the partner into x; the box covers 1 - lam of the image with
    lam ~ Beta(alpha, alpha) before clipping, and the recorded lam is the exact kept fraction (Yun et
    al. 2019, "CutMix: Regularization Strategy to Train Strong Classifiers", arXiv:1905.04899)."""

    kind: Literal["cutmix"]
    alpha: float = Field(1.0, gt=0, allow_inf_nan=False)


STEPS = (Cast, Scale, Normalize, Layout, Crop, ResizedCrop, Flip, Shift, Rotate, Mixup, Cutmix)
READ_TIME_KINDS = frozenset({"cast", "scale", "normalize", "layout"})
AUGMENTATION_KINDS = frozenset({"crop", "resized_crop", "flip", "shift", "rotate", "mixup", "cutmix"})
MIX_KINDS = frozenset({"mixup", "cutmix"})
_SLOTS = {"crop": "crop", "resized_crop": "crop", "mixup": "mix", "cutmix": "mix"}
"""Augmentations that share columns of ViewParams: a spec may hold one of each slot."""

TransformStep = Annotated[Union[STEPS], Field(discriminator="kind")]  # noqa: UP007 (a runtime tuple)
"""One step of a spec: a discriminated union on `kind`."""


def _one_per_slot(steps: list[Any]) -> tuple[Any, ...]:
    seen: dict[str, str] = {}
    for step in steps:
        if step.kind in READ_TIME_KINDS:
            continue
        slot = _SLOTS.get(step.kind, step.kind)
        if slot in seen:
            raise _invalid(
                f"{step.kind} after {seen[slot]}: a view records one {slot} only; keep one of them"
                if step.kind != seen[slot]
                else f"{step.kind} appears twice: a view records one {slot} only; keep one"
            )
        seen[slot] = step.kind
    return tuple(steps)


TransformSpec = Annotated[list[TransformStep], AfterValidator(_one_per_slot)]
"""A spec: steps applied in order (usable as a pydantic field; validates to a tuple)."""

_SPEC_ADAPTER = TypeAdapter(TransformSpec)


def parse_spec(spec: Iterable[Any], root: str = "transforms") -> tuple[Any, ...]:
    """A validated spec (tuple of step models) from step models or raw mappings; ParamsError names
    the bad key path under `root` (e.g. `transforms.1.degrees: expected a list`)."""
    steps = list(spec)
    if all(isinstance(step, STEPS) for step in steps):
        try:
            return _one_per_slot(steps)
        except PydanticCustomError as error:
            raise ParamsError(f"{root}: {error.message()}") from None
    raw = [step.model_dump() if isinstance(step, STEPS) else step for step in steps]
    try:
        return _SPEC_ADAPTER.validate_python(raw)
    except ValidationError as error:
        raise ParamsError(format_validation_error(error, raw, root)) from None


def without_augmentations(spec: Iterable[Any]) -> tuple[Any, ...]:
    """The read-time steps of `spec` only: what evaluate and export parity apply to an input."""
    return tuple(step for step in parse_spec(spec) if step.kind in READ_TIME_KINDS)


def canonical_json(value: Any) -> str:
    """`value` (params models, lists, mappings) as canonical JSON: defaults spelled out, keys sorted,
    no spaces; two specs that mean the same give the same text."""

    def plain(item: Any) -> Any:
        if isinstance(item, StrictModel):
            return item.model_dump(mode="json")
        if isinstance(item, dict):
            return {str(key): plain(inner) for key, inner in item.items()}
        if isinstance(item, (list, tuple)):
            return [plain(inner) for inner in item]
        return item

    return json.dumps(plain(value), sort_keys=True, separators=(",", ":"), allow_nan=False)


def spec_fingerprint(spec: Iterable[Any]) -> str:
    """sha256 hex of the canonical JSON of `spec` and TRANSFORMS_FORMAT: a cache keeps it, and a
    changed step (or a changed meaning of apply) makes the cache stale."""
    payload = {"format": TRANSFORMS_FORMAT, "transforms": list(parse_spec(spec))}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


class ViewsParams(StrictModel):
    """K views per sample (issue 16): `count` views, each drawn from (seed, sample id, view index)."""

    count: int = Field(ge=1)
    seed: int = Field(0, ge=0, lt=2**64)
    transforms: TransformSpec

    def fingerprint(self) -> str:
        """sha256 hex of count, seed and the spec (TRANSFORMS_FORMAT included)."""
        payload = {"format": TRANSFORMS_FORMAT, "count": self.count, "seed": self.seed}
        payload["transforms"] = list(self.transforms)
        return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def check_view_count(count: int, available: int | None = None, what: str = "views.count") -> int:
    """`count` as an int, or TransformError: below 1 (no views: leave `views` out and the originals
    are used), or above `available` (the views the cache holds)."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise TransformError(
            f"{what} is {count!r}: ask for at least 1 view, or leave views out to use the original inputs"
        )
    if available is not None and count > available:
        raise TransformError(
            f"{what} is {count} but the cache holds {available} views per sample; ask for at most "
            f"{available} or rebuild the cache with views.count: {count}"
        )
    return int(count)
