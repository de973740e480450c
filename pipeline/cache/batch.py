"""What every module outside `pipeline/cache/` sees of the teacher cache: batches of tensors.

A `TeacherBatch` holds the rows of one mini-batch, aligned by position: the sample ids that join
the cache to the prepared dataset, the split, the hard label (-1 where a row has no label), the
teacher's raw logits (float32 whatever the stored dtype; temperature is applied by the losses), an
optional sparse form, and one tensor per named feature tap.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

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
class TokenBatch:
    """The per-token teacher outputs of a batch (docs/cache_format.md, "Per-token outputs").

    lengths: (B,) int64 real tokens per row. mask: (B, L) bool, L = the batch's longest row, true
    on real tokens. padded: output -> (B, L, *token_shape) float32, zeros past each row's tokens.
    flat: output -> (sum(lengths), *token_shape) float32, the rows' tokens back to back (row b's
    are flat[offsets[b]:offsets[b+1]], offsets = the cumulative sum of lengths). "logits" is among
    them when the logits are per token and dense (then also `TeacherBatch.logits`, padded).
    targets: the per-token logits stored sampled or top-k (`cache.token_logits`), leading axes
    (B, L) like `mask`, as `token_kd` takes them (`LossInputs.teacher_tokens`), else None.
    """

    lengths: torch.Tensor
    mask: torch.Tensor
    padded: Mapping[str, torch.Tensor]
    flat: Mapping[str, torch.Tensor]
    targets: Any = None  # token_batch.SampledTokens | TopKTokens (not imported: batch.py stays light)

    def to(self, device: torch.device | str) -> TokenBatch:
        return TokenBatch(
            self.lengths.to(device),
            self.mask.to(device),
            {k: v.to(device, non_blocking=True) for k, v in self.padded.items()},
            {k: v.to(device, non_blocking=True) for k, v in self.flat.items()},
            None if self.targets is None else self.targets.to(device),
        )


@dataclass(frozen=True)
class TeacherBatch:
    """One mini-batch of cached teacher outputs, aligned by row.

    rows: (B,) int64 row numbers in the cache.
    sample_id: (B,) int64 ids that join the cache to the prepared dataset.
    split: (B,) int8 split codes (index into `SPLITS`).
    label: (B,) int64 class index, or `UNLABELLED` (-1).
    logits: (B, C) float32 raw teacher logits (stored as float16 or float32); (B, L, V) padded when
        the cache holds them per token; None for a teacher without logits.
    features: tap name -> (B, *tap_shape) float32 teacher features.
    sparse: the top-k form when the cache stores one, else None.
    tokens: the per-token outputs when the cache has any, else None.
    """

    rows: np.ndarray
    sample_id: np.ndarray
    split: np.ndarray
    label: torch.Tensor
    logits: torch.Tensor | None
    features: Mapping[str, torch.Tensor] = field(default_factory=dict)
    sparse: SparseLogits | None = None
    tokens: TokenBatch | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def to(self, device: torch.device | str) -> TeacherBatch:
        """The same batch with every tensor on `device` (non-blocking where pinned)."""
        return TeacherBatch(
            rows=self.rows,
            sample_id=self.sample_id,
            split=self.split,
            label=self.label.to(device, non_blocking=True),
            logits=None if self.logits is None else self.logits.to(device, non_blocking=True),
            features={k: v.to(device, non_blocking=True) for k, v in self.features.items()},
            sparse=None if self.sparse is None else self.sparse.to(device),
            tokens=None if self.tokens is None else self.tokens.to(device),
        )
