"""Two composite recipes, one term each: Vanilla = CE + a*T^2 KL + b*feature MSE (the KD of Hinton
et al. 2015 plus the hint loss of Romero et al. 2015) and Combined = Vanilla + g*CRD (Tian et al.
2020), built from the `ce`, `hinton`, `feature` and `crd` functions (no second copy of the math). The
same sums can be written as separate terms of a recipe; these kinds exist so that their defaults
are one line of params (docs/losses.md)."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from pipeline.losses._contract import LossInputs, TapShapes
from pipeline.losses._taps import ProjectedPair, Projection, TapTermParams
from pipeline.losses.ce import cross_entropy
from pipeline.losses.crd import info_nce
from pipeline.losses.feature import feature_mse
from pipeline.losses.hinton import distillation_kl


class VanillaParams(TapTermParams):
    """Vanilla: ce_weight * CE + kl_weight * T^2 KL + feature_weight * L_feat."""

    kind: Literal["vanilla"] = "vanilla"
    temperature: float = Field(2.0, gt=0, description="T")
    ce_weight: float = Field(1.0, description="factor of the hard-label CE")
    kl_weight: float = Field(1.0, description="a (factor of T^2 KL)")
    feature_weight: float = Field(100.0, description="b (factor of L_feat)")
    project: Projection = Field("teacher_to_student", description="phi on the teacher, one per tap")

    def sub_weights(self, epoch: int) -> dict[str, float]:
        return {"ce": self.ce_weight, "kl": self.kl_weight, "feature": self.feature_weight}


class CombinedParams(VanillaParams):
    """Combined: Vanilla + crd_weight * L_CRD on the same taps and projections."""

    kind: Literal["combined"] = "combined"
    whole_batch: ClassVar[bool] = True  # relates the batch's rows to each other (docs/training.md)
    temperature: float = Field(4.0, gt=0, description="T")
    crd_weight: float = Field(10.0, description="g (factor of L_CRD)")
    tau: float = Field(0.1, gt=0, description="InfoNCE temperature")

    def sub_weights(self, epoch: int) -> dict[str, float]:
        return {**super().sub_weights(epoch), "crd": self.crd_weight}


class VanillaLoss(nn.Module):
    """vanilla / combined: ce = CE over labelled rows; kl = T^2 (1/B) sum KL(p_t^T || p_s^T);
    feature = sum over taps of (1/(2D)) (1/B) ||f_S - phi(f_T)||^2; crd (combined only) =
    mean over taps of InfoNCE(f_S, phi(f_T), tau) on the same projected pairs.
    Sub-terms: ce, kl, feature[, crd].  Source: Hinton et al. 2015, "Distilling the Knowledge in a
    Neural Network" (arXiv:1503.02531); Romero et al. 2015, "FitNets: Hints for Thin Deep Nets"
    (arXiv:1412.6550); combined adds Tian et al. 2020, "Contrastive Representation Distillation"
    (arXiv:1910.10699)."""

    def __init__(self, params: VanillaParams, shapes: TapShapes):
        super().__init__()
        self.params = params
        self.with_crd = isinstance(params, CombinedParams)
        self.pairs = nn.ModuleList(
            ProjectedPair(
                pair, shapes, params.project, f"{params.kind} term, taps {pair.student}/{pair.teacher}"
            )
            for pair in params.pairs()
        )

    def forward(self, inputs: LossInputs) -> dict[str, torch.Tensor]:
        p = self.params
        projected = [pair(inputs) for pair in self.pairs]
        terms = {
            "ce": cross_entropy(inputs.student_logits, inputs.labels),
            "kl": distillation_kl(inputs.student_logits, inputs.teacher_logits, p.temperature),
            "feature": sum(feature_mse(s, t) for s, t in projected),
        }
        if self.with_crd:
            terms["crd"] = sum(info_nce(s, t, p.tau) for s, t in projected) / len(projected)
        return terms
