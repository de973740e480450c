"""Self-training on hard teacher labels: cross-entropy against argmax of the teacher's logits, on
every row (labelled or not): KD at T = 1 with hard assignment, the hard pseudo labels of Xie, Luong,
Hovy & Le 2020, "Self-training with Noisy Student improves ImageNet classification" (arXiv:1911.04252)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from pipeline.losses._contract import LossInputs, TapShapes, TermParams
from pipeline.losses._probs import hard_ce_rows, log_softmax_at, masked_mean


def self_training_ce(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, min_confidence: float = 0.0
) -> torch.Tensor:
    """-(1/|R|) sum_{i in R} log softmax(z_s,i)_{y_hat_i}, y_hat_i = argmax_c z_t,i,c,
    R = rows whose teacher confidence max_c softmax(z_t,i)_c >= min_confidence (all rows at 0).

    student_logits, teacher_logits: (B, C). Returns a float32 scalar (exact 0 when R is empty).
    Source: Xie et al. 2020 (hard pseudo labels).
    """
    teacher_log_probs = log_softmax_at(teacher_logits.detach())
    confidence, pseudo_labels = teacher_log_probs.max(dim=1)
    keep = confidence.exp() >= min_confidence
    return masked_mean(hard_ce_rows(student_logits, pseudo_labels), keep)


class SelfTrainingParams(TermParams):
    """Cross-entropy on the teacher's argmax labels (Xie et al. 2020)."""

    kind: Literal["self_training"] = "self_training"
    min_confidence: float = Field(0.0, ge=0, le=1, description="skip rows the teacher is less sure of")

    def sub_weights(self, epoch: int) -> dict[str, float]:
        return {"self_training": 1.0}


class SelfTrainingLoss(nn.Module):
    """self_training: -mean_i log softmax(z_s,i)_{argmax z_t,i} over every (confident) row.
    Sub-terms: self_training.  Source: Xie et al. 2020, "Self-training with Noisy Student improves
    ImageNet classification" (arXiv:1911.04252)."""

    def __init__(self, params: SelfTrainingParams, shapes: TapShapes):
        super().__init__()
        self.params = params

    def forward(self, inputs: LossInputs) -> dict[str, torch.Tensor]:
        value = self_training_ce(inputs.student_logits, inputs.teacher_logits, self.params.min_confidence)
        return {"self_training": value}
