"""Label smoothing: cross-entropy against (1 - eps) y + eps / C, over labelled rows (Szegedy et al.
2016, "Rethinking the Inception Architecture for Computer Vision", arXiv:1512.00567); the baseline
that KD tends to as the temperature grows (KD as learned label smoothing: Yuan et al. 2020,
"Revisiting Knowledge Distillation via Label Smoothing Regularization", arXiv:1909.11723)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from pipeline.losses._contract import LossInputs, TapShapes, TermParams
from pipeline.losses._probs import labelled, log_softmax_at, masked_mean


def label_smoothing_ce(student_logits: torch.Tensor, labels: torch.Tensor, epsilon: float) -> torch.Tensor:
    """-(1/|L|) sum_{i in L} sum_c y_smooth,c log softmax(z_i)_c, y_smooth = (1 - eps) onehot(y) + eps / C.

    student_logits: (B, C); labels: (B,) int64 or -1 (rows left out). Returns a float32 scalar;
    an exact 0 with a graph when no row is labelled.  Source: Szegedy et al. 2016.
    """
    log_probs = log_softmax_at(student_logits)
    hard = -log_probs.gather(1, labels.clamp(min=0).unsqueeze(1)).squeeze(1)
    uniform = -log_probs.mean(dim=1)
    return masked_mean((1 - epsilon) * hard + epsilon * uniform, labelled(labels))


def kd_equivalent_epsilon(hard_weight: float, temperature: float) -> float:
    """eps = (1-a) T^2 / (a + (1-a) T^2), a = hard_weight: the label smoothing that
    a*CE + (1-a)*T^2*H(p_t^T, p_s) tends to (up to the factor a + (1-a)T^2) as T grows: p_t^T tends
    to uniform (Hinton et al. 2015 §2.1), and CE against a uniform target is label smoothing."""
    soft = (1 - hard_weight) * temperature**2
    return soft / (hard_weight + soft)


class SmoothingParams(TermParams):
    """Label-smoothed cross-entropy (Szegedy et al. 2016)."""

    kind: Literal["smoothing"] = "smoothing"
    epsilon: float = Field(0.1, ge=0, le=1, description="mass spread uniformly over the C classes")

    def sub_weights(self, epoch: int) -> dict[str, float]:
        return {"smoothing": 1.0}


class SmoothingLoss(nn.Module):
    """smoothing: -mean over labelled rows of sum_c ((1-eps) y_c + eps/C) log softmax(z_s)_c.
    Sub-terms: smoothing.  Source: Szegedy et al. 2016, "Rethinking the Inception Architecture for
    Computer Vision" (arXiv:1512.00567); as a KD baseline: Yuan et al. 2020 (arXiv:1909.11723)."""

    def __init__(self, params: SmoothingParams, shapes: TapShapes):
        super().__init__()
        self.params = params

    def forward(self, inputs: LossInputs) -> dict[str, torch.Tensor]:
        return {"smoothing": label_smoothing_ce(inputs.student_logits, inputs.labels, self.params.epsilon)}
