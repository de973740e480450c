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


def _squared_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x, y = as_float32(x).flatten(1), as_float32(y).flatten(1)
    return torch.addmm(x.pow(2).sum(1)[:, None] + y.pow(2).sum(1)[None, :], x, y.T, alpha=-2.0)


def _kernel_stack(x: torch.Tensor, y: torch.Tensor, bandwidths: tuple[float, ...]) -> torch.Tensor:
    """(S, Bx, By): exp(-||x_i - y_j||^2 / (2 s^2)) for each bandwidth s (one exp pass over all)."""
    squared = _squared_distances(x, y)
    factors = torch.tensor([-0.5 / (s * s) for s in bandwidths], device=squared.device, dtype=squared.dtype)
    # One clamp does two jobs: max 0 undoes rounding that makes a squared distance negative, and
    # min -50 (exp(-50) ~ 2e-22 per entry, far below float32 resolution of the sums) keeps exp,
    # and the products with small gradients in its backward, out of denormal numbers, which run
    # about 100x slower on CPUs.
    return torch.exp((squared.unsqueeze(0) * factors[:, None, None]).clamp(min=-50.0, max=0.0))


def gaussian_kernel(x: torch.Tensor, y: torch.Tensor, bandwidths: tuple[float, ...]) -> torch.Tensor:
    """(Bx, *shape), (By, *shape) -> (Bx, By) k(x_i, y_j) = (1/|S|) sum_{s in S} exp(-||x_i - y_j||^2 / (2 s^2)).

    Source: seeds/000 §5 (the multi-scale RBF kernel).
    """
    return _kernel_stack(x, y, bandwidths).mean(dim=0)


def _kernel_mean(x, y, bandwidths, leave_out_diagonal: bool) -> torch.Tensor:
    """mean_{i,j} k(x_i, y_j), over i != j when `leave_out_diagonal` (x and y the same set)."""
    stack = _kernel_stack(x, y, bandwidths)
    if not leave_out_diagonal:
        return stack.mean()
    rows = stack.shape[1]
    off_diagonal = stack.sum() - stack.diagonal(dim1=1, dim2=2).sum()
    return off_diagonal / (len(bandwidths) * max(rows * (rows - 1), 1))


def mmd_squared(student: torch.Tensor, teacher: torch.Tensor, bandwidths: tuple[float, ...],
                unbiased: bool = False) -> torch.Tensor:
    """MMD^2 between the rows of `student` and of `teacher` (both (B, *shape), one space).

    biased (seeds/000 §5 as written): mean k(s, s') + mean k(t, t') - 2 mean k(s, t), all B^2
    pairs, diagonals included. unbiased: the same-set means leave out i = j (divide by B(B-1)).
    Zero when the two sets are equal (biased). Kernel values below exp(-50) count as exp(-50)
    (see `_kernel_stack`). Returns a float32 scalar.  Source: seeds/000 §5.
    """
    teacher = teacher.detach()
    with torch.no_grad():  # the teacher-teacher block is a constant
        teacher_term = _kernel_mean(teacher, teacher, bandwidths, unbiased)
    return (_kernel_mean(student, student, bandwidths, unbiased) + teacher_term
            - 2 * _kernel_mean(student, teacher, bandwidths, False))


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
