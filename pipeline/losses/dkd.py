"""Decoupled knowledge distillation: KD split into the target-class binary KL (TCKD) and the KL among
the non-target classes (NCKD), weighted separately. Zhao, Cui, Song, Qiu & Liang 2022, "Decoupled
Knowledge Distillation" (CVPR 2022, arXiv:2203.08921)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from pipeline.losses._contract import LossInputs, TapShapes, TermParams
from pipeline.losses._probs import as_float32, kl_rows, labelled, masked_mean


def _binary_and_rest(logits: torch.Tensor, target: torch.Tensor, temperature: float):
    # log [p_target, 1 - p_target] and log softmax over the non-target classes, computed from
    # logsumexp with the target set to -inf (a -1000 offset, as the reference code uses, fails for
    # logits of magnitude 1e3 and more).
    scaled = as_float32(logits) / temperature
    is_target = F.one_hot(target, scaled.shape[1]).bool()
    all_classes = scaled.logsumexp(dim=1)
    others = scaled.masked_fill(is_target, float("-inf"))
    log_target = scaled.gather(1, target[:, None]).squeeze(1) - all_classes
    log_rest = others.logsumexp(dim=1) - all_classes
    binary = torch.stack([log_target, log_rest], dim=1)  # (B, 2)
    return binary, torch.log_softmax(others, dim=1)  # (B, C), -inf at target


def dkd_rows(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (TCKD, NCKD), each scaled by T^2:
    TCKD_i = T^2 KL(b_t,i || b_s,i), b = [p_target, 1 - p_target] of softmax(z / T);
    NCKD_i = T^2 KL(p_hat_t,i || p_hat_s,i), p_hat = softmax(z / T) over the classes != target.

    student_logits, teacher_logits: (B, C); target: (B,) int64 in [0, C). Returns two (B,) float32.
    Source: Zhao et al. 2022 eq. (5)-(6) (KD = TCKD + (1 - p_t,target) NCKD).
    """
    binary_s, rest_s = _binary_and_rest(student_logits, target, temperature)
    binary_t, rest_t = _binary_and_rest(teacher_logits.detach(), target, temperature)
    scale = temperature**2
    return scale * kl_rows(binary_t, binary_s), scale * kl_rows(rest_t, rest_s)


class DKDParams(TermParams):
    """Decoupled KD: alpha * TCKD + beta * NCKD (Zhao et al. 2022; mdistiller CIFAR defaults)."""

    kind: Literal["dkd"] = "dkd"
    alpha: float = Field(1.0, description="factor of TCKD (target vs rest)")
    beta: float = Field(8.0, description="factor of NCKD (among non-target classes)")
    temperature: float = Field(4.0, gt=0, description="T (both parts are scaled by T^2)")
    target: Literal["label", "teacher_argmax"] = Field(
        "label", description="label: the hard label, unlabelled rows left out; teacher_argmax: every row"
    )
    warmup_epochs: int = Field(0, ge=0, description="ramp both factors linearly from 0 over these epochs")

    def sub_weights(self, epoch: int) -> dict[str, float]:
        ramp = min((epoch + 1) / self.warmup_epochs, 1.0) if self.warmup_epochs else 1.0
        return {"target": ramp * self.alpha, "non_target": ramp * self.beta}


class DKDLoss(nn.Module):
    """dkd: target = mean_i TCKD_i, non_target = mean_i NCKD_i (over labelled rows with
    target: label; over all rows with target: teacher_argmax).
    Sub-terms: target, non_target.  Source: Zhao et al. 2022, "Decoupled Knowledge Distillation"
    (arXiv:2203.08921)."""

    def __init__(self, params: DKDParams, shapes: TapShapes):
        super().__init__()
        self.params = params

    def forward(self, inputs: LossInputs) -> dict[str, torch.Tensor]:
        if self.params.target == "label":
            target, rows = inputs.labels.clamp(min=0), labelled(inputs.labels)
        else:
            target = inputs.teacher_logits.argmax(dim=1)
            rows = torch.ones_like(target, dtype=torch.bool)
        tckd, nckd = dkd_rows(inputs.student_logits, inputs.teacher_logits, target, self.params.temperature)
        return {"target": masked_mean(tckd, rows), "non_target": masked_mean(nckd, rows)}
