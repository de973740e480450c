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


def feature_mse(
    student_features: torch.Tensor, teacher_features: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """L_feat = (1/(2D)) (1/B) sum_i ||f_S,i - f_T,i||^2 for one tap.

    student_features, teacher_features: (B, *shape) in one space (projection already applied);
    D = prod(shape), the number of elements per row. Returns a float32 scalar.
    mask: for per-token taps (B, L, *inner), (B, L) bool, True on real tokens: then
    L = (1/(2D)) (1/T) sum over the T real tokens t of ||f_S,t - f_T,t||^2 with D = prod(inner), so
    padding contributes nothing (and with no padding this equals the unmasked form).
    Source: FitNets' hint loss (1/2) ||.||^2 (Romero et al. 2015), divided by D: width-free weights.
    """
    if mask is not None:
        squared = (student_features - teacher_features).pow(2).flatten(2).sum(-1)  # (B, L)
        real = mask.to(squared.dtype)
        width = student_features[0, 0].numel()
        return (squared * real).sum() / (2 * width * real.sum().clamp(min=1.0))
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
        return {
            "feature": sum(
                feature_mse(*pair(inputs), inputs.tap_mask if pair.per_token else None) for pair in self.pairs
            )
        }
