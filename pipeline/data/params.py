"""The `prepare:` section of params.yaml: which dataset, how it is split, and what the students see.

```yaml
prepare:
  dataset: {kind: digits}          # parquet / npz / zarr / hf_disk / image_folder / sentences (docs/data_and_teacher.md)
  seed: 0
  val_fraction: 0.15
  test_fraction: 0.2
  label_budget: null               # or {per_class: 15} or {fraction: 0.1}
  omit_classes: []                 # e.g. [3] (or a class name): Hinton 2015 §3, left out of the transfer set
  transforms: {}                   # read-time steps per field: {pixels: [{kind: scale, factor: 0.0039}]}
```
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, PositiveInt, model_validator

from pipeline.config import Seed, StrictModel
from pipeline.data.sentence_source import SentencesSource
from pipeline.transforms.params import READ_TIME_KINDS, TransformSpec


class DigitsSource(StrictModel):
    """The built-in default: scikit-learn's 1797 8x8 digit images, 10 classes, shipped offline."""

    kind: Literal["digits"] = "digits"


class ParquetSource(StrictModel):
    """A Parquet file with one row per sample.

    `input_column` holds a (fixed-size) list of numbers per row, the flattened input; `input_shape`
    reshapes it (default: the flat length). Ids are integers or strings (`img-000123`); labels are
    integer class indices or class names (strings, numbered in sorted order); a null label means
    "no label". Set `id_column: null` to number rows by position, `split_column` to a column of
    train/val/test/unlabelled to keep your own split.
    """

    kind: Literal["parquet"]
    path: str
    id_column: str | None = "id"
    label_column: str | None = "label"
    input_column: str = "input"
    split_column: str | None = None
    input_shape: list[PositiveInt] | None = Field(default=None, min_length=1)
    num_classes: int | None = Field(default=None, ge=1)
    fields: list[str] | None = Field(default=None, min_length=1)
    """Several input columns kept as named fields, dtypes as given, streamed (then `input_column`
    and `input_shape` are unused): a number per row, a fixed-size list, or a list of varying length
    (a variable-length field, e.g. token ids). `field_shapes` reshapes fixed ones."""
    field_shapes: dict[str, list[PositiveInt]] = Field(default_factory=dict)


class HfDiskSource(StrictModel):
    """A Hugging Face dataset saved with `save_to_disk` (a Dataset, or a DatasetDict whose splits
    train / validation (or val) / test / unlabelled become the split), read memory-mapped with
    `datasets`; no hub download. `fields` are the input columns kept (as the Parquet `fields`). A field
    that is an `Image` feature is decoded with Pillow at prepare, converted to `image_mode` and resized
    to `image_size` [height, width] (bilinear), as an image folder's images: uint8 (C, H, W)."""

    kind: Literal["hf_disk"]
    path: str
    fields: list[str] = Field(min_length=1)
    field_shapes: dict[str, list[PositiveInt]] = Field(default_factory=dict)
    image_size: list[PositiveInt] | None = Field(default=None, min_length=2, max_length=2)
    image_mode: Literal["RGB", "L"] = "RGB"
    id_column: str | None = None
    label_column: str | None = "label"
    num_classes: int | None = Field(default=None, ge=1)


class ImageFolderSource(StrictModel):
    """One folder per class (`path/<class>/<image>.png|jpg|jpeg`); each image decoded with Pillow at
    prepare, converted to `mode` (RGB or L) and resized to `size` [height, width] (bilinear), stored as
    uint8 field `field` (C, H, W). Sample ids are the paths relative to `path`; labels the folders."""

    kind: Literal["image_folder"]
    path: str
    size: list[PositiveInt] = Field(min_length=2, max_length=2)
    mode: Literal["RGB", "L"] = "RGB"
    field: str = "pixels"


class ArraySource(StrictModel):
    """Named arrays: `x` (N, *input_shape), `y` (N,) integer labels (-1 = none) or class names
    ("" = none), optional `ids` (N,) integers or strings and `split` (N,) strings. Set an array name
    to null when you do not have that array."""

    path: str
    x_array: str = "x"
    y_array: str | None = "y"
    id_array: str | None = "ids"
    split_array: str | None = None
    num_classes: int | None = Field(default=None, ge=1)


class NpzSource(ArraySource):
    """A NumPy `.npz` archive (np.savez)."""

    kind: Literal["npz"]


class ZarrSource(ArraySource):
    """A Zarr group (v2 or v3) holding the arrays."""

    kind: Literal["zarr"]


DatasetSource = Annotated[
    DigitsSource | ParquetSource | NpzSource | ZarrSource | HfDiskSource | ImageFolderSource | SentencesSource,
    Field(discriminator="kind"),
]


class LabelBudget(StrictModel):
    """How many train labels students may see: exactly one of `per_class` rows per class or a
    `fraction` of each class (stratified, seeded). The rest of train becomes split `unlabelled`."""

    per_class: int | None = Field(default=None, ge=1)
    fraction: float | None = Field(default=None, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _exactly_one(self) -> LabelBudget:
        if (self.per_class is None) == (self.fraction is None):
            raise ValueError("give exactly one of per_class or fraction")
        return self


class PrepareParams(StrictModel):
    """The whole `prepare:` section."""

    dataset: DatasetSource = Field(default_factory=DigitsSource)
    seed: Seed = 0
    val_fraction: float = Field(default=0.15, ge=0.0, lt=1.0)
    test_fraction: float = Field(default=0.2, ge=0.0, lt=1.0)
    label_budget: LabelBudget | None = None
    omit_classes: list[int | str] = Field(default_factory=list)
    transforms: dict[str, TransformSpec] = Field(default_factory=dict)
    """Read-time steps per field (cast, scale, normalize, layout: pipeline/transforms), e.g.
    {pixels: [{kind: scale, factor: 0.00392156862745098}]}: stored in meta.json and the fingerprint,
    applied on every read by cache, train, evaluate and export parity alike."""

    @model_validator(mode="after")
    def _read_time_only(self) -> PrepareParams:
        for field, spec in self.transforms.items():
            moving = [step.kind for step in spec if step.kind not in READ_TIME_KINDS]
            if moving:
                raise ValueError(
                    f"transforms.{field}: {', '.join(moving)} are augmentations, not read-time steps; "
                    f"put them in cache.views (read-time: {', '.join(sorted(READ_TIME_KINDS))})"
                )
        return self

    @model_validator(mode="after")
    def _fractions_leave_train(self) -> PrepareParams:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("val_fraction + test_fraction must be below 1 so train is not empty")
        return self
