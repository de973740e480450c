"""Drawing a view: every random value of a spec, from (seed, sample id, view) alone, as one record.

Function matching (Beyer et al. 2022, "Knowledge distillation: A good teacher is patient and
consistent", arXiv:2106.05237) needs the student to see the very view the teacher saw; FKD (Shen &
Xing 2022, "A Fast Knowledge Distillation Framework for Visual Recognition", arXiv:2112.01528) stores
each view's crop box and flip beside the soft labels. Here `draw` returns a `ViewParams` record the
cache stores as fixed-width columns (VIEW_DTYPE) and `apply` replays it, so no one re-draws.

Each augmentation draws from its own PCG64 stream whose state is the sha256 of the uint32 words
    [id tag, seed (2 words), sample id (2 words, or 8 words of sha256 for a string id), view, kind code]
(`stream_key`), so a view never depends on batch order, worker count, or the other augmentations of
the spec.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from pipeline.transforms.params import TransformError, parse_spec
from pipeline.transforms.shapes import describe, step_shapes

VIEW_COLUMNS = (
    ("crop_top", "<i4"),  # crop / resized_crop box: rows from the top (of the padded image for crop)
    ("crop_left", "<i4"),
    ("crop_height", "<i4"),
    ("crop_width", "<i4"),
    ("flip", "u1"),  # 1 = mirrored left-right
    ("shift_dy", "<i4"),  # content moves down by dy and right by dx pixels
    ("shift_dx", "<i4"),
    ("angle", "<f4"),  # degrees, counter-clockwise
    ("partner_id", "<i8"),  # mixup / cutmix partner's sample id
    ("lam", "<f4"),  # weight of the sample itself; 1 - lam is the partner's (cutmix: exact area kept)
    ("cut_top", "<i4"),  # cutmix box: where the partner's pixels are pasted
    ("cut_left", "<i4"),
    ("cut_height", "<i4"),
    ("cut_width", "<i4"),
)
VIEW_DTYPE = np.dtype(list(VIEW_COLUMNS))
"""One view's record as a numpy structured dtype: every column little-endian, fixed width. Every
drawn value is exact in its column: boxes and offsets are integers, angle and lam are rounded to
float32 when drawn. A column the spec does not use holds its default (0; lam 1)."""

KIND_CODES = {"crop": 1, "resized_crop": 2, "flip": 3, "shift": 4, "rotate": 5, "mixup": 6, "cutmix": 7}
"""The stream of each augmentation (the last seed word); never renumber: it would re-draw every view."""


@dataclass(frozen=True)
class ViewParams:
    """The drawn values of one view (columns of VIEW_DTYPE); `ViewParams()` is the untouched input."""

    crop_top: int = 0
    crop_left: int = 0
    crop_height: int = 0
    crop_width: int = 0
    flip: int = 0
    shift_dy: int = 0
    shift_dx: int = 0
    angle: float = 0.0
    partner_id: int = 0
    lam: float = 1.0
    cut_top: int = 0
    cut_left: int = 0
    cut_height: int = 0
    cut_width: int = 0

    def values(self) -> tuple[int | float, ...]:
        """The values in VIEW_DTYPE's column order."""
        return tuple(getattr(self, name) for name in VIEW_DTYPE.names)

    def to_array(self) -> np.ndarray:
        """A 0-d array of VIEW_DTYPE (values rounded to the column dtypes)."""
        return np.array(self.values(), dtype=VIEW_DTYPE)

    @classmethod
    def from_array(cls, record: Any) -> ViewParams:
        """From one record of VIEW_DTYPE (a 0-d array, a row of a stacked array, or a mapping)."""
        values = {}
        for field in fields(cls):
            value = record[field.name]
            values[field.name] = float(value) if VIEW_DTYPE[field.name].kind == "f" else int(value)
        return cls(**values)


def stack_views(views: Iterable[ViewParams]) -> np.ndarray:
    """(N,) array of VIEW_DTYPE: the column table of `views`, in order."""
    return np.array([view.values() for view in views], dtype=VIEW_DTYPE)


def as_view_table(views: Any) -> np.ndarray:
    """(B,) array of VIEW_DTYPE from one ViewParams or record (B = 1), a sequence of ViewParams or
    records, or a structured array holding VIEW_DTYPE's columns (matched by name, any byte order)."""
    if isinstance(views, ViewParams):
        return views.to_array().reshape(1)
    if isinstance(views, (np.ndarray, np.void)) and views.dtype.names is not None:
        records = np.asarray(views).reshape(-1)
        if records.dtype == VIEW_DTYPE:
            return records
        missing = [name for name in VIEW_DTYPE.names if name not in records.dtype.names]
        if missing:
            raise TransformError(f"view records lack the column(s) {', '.join(missing)} of VIEW_DTYPE")
        table = np.zeros(len(records), dtype=VIEW_DTYPE)
        for name in VIEW_DTYPE.names:
            table[name] = records[name]
        return table
    if isinstance(views, dict):
        return ViewParams.from_array(views).to_array().reshape(1)
    return stack_views(
        view if isinstance(view, ViewParams) else ViewParams.from_array(view) for view in views
    )


def _float32(value: float) -> float:
    """`value` rounded to the nearest float32 (so the f4 column stores it exactly)."""
    return float(np.float32(value))


class PartnerPool:
    """The sample ids a mixup/cutmix partner is drawn from (e.g. the train split): unique, sorted once
    here so a draw depends on the set of ids, not on the order they were given in."""

    def __init__(self, sample_ids: Any):
        ids = np.asarray(sample_ids)
        if ids.ndim != 1 or ids.dtype.kind not in "iu":
            raise TransformError(
                f"a partner pool is a 1-D array of integer sample ids; got dtype {ids.dtype.name}, "
                f"shape {ids.shape}"
            )
        self.ids = np.unique(ids.astype(np.int64))
        if len(self.ids) != len(ids):
            raise TransformError(f"the partner pool repeats {len(ids) - len(self.ids)} sample id(s)")

    def __len__(self) -> int:
        return len(self.ids)

    def pick(self, rng: np.random.Generator, sample_id: Any) -> int:
        """A partner id drawn uniformly from the pool, never `sample_id` itself."""
        count = len(self.ids)
        position = int(np.searchsorted(self.ids, sample_id)) if isinstance(sample_id, int) else count
        holds_self = position < count and int(self.ids[position]) == sample_id
        if count - holds_self < 1:
            raise TransformError("the partner pool holds no sample other than the sample itself")
        index = int(rng.integers(0, count - holds_self))
        if holds_self and index >= position:
            index += 1  # skip the sample itself
        return int(self.ids[index])


def stream_key(seed: int, sample_id: int | str, view: int, kind: str) -> bytes:
    """The 32-byte key of augmentation `kind`'s stream for (seed, sample id, view): sha256 of the
    little-endian uint32 words [id tag, seed lo, seed hi, sample id words, view, kind code], where a
    sample id is an int64 (2 words, tag 0) or a string (the 8 words of its UTF-8 sha256, tag 1)."""
    if not 0 <= seed < 2**64:
        raise TransformError(f"views seed {seed} must be in 0..2**64-1")
    if not 0 <= view < 2**32:
        raise TransformError(f"view index {view} must be in 0..2**32-1")
    if isinstance(sample_id, str):
        digest = hashlib.sha256(sample_id.encode("utf-8")).digest()
        tag, id_words = 1, np.frombuffer(digest, dtype="<u4").tolist()
    else:
        unsigned = int(sample_id) % 2**64  # int64 ids, negative ones included
        tag, id_words = 0, [unsigned & 0xFFFFFFFF, unsigned >> 32]
    words = [tag, seed & 0xFFFFFFFF, seed >> 32, *id_words, view, KIND_CODES[kind]]
    return hashlib.sha256(np.array(words, dtype="<u4").tobytes()).digest()


def seed_stream(generator: np.random.Generator, key: bytes) -> np.random.Generator:
    """`generator` (over PCG64) set to the stream of `key`: PCG64 state = key bytes 0..15, increment
    = bytes 16..31 made odd (big-endian integers). Setting the state of one generator costs a few
    microseconds where building a new PCG64 from a SeedSequence costs ~40."""
    state = int.from_bytes(key[:16], "big")
    increment = int.from_bytes(key[16:], "big") | 1
    generator.bit_generator.state = {
        "bit_generator": "PCG64",
        "state": {"state": state, "inc": increment},
        "has_uint32": 0,
        "uinteger": 0,
    }
    return generator


def _resized_box(step: Any, rng: np.random.Generator, height: int, width: int) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params: ten tries at a box of the asked area and aspect,
    then the central box of the clamped aspect."""
    area = height * width
    log_low, log_high = math.log(step.ratio[0]), math.log(step.ratio[1])
    for _ in range(10):
        target_area = area * rng.uniform(step.scale[0], step.scale[1])
        aspect = math.exp(rng.uniform(log_low, log_high))
        box_width = round(math.sqrt(target_area * aspect))
        box_height = round(math.sqrt(target_area / aspect))
        if 0 < box_width <= width and 0 < box_height <= height:
            top = int(rng.integers(0, height - box_height + 1))
            left = int(rng.integers(0, width - box_width + 1))
            return top, left, box_height, box_width
    aspect = width / height
    if aspect < step.ratio[0]:
        box_width, box_height = width, max(1, min(height, round(width / step.ratio[0])))
    elif aspect > step.ratio[1]:
        box_height, box_width = height, max(1, min(width, round(height * step.ratio[1])))
    else:
        box_height, box_width = height, width
    return (height - box_height) // 2, (width - box_width) // 2, box_height, box_width


def _draw_step(
    step: Any, rng: np.random.Generator, shape: tuple[int, ...], sample_id: Any, pool: Any
) -> dict:
    height, width = shape[-2:] if len(shape) >= 2 else (0, 0)
    if step.kind == "crop":
        top = int(rng.integers(0, height + 2 * step.padding - step.size[0] + 1))
        left = int(rng.integers(0, width + 2 * step.padding - step.size[1] + 1))
        return {"crop_top": top, "crop_left": left, "crop_height": step.size[0], "crop_width": step.size[1]}
    if step.kind == "resized_crop":
        names = ("crop_top", "crop_left", "crop_height", "crop_width")
        return dict(zip(names, _resized_box(step, rng, height, width)))
    if step.kind == "flip":
        return {"flip": int(rng.random() < step.p)}
    if step.kind == "shift":
        shift_dy, shift_dx = (int(value) for value in rng.integers(-step.pixels, step.pixels + 1, size=2))
        return {"shift_dy": shift_dy, "shift_dx": shift_dx}
    if step.kind == "rotate":
        return {"angle": _float32(rng.uniform(step.degrees[0], step.degrees[1]))}
    partner = pool.pick(rng, sample_id)
    lam = float(rng.beta(step.alpha, step.alpha))
    if step.kind == "mixup":
        return {"partner_id": partner, "lam": _float32(lam)}
    # cutmix: a box of side sqrt(1 - lam) of the image, centred uniformly, clipped (Yun et al. 2019).
    cut_ratio = math.sqrt(1.0 - lam)
    cut_height, cut_width = int(height * cut_ratio), int(width * cut_ratio)
    centre_row, centre_col = int(rng.integers(0, height)), int(rng.integers(0, width))
    top, bottom = max(centre_row - cut_height // 2, 0), min(centre_row + cut_height // 2, height)
    left, right = max(centre_col - cut_width // 2, 0), min(centre_col + cut_width // 2, width)
    kept = 1.0 - (bottom - top) * (right - left) / (height * width)
    box = {"cut_top": top, "cut_left": left, "cut_height": bottom - top, "cut_width": right - left}
    return {"partner_id": partner, "lam": _float32(kept), **box}


class ViewDrawer:
    """Draws views of one spec, seed, input shape and partner pool; reuses one generator, so keep
    one per worker (not thread-safe). `drawer.draw(sample_id, view)` equals `draw(...)`."""

    def __init__(
        self,
        spec: Sequence[Any],
        seed: int,
        input_shape: Sequence[int],
        partner_pool: PartnerPool | Sequence[int] | np.ndarray | None = None,
    ):
        self.spec = parse_spec(spec)
        self.seed = int(seed)
        self.shapes = step_shapes(self.spec, input_shape)
        if partner_pool is not None and not isinstance(partner_pool, PartnerPool):
            partner_pool = PartnerPool(partner_pool)
        self.partner_pool = partner_pool
        for index, step in enumerate(self.spec):
            if step.kind in ("mixup", "cutmix") and (partner_pool is None or len(partner_pool) == 0):
                raise TransformError(
                    f"{describe(step, index)}: needs a partner pool (the sample ids partners come from, "
                    "e.g. the train split); none was given"
                )
        self._generator = np.random.Generator(np.random.PCG64())

    def draw(self, sample_id: int | str, view: int) -> ViewParams:
        """The ViewParams of view `view` of sample `sample_id`."""
        sample_id = sample_id if isinstance(sample_id, str) else int(sample_id)
        values: dict[str, Any] = {}
        for index, step in enumerate(self.spec):
            if step.kind in KIND_CODES:
                key = stream_key(self.seed, sample_id, int(view), step.kind)
                rng = seed_stream(self._generator, key)
                values.update(_draw_step(step, rng, self.shapes[index], sample_id, self.partner_pool))
        return ViewParams(**values)

    def table(self, sample_ids: Sequence[int] | np.ndarray, count: int) -> np.ndarray:
        """(N, count) array of VIEW_DTYPE: row i, column k is the view k of sample_ids[i]."""
        table = np.zeros((len(sample_ids), count), dtype=VIEW_DTYPE)
        for row, sample_id in enumerate(sample_ids):
            for view in range(count):
                table[row, view] = self.draw(sample_id, view).values()
        return table


def draw(
    spec: Sequence[Any],
    seed: int,
    sample_id: int | str,
    view: int,
    partner_pool: PartnerPool | Sequence[int] | np.ndarray | None = None,
    *,
    input_shape: Sequence[int],
) -> ViewParams:
    """The drawn values of view `view` of sample `sample_id` under `spec` and `seed`.

    input_shape: one sample's shape before the spec (no batch axis): crops and cutmix boxes are
    drawn inside the image each step sees, and a spec that cannot apply is refused here, before a
    teacher runs. partner_pool: the ids mixup/cutmix partners come from. Deterministic from (spec,
    seed, sample_id, view, input_shape, the pool's set of ids): call order, batches and workers play
    no part. For many views use a ViewDrawer (it validates once and reuses its generator).
    """
    return ViewDrawer(spec, seed, input_shape, partner_pool).draw(sample_id, view)


def draw_table(
    spec: Sequence[Any],
    seed: int,
    sample_ids: Sequence[int] | np.ndarray,
    count: int,
    partner_pool: PartnerPool | Sequence[int] | np.ndarray | None = None,
    *,
    input_shape: Sequence[int],
) -> np.ndarray:
    """(N, count) array of VIEW_DTYPE: views 0..count-1 of every sample id (row i, column k is
    draw(spec, seed, sample_ids[i], k, ...)), all samples of one `input_shape`."""
    return ViewDrawer(spec, seed, input_shape, partner_pool).table(sample_ids, count)
