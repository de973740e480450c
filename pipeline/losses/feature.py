"""Feature matching: the 1/(2D)-normalised squared error between student features and projected
teacher features, summed over taps: the hint loss of Romero, Ballas, Kahou, Chassang, Gatta & Bengio
2015, "FitNets: Hints for Thin Deep Nets" (ICLR 2015, arXiv:1412.6550); also the feature part of
`vanilla`."""

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
    Source: FitNets' hint loss (1/2) ||.||^2 (Romero et al. 2015), divided by D: width-free weights.
    """
    rows = student_features.shape[0]
    per_row_dim = student_features[0].numel()
    return (student_features - teacher_features).pow(2).sum() / (2 * per_row_dim * rows)


class FeatureParams(TapTermParams):
    """Feature MSE with one learned projection per tap (Romero et al. 2015)."""

    kind: Literal["feature"] = "feature"
    project: Projection = Field(
        "teacher_to_student",
        description="teacher_to_student: phi(f_T) onto the student; "
        "student_to_teacher: FitNets' regressor; none when the shapes are equal",
    )

    def sub_weights(self, epoch: int) -> dict[str, float]:
        return {"feature": 1.0}


class FeatureLoss(nn.Module):
    """feature: sum over taps of (1/(2D)) (1/B) sum_i ||f_S,i - phi(f_T,i)||^2 (phi: Linear for
    (B, D) taps, 1x1 conv for (B, C, H, W) maps; or the student side projected).
    Sub-terms: feature.  Source: Romero et al. 2015, "FitNets: Hints for Thin Deep Nets"
    (arXiv:1412.6550)."""

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
