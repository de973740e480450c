"""The one reader API over every cache store: sizes, schema, `batch(rows)`, shuffled iteration.

`MemoryCache` holds every array in RAM (numpy). It is the reader the Zarr and Parquet stores hand
back when the cache fits in memory (a random 256-row batch is then a numpy gather: well under the
10 ms goal), and the cache tests and online/mutual learning build directly.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from pipeline.cache.batch import SPLITS, UNLABELLED, SparseLogits, TeacherBatch


@dataclass(frozen=True)
class CacheSchema:
    """Shapes and dtypes of a cache.

    num_rows: N rows (every split, labelled or not).
    num_classes: C, the width of the logits.
    logits_dtype: "float16" or "float32", as stored (batches are always float32).
    feature_shapes: tap name -> per-row shape, e.g. {"embed": (64,), "conv": (32, 4, 4)}.
    sparse_top_k: K of the stored top-k form, or None when there is none.
    """

    num_rows: int
    num_classes: int
    logits_dtype: str
    feature_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    sparse_top_k: int | None = None


class CacheReader(Protocol):
    """What a student's training reads; implemented by every store."""

    schema: CacheSchema

    def __len__(self) -> int: ...

    @property
    def sample_id(self) -> np.ndarray: ...

    @property
    def split(self) -> np.ndarray: ...

    @property
    def label(self) -> np.ndarray: ...

    def batch(self, rows: np.ndarray) -> TeacherBatch: ...


def rows_of_split(reader: CacheReader, split: str) -> np.ndarray:
    """(n,) int64 cache rows of one split ("train", "val", "test" or "unlabelled"), ascending."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    return np.flatnonzero(reader.split == SPLITS.index(split)).astype(np.int64)


def block_shuffle(rows: np.ndarray, block_rows: int, blocks_per_window: int, seed: int = 0) -> np.ndarray:
    """A shuffle of `rows` ((n,) int64, ascending) that keeps reads local, for caches too large
    for RAM (a lazily read Zarr cache decodes every inner chunk a batch touches, ~0.5 ms each).

    Rows are cut into blocks of `block_rows` consecutive rows (use the cache's rows_per_chunk),
    the blocks are put in random order, and rows are shuffled within each window of
    `blocks_per_window` consecutive blocks: a batch of up to block_rows * blocks_per_window
    rows then spans at most two windows, i.e. at most 2 * blocks_per_window chunks. Every row appears
    exactly once; same seed, same order.
    """
    rows = np.asarray(rows, np.int64)
    rng = np.random.default_rng(seed)
    blocks = [rows[i : i + block_rows] for i in range(0, len(rows), block_rows)]
    order = rng.permutation(len(blocks))
    shuffled = []
    for start in range(0, len(order), blocks_per_window):
        window = np.concatenate([blocks[b] for b in order[start : start + blocks_per_window]])
        shuffled.append(rng.permutation(window))
    return np.concatenate(shuffled) if shuffled else rows


def iter_batches(
    reader: CacheReader,
    batch_size: int,
    rows: np.ndarray | None = None,
    shuffle: bool = False,
    seed: int = 0,
    drop_last: bool = False,
) -> Iterator[TeacherBatch]:
    """Mini-batches of `rows` (default: every row), shuffled by a seeded generator when asked.

    The same (rows, seed) gives the same batches on every machine (numpy PCG64).
    """
    rows = np.arange(len(reader), dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
    if shuffle:
        rows = np.random.default_rng(seed).permutation(rows)
    stop = len(rows) - (len(rows) % batch_size if drop_last else 0)
    for start in range(0, stop, batch_size):
        yield reader.batch(rows[start : start + batch_size])


class MemoryCache:
    """A cache held in RAM: every array a numpy array, aligned by row.

    sample_id: (N,) int64; split: (N,) int8 codes into SPLITS; label: (N,) int64, -1 = unlabelled;
    logits: (N, C) float16 or float32; features: tap -> (N, *shape); sparse: optional
    (values (N, K), indices (N, K), logsumexp (N,)).
    """

    def __init__(
        self,
        sample_id: np.ndarray,
        split: np.ndarray,
        label: np.ndarray,
        logits: np.ndarray,
        features: Mapping[str, np.ndarray] | None = None,
        sparse: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    ) -> None:
        features = dict(features or {})
        n = len(sample_id)
        for name, array in {"split": split, "label": label, "logits": logits, **features}.items():
            if len(array) != n:
                raise ValueError(f"cache array {name!r} has {len(array)} rows, sample_id has {n}")
        self._sample_id = np.asarray(sample_id, np.int64)
        self._split = np.asarray(split, np.int8)
        self._label = np.asarray(label, np.int64)
        self._logits = logits
        self._features = features
        self._sparse = sparse
        self.schema = CacheSchema(
            num_rows=n,
            num_classes=int(logits.shape[1]),
            logits_dtype=str(logits.dtype),
            feature_shapes={k: tuple(v.shape[1:]) for k, v in features.items()},
            sparse_top_k=None if sparse is None else int(sparse[0].shape[1]),
        )

    def __len__(self) -> int:
        return len(self._sample_id)

    @property
    def sample_id(self) -> np.ndarray:
        return self._sample_id

    @property
    def split(self) -> np.ndarray:
        return self._split

    @property
    def label(self) -> np.ndarray:
        return self._label

    @property
    def logits(self) -> np.ndarray:
        """(N, C) raw logits in their stored dtype (for whole-cache analyses such as inspect)."""
        return self._logits

    @property
    def features(self) -> Mapping[str, np.ndarray]:
        """tap -> (N, *shape) teacher features (for whole-cache negatives, e.g. CRD)."""
        return self._features

    @property
    def sparse(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """The top-k form (values (N, K), indices (N, K), logsumexp (N,)), or None."""
        return self._sparse

    def batch(self, rows: np.ndarray) -> TeacherBatch:
        """The rows `rows` ((B,) int) as a TeacherBatch of float32 tensors."""
        rows = np.asarray(rows, np.int64)
        sparse = None
        if self._sparse is not None:
            values, indices, lse = self._sparse
            sparse = SparseLogits(
                torch.from_numpy(values[rows].astype(np.float32)),
                torch.from_numpy(indices[rows].astype(np.int64)),
                torch.from_numpy(lse[rows].astype(np.float32)),
            )
        return TeacherBatch(
            rows=rows,
            sample_id=self._sample_id[rows],
            split=self._split[rows],
            label=torch.from_numpy(self._label[rows]),
            logits=torch.from_numpy(self._logits[rows].astype(np.float32, copy=False)),
            features={
                name: torch.from_numpy(array[rows].astype(np.float32, copy=False))
                for name, array in self._features.items()
            },
            sparse=sparse,
        )


__all__ = [
    "CacheReader",
    "CacheSchema",
    "MemoryCache",
    "UNLABELLED",
    "block_shuffle",
    "iter_batches",
    "rows_of_split",
]
