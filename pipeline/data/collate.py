"""Batches of named fields: pad variable-length fields per batch (pad value + mask) and group rows of
similar length (seeded length bucketing). Pure numpy functions: DataLoader workers, the cache build
and tests call them alike (docs/data_and_teacher.md §6)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from pipeline.data.fields import Ragged
from pipeline.errors import DistilleryError

MASK_SUFFIX = "_mask"


class SequenceTooLongError(DistilleryError):
    """A variable-length row is longer than the maximum its consumer declared."""


def pad(
    field: Ragged,
    pad_value: int | float = 0,
    max_length: int | None = None,
    multiple_of: int = 1,
    name: str = "field",
) -> tuple[np.ndarray, np.ndarray]:
    """B ragged rows -> ((B, L, *inner) values in the stored dtype, (B, L) bool mask, True = real),
    L the longest row rounded up to `multiple_of`. A row longer than `max_length` is refused
    (SequenceTooLongError naming the row's position in the batch and its length)."""
    lengths = field.lengths()
    longest = int(lengths.max()) if len(lengths) else 0
    if max_length is not None and longest > max_length:
        row = int(np.argmax(lengths))
        raise SequenceTooLongError(
            f"{name}: row {row} of the batch has {longest} items, more than the declared maximum "
            f"{max_length}; truncate it at prepare or raise the maximum"
        )
    width = -(-longest // multiple_of) * multiple_of if longest else 0
    inner = field.values.shape[1:]
    values = np.full((len(lengths), width, *inner), pad_value, dtype=field.values.dtype)
    mask = np.arange(width)[None, :] < lengths[:, None]
    values[mask] = field.values[field.offsets[0] : field.offsets[-1]]
    return values, mask


def collate(
    batch: Mapping[str, np.ndarray | Ragged],
    pad_values: Mapping[str, int | float] | None = None,
    max_length: Mapping[str, int] | None = None,
    multiple_of: int = 1,
) -> dict[str, np.ndarray]:
    """{field: (B, *shape) array or Ragged} -> {field: array}: fixed fields as they are, each
    variable field padded (`pad`, pad value from `pad_values`, default 0) plus `<field>_mask` (B, L)
    bool unless the batch already holds a field of that name."""
    pad_values, max_length = pad_values or {}, max_length or {}
    out: dict[str, np.ndarray] = {}
    for name, values in batch.items():
        if isinstance(values, Ragged):
            out[name], mask = pad(values, pad_values.get(name, 0), max_length.get(name), multiple_of, name)
            if name + MASK_SUFFIX not in batch:
                out[name + MASK_SUFFIX] = mask
        else:
            out[name] = values
    return out


def length_batches(
    lengths, batch_size: int, seed: int, epoch: int = 0, bucket_batches: int = 100, drop_last: bool = False
) -> list[np.ndarray]:
    """Seeded length bucketing: (n,) lengths -> batches of row numbers ((<= batch_size,) int64).

    The rows are shuffled, cut into windows of `bucket_batches * batch_size`, sorted by length inside
    each window (ties in shuffled order), cut into batches, and the batches shuffled. Every row is in
    exactly one batch (unless `drop_last` drops the short ones). A function of (lengths, batch_size,
    seed, epoch, bucket_batches) only; bucket_batches=1 is a plain shuffle."""
    lengths = np.asarray(lengths, np.int64)
    rng = np.random.default_rng([int(seed), int(epoch), 0xB0C4])
    order = rng.permutation(len(lengths))
    window = max(1, int(bucket_batches)) * int(batch_size)
    batches = []
    for start in range(0, len(order), window):
        rows = order[start : start + window]
        rows = rows[np.argsort(lengths[rows], kind="stable")]
        batches += [rows[b : b + batch_size] for b in range(0, len(rows), batch_size)]
    if drop_last:
        batches = [b for b in batches if len(b) == batch_size]
    return [batches[i].astype(np.int64) for i in rng.permutation(len(batches))]


def padded_tokens(lengths, batches) -> int:
    """What padding costs: sum over `batches` (row-number arrays) of rows x the longest row's length."""
    lengths = np.asarray(lengths, np.int64)
    return int(sum(len(b) * int(lengths[b].max()) for b in batches if len(b)))
