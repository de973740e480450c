"""Relational Gram matching: the Frobenius distance between the batch Gram matrices of student and
teacher features: the batch-similarity matching of Tung & Mori 2019, "Similarity-Preserving Knowledge
Distillation" (ICCV 2019, arXiv:1907.09682)."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from pipeline.losses._contract import LossInputs, TapShapes
from pipeline.losses._probs import as_float32
from pipeline.losses._taps import TapTermParams, check_pairs, read_row_taps


def gram_matrix(features: torch.Tensor, normalize_rows: bool = True) -> torch.Tensor:
    """(B, *shape) -> (B, B) G_ij = x_i . x_j (rows flattened; L2-normalised first if asked, so G
    holds cosine similarities and student and teacher sizes may differ; Tung & Mori 2019 normalise
    the rows of G instead)."""
    x = as_float32(features).flatten(1)
    if normalize_rows:
        x = F.normalize(x, dim=1)
    return x @ x.T


def gram_distance(
    student: torch.Tensor,
    teacher: torch.Tensor,
    normalize_rows: bool = True,
    reduction: Literal["mean", "sum"] = "mean",
) -> torch.Tensor:
    """L_relational = ||G_T(X) - G_S(X)||_F^2 ("sum"), or that divided by B^2 ("mean", as Tung &
    Mori 2019, so the weight does not depend on the batch size).

    student: (B, *s), teacher: (B, *t). Returns a float32 scalar.  Source: Tung & Mori 2019.
    """
    return F.mse_loss(
        gram_matrix(student, normalize_rows),
        gram_matrix(teacher.detach(), normalize_rows),
        reduction=reduction,
    )


class GramParams(TapTermParams):
    """Frobenius distance between batch Gram matrices, averaged over taps (Tung & Mori 2019)."""

    kind: Literal["gram"] = "gram"
    whole_batch: ClassVar[bool] = True  # relates the batch's rows to each other (docs/training.md)
    normalize_rows: bool = Field(True, description="cosine Gram (scale-free; sizes may differ)")
    reduction: Literal["mean", "sum"] = Field("mean", description="sum: ||.||_F^2; mean: / B^2 (Tung & Mori)")

    def sub_weights(self, epoch: int) -> dict[str, float]:
        return {"gram": 1.0}


class GramLoss(nn.Module):
    """gram: (1/M) sum_taps ||G_T - G_S||_F^2 (/ B^2 with reduction mean).
    Sub-terms: gram.  Source: Tung & Mori 2019, "Similarity-Preserving Knowledge Distillation"
    (arXiv:1907.09682)."""

    def __init__(self, params: GramParams, shapes: TapShapes):
        super().__init__()
        self.params = params
        self.pairs = params.pairs()
        self.per_token = check_pairs(self.pairs, shapes)  # such taps are pooled per row first

    def forward(self, inputs: LossInputs) -> dict[str, torch.Tensor]:
        p = self.params
        values = [
            gram_distance(*read_row_taps(inputs, pair, per_token), p.normalize_rows, p.reduction)
            for pair, per_token in zip(self.pairs, self.per_token)
        ]
        return {"gram": sum(values) / len(values)}
