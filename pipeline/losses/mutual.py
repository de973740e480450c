"""Mutual learning: each cohort member matches the (detached) predictions of the others with KL
(Zhang, Xiang, Hospedales & Lu 2018, "Deep Mutual Learning", CVPR 2018, arXiv:1706.00384)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from pipeline.errors import DistilleryError
from pipeline.losses._contract import LossInputs, TapShapes, TermParams
from pipeline.losses._probs import kl_rows, log_softmax_at


class MissingPeersError(DistilleryError, ValueError):
    """A mutual term was called without the logits of the other cohort members."""


def mutual_kl(
    student_logits: torch.Tensor,
    peer_logits: Sequence[torch.Tensor],
    temperature: float = 1.0,
    reduction: Literal["sum", "mean"] = "sum",
) -> torch.Tensor:
    """sum_{j != i} T^2 (1/B) sum_b KL(p_j^T || p_i^T) for member i (the student), peers j detached
    ("mean" divides by the number of peers, as Zhang et al. do for more than two networks). At T = 1
    this is Zhang et al.'s KL term for one member.

    student_logits: (B, C); peer_logits: M-1 tensors (B, C). Returns a float32 scalar.
    Source: Zhang et al. 2018.
    """
    student = log_softmax_at(student_logits, temperature)
    values = [kl_rows(log_softmax_at(peer.detach(), temperature), student).mean() for peer in peer_logits]
    total = temperature**2 * sum(values)
    return total / len(values) if reduction == "mean" else total


class MutualParams(TermParams):
    """KL towards every other cohort member (Zhang et al. 2018)."""

    kind: Literal["mutual"] = "mutual"
    temperature: float = Field(1.0, gt=0, description="T (the loss is scaled by T^2)")
    reduction: Literal["sum", "mean"] = Field("sum", description="over peers: sum, or mean")

    def sub_weights(self, epoch: int) -> dict[str, float]:
        return {"mutual": 1.0}


class MutualLoss(nn.Module):
    """mutual: sum over peers j of T^2 (1/B) sum_b KL(p_j^T || p_s^T), peers from inputs.peer_logits.
    Sub-terms: mutual.  Source: Zhang et al. 2018, "Deep Mutual Learning" (arXiv:1706.00384)."""

    needs_peers = True

    def __init__(self, params: MutualParams, shapes: TapShapes):
        super().__init__()
        self.params = params

    def forward(self, inputs: LossInputs) -> dict[str, torch.Tensor]:
        if not inputs.peer_logits:
            raise MissingPeersError(
                "a mutual term needs inputs.peer_logits: train the students as one "
                "cohort (the trainer fills them when recipe.needs_peers is True)"
            )
        p = self.params
        return {"mutual": mutual_kl(inputs.student_logits, inputs.peer_logits, p.temperature, p.reduction)}
