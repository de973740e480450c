"""Maximum mean discrepancy between the batch's student and teacher feature distributions, with a
multi-bandwidth Gaussian kernel; the biased estimator as seeds/000 writes it, and the unbiased one."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from pipeline.losses._contract import LossInputs, TapShapes
from pipeline.losses._probs import as_float32
from pipeline.losses._taps import Projection, ProjectedPair, TapTermParams


def gaussian_kernel(x: torch.Tensor, y: torch.Tensor, bandwidths: tuple[float, ...]) -> torch.Tensor:
    """(Bx, *shape), (By, *shape) -> (Bx, By) k(x_i, y_j) = (1/|S|) sum_{s in S} exp(-||x_i - y_j||^2 / (2 s^2)).

    Source: seeds/000 §5 (the multi-scale RBF kernel).
    """
    x, y = as_float32(x).flatten(1), as_float32(y).flatten(1)
    squared = (x.pow(2).sum(1)[:, None] + y.pow(2).sum(1)[None, :] - 2 * x @ y.T).clamp(min=0.0)
    return sum(torch.exp(squared / (-2.0 * s * s)) for s in bandwidths) / len(bandwidths)


def mmd_squared(student: torch.Tensor, teacher: torch.Tensor, bandwidths: tuple[float, ...],
                unbiased: bool = False) -> torch.Tensor:
    """MMD^2 between the rows of `student` and of `teacher` (both (B, *shape), one space).

    biased (seeds/000 §5 as written): mean k(s, s') + mean k(t, t') - 2 mean k(s, t), all B^2
    pairs, diagonals included. unbiased: the same-set means leave out i = j (divide by B(B-1)).
    Zero when the two sets are equal (biased). Returns a float32 scalar.  Source: seeds/000 §5.
    """
    k_ss = gaussian_kernel(student, student, bandwidths)
    k_tt = gaussian_kernel(teacher, teacher, bandwidths)
    k_st = gaussian_kernel(student, teacher, bandwidths)
    if not unbiased:
        return k_ss.mean() + k_tt.mean() - 2 * k_st.mean()
    rows = student.shape[0]
    off = max(rows * (rows - 1), 1)
    return ((k_ss.sum() - k_ss.diagonal().sum()) / off + (k_tt.sum() - k_tt.diagonal().sum()) / off
            - 2 * k_st.mean())


class MMDParams(TapTermParams):
    """MMD^2 with a multi-bandwidth Gaussian kernel, averaged over taps (seeds/000 §5)."""

    kind: Literal["mmd"] = "mmd"
    weight: float = Field(1.0, description="factor of this term in the recipe total")
    bandwidths: tuple[float, ...] = Field((0.2, 0.5, 1.0, 2.0, 5.0), min_length=1,
                                          description="kernel bandwidths sigma (seeds/000 §5)")
    estimator: Literal["biased", "unbiased"] = Field("biased", description="biased: as seeds/000 writes")
    project: Projection = Field("student_to_teacher", description="the space the kernel is taken in")

    def sub_weights(self, epoch: int) -> dict[str, float]:
        return {"mmd": 1.0}


class MMDLoss(nn.Module):
    """mmd: (1/M) sum_taps MMD^2(student rows, teacher rows), k = mean over sigma of
    exp(-||x - y||^2 / (2 sigma^2)).  Sub-terms: mmd.  Source: seeds/000 §5."""

    def __init__(self, params: MMDParams, shapes: TapShapes):
        super().__init__()
        self.params = params
        self.pairs = nn.ModuleList(
            ProjectedPair(pair, shapes, params.project, f"mmd term, taps {pair.student}/{pair.teacher}")
            for pair in params.pairs())

    def forward(self, inputs: LossInputs) -> dict[str, torch.Tensor]:
        unbiased = self.params.estimator == "unbiased"
        values = [mmd_squared(*pair(inputs), self.params.bandwidths, unbiased) for pair in self.pairs]
        return {"mmd": sum(values) / len(values)}
