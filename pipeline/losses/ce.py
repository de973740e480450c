"""Plain hard-label cross-entropy, averaged over the labelled rows only."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from pipeline.losses._contract import LossInputs, TapShapes, TermParams
from pipeline.losses._probs import hard_ce_rows, labelled, masked_mean


def cross_entropy(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """L_CE = -(1/|L|) sum_{i in L} log softmax(z_i)_{y_i}, L = rows with a label (y != -1).

    student_logits: (B, C) raw logits; labels: (B,) int64 in [0, C) or -1.
    Returns a float32 scalar; an exact 0 (with a graph) when no row is labelled.
    Source: the hard-label term of Hinton et al. 2015 §2.
    """
    return masked_mean(hard_ce_rows(student_logits, labels), labelled(labels))


class CEParams(TermParams):
    """Hard-label cross-entropy."""

    kind: Literal["ce"] = "ce"

    def sub_weights(self, epoch: int) -> dict[str, float]:
        return {"ce": 1.0}


class CELoss(nn.Module):
    """ce: -mean over labelled rows of log softmax(z_s)_y.  Sub-terms: ce.
    Source: the hard-label term of Hinton et al. 2015, "Distilling the Knowledge in a Neural Network"
    (arXiv:1503.02531)."""

    def __init__(self, params: CEParams, shapes: TapShapes):
        super().__init__()
        self.params = params

    def forward(self, inputs: LossInputs) -> dict[str, torch.Tensor]:
        return {"ce": cross_entropy(inputs.student_logits, inputs.labels)}
