"""Reference rows: fp32 teacher logits of a sample of rows, kept to measure the stored dtype's error.

The build keeps the fp32 logits of evenly spaced rows as it computes them (`keep_in_batch`);
shards found complete on resume, and `distillery inspect --teacher`, recompute just the teacher
batches those rows fall in, in the build's own batches, so they equal what the build saw.
"""

from __future__ import annotations

import numpy as np

from pipeline.cache.build import CacheBuild
from pipeline.cache.teacher_outputs import Teacher, batch_outputs

REFERENCE_MAX_BYTES = 256 * 2**20
"""Cap on the fp32 reference logits kept in memory (matters for large class counts)."""


def reference_rows(num_rows: int, max_rows: int, num_classes: int | None = None) -> np.ndarray:
    """(n,) sorted int64 rows, evenly spaced, whose fp32 logits the build keeps for the report;
    with `num_classes`, at most REFERENCE_MAX_BYTES of fp32 logits."""
    if num_classes:
        max_rows = min(max_rows, max(1, REFERENCE_MAX_BYTES // (4 * num_classes)))
    return np.unique(np.linspace(0, num_rows - 1, min(num_rows, max_rows)).round().astype(np.int64))


def keep_in_shard(keep_rows: np.ndarray | None, rows: slice) -> np.ndarray:
    """(m,) int64: the rows of `keep_rows` ((n,) sorted int64, or None) inside `rows`."""
    keep = np.asarray([] if keep_rows is None else keep_rows, np.int64)
    return keep[(keep >= rows.start) & (keep < rows.stop)]


def keep_in_batch(out: np.ndarray, keep: np.ndarray, batch: slice, logits: np.ndarray) -> None:
    """Copy the rows of `logits` ((B, C) fp32 of cache rows `batch`) that `keep` ((m,) sorted
    cache rows) names into their places in `out` ((m, C))."""
    in_batch = (keep >= batch.start) & (keep < batch.stop)
    out[in_batch] = logits[keep[in_batch] - batch.start]


def shard_reference_logits(
    build: CacheBuild, shard_index: int, teacher: Teacher, keep: np.ndarray
) -> np.ndarray:
    """(n, C) fp32 teacher logits of the rows `keep` ((m,) sorted int64) that fall in shard
    `shard_index`, recomputed in the build's own batches (so they equal what the build saw)."""
    rows = build.layout.shard_rows(shard_index)
    keep = keep_in_shard(keep, rows)
    out = np.empty((len(keep), build.layout.num_classes), np.float32)
    for batch in build.batches(rows):
        if ((keep >= batch.start) & (keep < batch.stop)).any():
            keep_in_batch(out, keep, batch, batch_outputs(teacher, build.data, batch, build.layout)["logits"])
    return out
