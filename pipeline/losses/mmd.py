"""Maximum mean discrepancy between the batch's student and teacher feature distributions, with a
multi-bandwidth Gaussian kernel; the biased and the unbiased estimator of Gretton, Borgwardt, Rasch,
Schölkopf & Smola 2012, "A Kernel Two-Sample Test" (JMLR 13:723-773).

`plain_mmd_squared` is the formula as written, differentiated by autograd: easy to read, but it
holds (S, B, B, D)-sized temporaries. `mmd_squared`, which the adapter runs, gives the same values and
gradients from one (B, D) x (D, B) product per block, a few rows at a time, with the student's
gradient in closed form (tests/losses/test_fast_paths_pairwise.py holds one to the other).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import nn
from torch.autograd.function import once_differentiable

from pipeline.errors import DistilleryError
from pipeline.losses._contract import LossInputs, TapShapes
from pipeline.losses._probs import at_least_float32
from pipeline.losses._taps import ProjectedPair, Projection, TapTermParams


class MMDBatchError(DistilleryError, ValueError):
    """The unbiased estimator was asked for with fewer than 2 rows on a side (it is undefined)."""


def _check_rows(student_rows: int, teacher_rows: int, unbiased: bool) -> None:
    if unbiased and min(student_rows, teacher_rows) < 2:
        raise MMDBatchError(
            f"unbiased MMD needs at least 2 student and 2 teacher rows per batch, got {student_rows} and "
            f"{teacher_rows} (it averages k over pairs i != j); raise batch_size, or use estimator: biased"
        )


# The plain form


def gaussian_kernel(x: torch.Tensor, y: torch.Tensor, bandwidths: tuple[float, ...]) -> torch.Tensor:
    """(Bx, *shape), (By, *shape) -> (Bx, By) k(x_i, y_j) = (1/|S|) sum_{s in S} exp(-||x_i - y_j||^2 /
    (2 s^2)): the mean over several bandwidths, so that no single one has to be tuned.

    ||x_i - y_j||^2 is summed from the differences themselves, so an offset that x and y share
    cancels exactly. float32 (float64 stays float64); memory O(Bx By D).
    """
    x, y = at_least_float32(x).flatten(1), at_least_float32(y).flatten(1)
    squared = (x[:, None, :] - y[None, :, :]).pow(2).sum(dim=2)
    return torch.stack([torch.exp(-squared / (2 * s * s)) for s in bandwidths]).mean(dim=0)


def plain_mmd_squared(
    student: torch.Tensor, teacher: torch.Tensor, bandwidths: tuple[float, ...], unbiased: bool = False
) -> torch.Tensor:
    """MMD^2 between the rows of `student` and `teacher` ((B, *shape) each, one space) as written:
    mean k(s, s') + mean k(t, t') - 2 mean k(s, t); the same-set means over all B^2 pairs (biased,
    MMD_b) or over i != j (unbiased, MMD_u^2; MMDBatchError below 2 rows a side). The teacher gets
    no gradient. The readable reference of `mmd_squared`.  Source: Gretton et al. 2012.
    """
    _check_rows(len(student), len(teacher), unbiased)
    teacher = teacher.detach()

    def mean_kernel(x: torch.Tensor, y: torch.Tensor, leave_out_diagonal: bool) -> torch.Tensor:
        kernel = gaussian_kernel(x, y, bandwidths)
        if not leave_out_diagonal:
            return kernel.mean()
        rows = len(kernel)
        return (kernel.sum() - kernel.diagonal().sum()) / (rows * (rows - 1))

    return (
        mean_kernel(student, student, unbiased)
        + mean_kernel(teacher, teacher, unbiased)
        - 2 * mean_kernel(student, teacher, False)
    )


# The fused form: what the adapter runs


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
            # One clamp does two jobs: max 0 undoes rounding that makes a squared distance
            # negative, and min -50 (exp(-50) ~ 2e-22 per entry, far below float32 resolution of
            # the sums) keeps exp, and the products with small gradients in backward, out of
            # denormal numbers, which run about 100x slower on CPUs.
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

    Both sides are first centred on their joint mean m. MMD depends on the differences x_i - y_j
    only, so this changes nothing but the rounding: ||x - y||^2 = |x|^2 + |y|^2 - 2 x.y loses to
    cancellation what |x|^2 has beyond |x - y|^2, and features that share an offset c (an embedding
    after a ReLU, say) would lose about c^2 / |x - y|^2 of float32's resolution (in a batch of
    spread 0.3: 3% of the value at c = 100; at c = 1000 15%, and the gradient is lost, 26x off;
    tests/losses/test_mmd.py). The gradient is unchanged by the centring too,
    as the loss is invariant to a common shift, so backward uses the centred rows as well.

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
        centre = (student.sum(dim=0) + teacher.sum(dim=0)) / (rows_s + rows_t)
        student, teacher = student - centre, teacher - centre
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
    pairs, diagonals included. unbiased (MMD_u^2): the same-set means leave out i = j (divide by
    B(B-1)); MMDBatchError when a side has fewer than 2 rows, where it is undefined.
    Zero when the two sets are equal (biased). The same values and gradients as
    `plain_mmd_squared`, but kernel values below exp(-50) count as exp(-50) (see `_kernel_sums`).
    Rows are centred on the joint mean first, so a shared offset costs no accuracy.
    Time: three (B, D) x (D, B) products forward, two backward, and 5 cache-resident passes over
    (B, B) per bandwidth and block (15 B^2 exponentials in all, which dominate for D < ~500 on a
    CPU); memory for backward: two (B, B) matrices. The teacher gets no gradient.
    Returns a float32 scalar (float64 for float64 inputs).  Source: Gretton et al. 2012.
    """
    _check_rows(len(student), len(teacher), unbiased)
    factors = tuple(-0.5 / (s * s) for s in bandwidths)
    return _MMDSquared.apply(
        at_least_float32(student).flatten(1), at_least_float32(teacher.detach()).flatten(1), factors, unbiased
    )


class MMDParams(TapTermParams):
    """MMD^2 with a multi-bandwidth Gaussian kernel, averaged over taps (Gretton et al. 2012)."""

    kind: Literal["mmd"] = "mmd"
    whole_batch: ClassVar[bool] = True  # relates the batch's rows to each other (docs/training.md)
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
        values = [mmd_squared(*pair.rows(inputs), self.params.bandwidths, unbiased) for pair in self.pairs]
        return {"mmd": sum(values) / len(values)}
