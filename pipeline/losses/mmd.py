"""Maximum mean discrepancy between the batch's student and teacher feature distributions, with a
multi-bandwidth Gaussian kernel; the biased and the unbiased estimator of Gretton, Borgwardt, Rasch,
Schölkopf & Smola 2012, "A Kernel Two-Sample Test" (JMLR 13:723-773)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn
from torch.autograd.function import once_differentiable

from pipeline.losses._contract import LossInputs, TapShapes
from pipeline.losses._probs import as_float32
from pipeline.losses._taps import ProjectedPair, Projection, TapTermParams


def _pair_squared(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(Bx, D), (By, D) -> (Bx, By) ||x_i - y_j||^2 = |x_i|^2 + |y_j|^2 - 2 x_i.y_j (one product)."""
    return torch.addmm(x.pow(2).sum(1)[:, None] + y.pow(2).sum(1)[None, :], x, y.T, alpha=-2.0)


def _squared_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return _pair_squared(as_float32(x).flatten(1), as_float32(y).flatten(1))


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
    """(Bx, *shape), (By, *shape) -> (Bx, By) k(x_i, y_j) = (1/|S|) sum_{s in S} exp(-||x_i - y_j||^2 /
    (2 s^2)).

    The mean over several bandwidths, so that no single one has to be tuned.
    """
    return _kernel_stack(x, y, bandwidths).mean(dim=0)


_VALUES_PER_CHUNK = 1 << 17  # 512 KiB of float32 per scratch buffer: the passes stay in L2 cache


def _kernel_sums(
    x: torch.Tensor,
    y: torch.Tensor,
    factors: tuple[float, ...],
    with_slope: bool,
    same_set: bool,
    leave_out_diagonal: bool,
):
    """For d_ij = ||x_i - y_j||^2: sum over pairs and bandwidths of exp(clamp(f_s d, -50, 0)), and
    (with_slope) the (Bx, By) matrix sum_s f_s exp(f_s d), its derivative in d (zero diagonal when
    `same_set`: a row's distance to itself has no gradient). leave_out_diagonal: i = j is not
    summed (the unbiased same-set estimator).

    A few rows at a time: each chunk's squared distances and kernels live in two small buffers
    that stay in cache, five in-place passes per bandwidth; only the slope is a full (Bx, By).
    For a same-set block (y is x) only the columns j >= the chunk's first row are computed, the
    strictly upper part counted twice and mirrored into the slope: half the products and exps."""
    squares_y = y.pow(2).sum(1)
    squares_x = squares_y if same_set else x.pow(2).sum(1)
    rows_per_chunk = max(1, min(len(x), _VALUES_PER_CHUNK // max(len(y), 1)))
    squared_buffer = x.new_empty(rows_per_chunk, len(y))
    kernel_buffer = torch.empty_like(squared_buffer)
    slope = x.new_empty(len(x), len(y)) if with_slope else None
    sums = []  # 0-dim partial sums, added once at the end
    for start in range(0, len(x), rows_per_chunk):
        stop = min(start + rows_per_chunk, len(x))
        rows, first = stop - start, start if same_set else 0  # first column computed
        squared = torch.add(
            squares_x[start:stop, None], squares_y[None, first:], out=squared_buffer[:rows, : len(y) - first]
        )
        squared.addmm_(x[start:stop], y[first:].T, alpha=-2.0)
        slope_rows = slope[start:stop, first:].zero_() if with_slope else None
        for factor in factors:
            kernel = torch.mul(squared, factor, out=kernel_buffer[:rows, : len(y) - first])
            kernel.clamp_(min=-50.0, max=0.0).exp_()
            if leave_out_diagonal:
                kernel.diagonal(offset=start - first).zero_()
            sums.append(kernel.sum())
            if same_set:  # the strictly upper columns stand for their mirror images too
                sums.append(kernel[:, rows:].sum())
            if with_slope:
                slope_rows.add_(kernel, alpha=factor)
        if with_slope and same_set:
            slope_rows.diagonal().zero_()
            slope[stop:, start:stop] = slope_rows[:, rows:].T
    return torch.stack(sums).sum(), slope


class _MMDSquared(torch.autograd.Function):
    """MMD^2 of `mmd_squared` with the student's gradient in closed form.

    With A = d/dd of the student-student mean (per pair) and C = that of -2 x the student-teacher
    mean, d_ij = ||x_i - z_j||^2 gives dL/dx_i = 4 sum_j A_ij (x_i - x_j) + 2 sum_j C_ij (x_i - y_j):
    two (B, B) x (B, D) products in backward, and only A and C (2 B^2 values) kept for it, instead
    of autograd's five (S, B, B) stacks. Where exp(f d) was clamped (f d < -50, or d < 0 from
    rounding) the slope still counts f exp(f d), at most 12.5 * 2e-22 per pair, or the gradient
    of a pair with x_i = x_j to rounding, both far below float32 resolution of the gradient.
    """

    @staticmethod
    def forward(ctx, student, teacher, factors, unbiased):
        rows_s, rows_t = len(student), len(teacher)
        same_s = rows_s * (rows_s - 1) if unbiased else rows_s * rows_s
        same_t = rows_t * (rows_t - 1) if unbiased else rows_t * rows_t
        count = len(factors)
        ss, ss_slope = _kernel_sums(student, student, factors, True, True, unbiased)
        tt, _ = _kernel_sums(teacher, teacher, factors, False, True, unbiased)
        st, st_slope = _kernel_sums(student, teacher, factors, True, False, False)
        value = (
            ss / (count * max(same_s, 1)) + tt / (count * max(same_t, 1)) - 2 * st / (count * rows_s * rows_t)
        )
        ss_slope.mul_(4.0 / (count * max(same_s, 1)))  # 4 A
        st_slope.mul_(-4.0 / (count * rows_s * rows_t))  # 2 C
        ctx.save_for_backward(student, teacher, ss_slope, st_slope)
        return value

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_value):
        student, teacher, ss_slope, st_slope = ctx.saved_tensors
        diagonal = ss_slope.sum(dim=1) + st_slope.sum(dim=1)
        grad = torch.addmm(diagonal[:, None] * student, ss_slope, student, alpha=-1.0)
        grad.addmm_(st_slope, teacher, alpha=-1.0)
        return grad * grad_value, None, None, None


def mmd_squared(
    student: torch.Tensor, teacher: torch.Tensor, bandwidths: tuple[float, ...], unbiased: bool = False
) -> torch.Tensor:
    """MMD^2 between the rows of `student` and of `teacher` (both (B, *shape), one space).

    biased (Gretton et al.'s MMD_b): mean k(s, s') + mean k(t, t') - 2 mean k(s, t), all B^2
    pairs, diagonals included. unbiased (MMD_u): the same-set means leave out i = j (divide by B(B-1)).
    Zero when the two sets are equal (biased). Kernel values below exp(-50) count as exp(-50)
    (see `_kernel_stack`). Time: three (B, D) x (D, B) products forward, two backward, and
    5 cache-resident passes over (B, B) per bandwidth and block (15 B^2 exponentials in all, which
    dominate for D < ~500 on a CPU); memory for backward: two (B, B) matrices.
    The teacher gets no gradient. Returns a float32 scalar.  Source: Gretton et al. 2012.
    """
    factors = tuple(-0.5 / (s * s) for s in bandwidths)
    return _MMDSquared.apply(
        as_float32(student).flatten(1), as_float32(teacher.detach()).flatten(1), factors, unbiased
    )


class MMDParams(TapTermParams):
    """MMD^2 with a multi-bandwidth Gaussian kernel, averaged over taps (Gretton et al. 2012)."""

    kind: Literal["mmd"] = "mmd"
    bandwidths: tuple[float, ...] = Field(
        (0.2, 0.5, 1.0, 2.0, 5.0), min_length=1, description="kernel bandwidths sigma (k: their mean)"
    )
    estimator: Literal["biased", "unbiased"] = Field(
        "biased", description="biased: the i = j pairs kept (MMD(x, x) = 0); unbiased: left out"
    )
    project: Projection = Field("student_to_teacher", description="the space the kernel is taken in")

    def sub_weights(self, epoch: int) -> dict[str, float]:
        return {"mmd": 1.0}


class MMDLoss(nn.Module):
    """mmd: (1/M) sum_taps MMD^2(student rows, teacher rows), k = mean over sigma of
    exp(-||x - y||^2 / (2 sigma^2)).  Sub-terms: mmd.
    Source: Gretton et al. 2012, "A Kernel Two-Sample Test" (JMLR 13:723-773)."""

    def __init__(self, params: MMDParams, shapes: TapShapes):
        super().__init__()
        self.params = params
        self.pairs = nn.ModuleList(
            ProjectedPair(pair, shapes, params.project, f"mmd term, taps {pair.student}/{pair.teacher}")
            for pair in params.pairs()
        )

    def forward(self, inputs: LossInputs) -> dict[str, torch.Tensor]:
        unbiased = self.params.estimator == "unbiased"
        values = [mmd_squared(*pair(inputs), self.params.bandwidths, unbiased) for pair in self.pairs]
        return {"mmd": sum(values) / len(values)}
