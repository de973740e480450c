"""Feature matching: the 1/(2D)-normalised squared error between student features and projected
teacher features, summed over taps (the feature part of Vanilla, seeds/000 §1; FitNets hints)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from pipeline.losses._contract import LossInputs, TapShapes
from pipeline.losses._taps import ProjectedPair, Projection, TapTermParams


def feature_mse(student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    """L_feat = (1/(2D)) (1/B) sum_i ||f_S,i - f_T,i||^2 for one tap.

    student_features, teacher_features: (B, *shape) in one space (projection already applied);
    D = prod(shape), the number of elements per row. Returns a float32 scalar.
    Source: seeds/000 §1 (L_feat, one modality of the sum).
    """
    rows = student_features.shape[0]
    per_row_dim = student_features[0].numel()
    return (student_features - teacher_features).pow(2).sum() / (2 * per_row_dim * rows)


class FeatureParams(TapTermParams):
    """Feature MSE with one learned projection per tap (seeds/000 §1)."""

    kind: Literal["feature"] = "feature"
    weight: float = Field(1.0, description="factor of this term in the recipe total")
    project: Projection = Field(
        "teacher_to_student",
        description="phi(f_T) onto the student as seeds/000 writes; "
        "student_to_teacher as FitNets; none when the shapes are equal",
    )

    def sub_weights(self, epoch: int) -> dict[str, float]:
        return {"feature": 1.0}


class FeatureLoss(nn.Module):
    """feature: sum over taps of (1/(2D)) (1/B) sum_i ||f_S,i - phi(f_T,i)||^2 (phi: Linear for
    (B, D) taps, 1x1 conv for (B, C, H, W) maps; or the student side projected).
    Sub-terms: feature.  Source: seeds/000 §1."""

    def __init__(self, params: FeatureParams, shapes: TapShapes):
        super().__init__()
        self.params = params
        self.pairs = nn.ModuleList(
            ProjectedPair(
                pair, shapes, params.project, f"{params.kind} term, taps {pair.student}/{pair.teacher}"
            )
            for pair in params.pairs()
        )

    def forward(self, inputs: LossInputs) -> dict[str, torch.Tensor]:
        return {"feature": sum(feature_mse(*pair(inputs)) for pair in self.pairs)}
