"""The one contract between training and every loss family.

A family module (`hinton.py`, `rkd.py`, ...) holds pure math functions on tensors plus one small
`nn.Module` adapter built from its pydantic params and the tap shapes. The adapter is called as
`adapter(inputs: LossInputs) -> dict[str, Tensor]` and returns *unweighted* named sub-terms;
`recipe.py` is the only place that weighs and sums them (docs/losses.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from pydantic import Field

from pipeline.cache.batch import SparseLogits
from pipeline.cache.token_batch import SampledTokens, TopKTokens
from pipeline.config import StrictModel


@dataclass(frozen=True)
class TapShapes:
    """Per-row shapes a recipe is built for (projections are sized from these).

    num_classes: C.
    student: student tap name -> per-row shape, e.g. {"embed": (32,), "conv": (16, 4, 4)}; a
        per-token tap has None first, (None, D): (B, L, D) padded per batch (`LossInputs.tap_mask`).
    teacher: teacher tap name -> per-row shape, e.g. {"embed": (64,), "conv": (32, 4, 4)}.
    teacher_logits: whether the cache holds teacher logits (false for a teacher without logits,
        `teacher.logits_name: null`: terms that read them are refused when the recipe is built).
    """

    num_classes: int
    student: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    teacher: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    teacher_logits: bool = True


@dataclass(frozen=True)
class LossInputs:
    """Everything a loss term may read for one mini-batch (all tensors on one device).

    student_logits: (B, C) raw student logits (require grad).
    student_features: student tap -> (B, *shape).
    teacher_logits: (B, C) float32 raw teacher logits from the cache (no grad).
    teacher_features: teacher tap -> (B, *shape) from the cache (no grad).
    labels: (B,) int64 class index, -1 where the row has no hard label: hard-label terms mask
        those rows (mean over labelled rows, an exact 0 with a graph when none is labelled).
    teacher_sparse: the cache's top-k form, when it has one.
    peer_logits: (B, C) logits of the other members of a cohort (deep mutual learning, Zhang et al. 2018).
    teacher_feature_bank: teacher tap -> (N, *shape) features of every training row of the cache,
        for negatives drawn from the whole cache (CRD); None when not provided.
    rows: (B,) int64 cache rows of this batch (so a bank sampler can exclude the positives).
    epoch: 0-based epoch, for schedules.
    teacher_tokens: per-token sampled or top-k teacher targets, leading axes as the student's logits,
        which token-level terms (`token_kd`) read as (N, V) or (B, L, V) next-token logits.
    token_mask: the student logits' leading axes, bool, True on real tokens (None: every token).
    tap_mask: (B, L) bool, True on real tokens of the per-token taps (B, L, ...) of this batch
        (student and teacher padded alike to the batch's longest row); None: no tap is per token.
    """

    student_logits: torch.Tensor
    teacher_logits: torch.Tensor
    labels: torch.Tensor
    student_features: Mapping[str, torch.Tensor] = field(default_factory=dict)
    teacher_features: Mapping[str, torch.Tensor] = field(default_factory=dict)
    teacher_sparse: SparseLogits | None = None
    peer_logits: Sequence[torch.Tensor] = ()
    teacher_feature_bank: Mapping[str, torch.Tensor] | None = None
    rows: torch.Tensor | None = None
    epoch: int = 0
    teacher_tokens: SampledTokens | TopKTokens | None = None
    token_mask: torch.Tensor | None = None
    tap_mask: torch.Tensor | None = None


class TermParams(StrictModel):
    """What the params of every family share: the term's `weight` in the recipe total, and
    `sub_weights(epoch) -> {sub-term: factor}` (each family's own). A family's params add
    `kind: Literal["<name>"]` and its own fields."""

    weight: float = Field(1.0, description="factor of this term in the recipe total")

    def sub_weights(self, epoch: int) -> dict[str, float]:
        """Sub-term -> its factor at `epoch` (0-based), before `weight`."""
        raise NotImplementedError


@dataclass(frozen=True)
class Family:
    """One entry of `FAMILIES`: the params model (a `TermParams` with `kind: Literal[...]`) and the
    adapter class, built as `adapter(params, shapes)` and called as
    `adapter(inputs) -> {sub-term: unweighted scalar}`."""

    params: type
    adapter: type
