"""What every module outside `pipeline/cache/` sees of the teacher cache: batches of tensors.

A `TeacherBatch` holds the rows of one mini-batch, aligned by position: the sample ids that join
the cache to the prepared dataset, the split, the hard label (-1 where a row has no label), the
teacher's raw logits (float32 whatever the stored dtype; temperature is applied by the losses), an
optional sparse form, and one tensor per named feature tap.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

UNLABELLED = -1
"""Label value of a row that has no hard label (docs/cache_format.md: unlabelled rows are first-class)."""

SPLITS = ("train", "val", "test", "unlabelled")
"""Split names, indexed by the int8 split code stored per row."""


@dataclass(frozen=True)
class SparseLogits:
    """Top-k teacher logits with the full-row log-sum-exp (docs/cache_format.md, "The sparse form").

    values: (B, K) float32 raw logits of the k largest classes, descending.
    indices: (B, K) int64 class indices of `values`.
    logsumexp: (B,) float32 log-sum-exp of the *full* raw logit row at temperature 1, so
        log p_1(i) = values - logsumexp[:, None] exactly on the stored support and the tail mass is
        1 - sum(exp(values - logsumexp)). (At another temperature the tail is unknown: the
        dense logits are the exact form.)
    """

    values: torch.Tensor
    indices: torch.Tensor
    logsumexp: torch.Tensor

    def to(self, device: torch.device | str) -> SparseLogits:
        return SparseLogits(self.values.to(device), self.indices.to(device), self.logsumexp.to(device))


@dataclass(frozen=True)
class TeacherBatch:
    """One mini-batch of cached teacher outputs, aligned by row.

    rows: (B,) int64 row numbers in the cache.
    sample_id: (B,) int64 ids that join the cache to the prepared dataset.
    split: (B,) int8 split codes (index into `SPLITS`).
    label: (B,) int64 class index, or `UNLABELLED` (-1).
    logits: (B, C) float32 raw teacher logits (stored as float16 or float32).
    features: tap name -> (B, *tap_shape) float32 teacher features.
    sparse: the top-k form when the cache stores one, else None.
    """

    rows: np.ndarray
    sample_id: np.ndarray
    split: np.ndarray
    label: torch.Tensor
    logits: torch.Tensor
    features: Mapping[str, torch.Tensor] = field(default_factory=dict)
    sparse: SparseLogits | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def to(self, device: torch.device | str) -> TeacherBatch:
        """The same batch with every tensor on `device` (non-blocking where pinned)."""
        return TeacherBatch(
            rows=self.rows,
            sample_id=self.sample_id,
            split=self.split,
            label=self.label.to(device, non_blocking=True),
            logits=self.logits.to(device, non_blocking=True),
            features={k: v.to(device, non_blocking=True) for k, v in self.features.items()},
            sparse=None if self.sparse is None else self.sparse.to(device),
        )
