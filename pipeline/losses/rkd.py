"""Relational knowledge distillation: match the batch's distance structure (mean-normalised
pairwise distances) and angle structure (pairwise cosines, or triplet angles) with SmoothL1.
Park, Kim, Lu & Cho 2019, "Relational Knowledge Distillation" (CVPR 2019, arXiv:1904.05068).

The plain forms come first (`plain_rkd_distance`, `plain_rkd_angle_pairwise`,
`plain_rkd_angle_triplet`): the formulas as written, differentiated by autograd, easy to read, but
holding O(B^2 D) values for backward, and O(B^3) for the triplet angle. The fused forms below them,
which the adapter runs, give the same values and gradients (tests/losses/test_fast_paths_pairwise.py
and test_rkd.py hold them to the plain forms) from (B, B) matrices with hand-written backward passes.
The triplet angle compares B^3 values. It is computed from (B, B) matrices only (the Gram matrix
and inverse distances: cos of angle j-i-k = (G_jk - G_ij - G_ik + G_ii) / (d_ij d_ik)), a few
anchors at a time, with a hand-written backward that recomputes each chunk: memory is
O(B^2 + anchors_per_chunk * B^2) in the forward and the backward, never O(B^3) or O(B^2 D).
At B = 1024 that is a few tens of MiB; the time stays O(B^3).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.autograd.function import once_differentiable

from pipeline.losses._contract import LossInputs, TapShapes
from pipeline.losses._probs import at_least_float32
from pipeline.losses._taps import TapTermParams, check_pairs, read_row_taps

_EPS = 1e-12
_ELEMENTS_PER_CHUNK = 1 << 20  # 1M floats (4 MiB) per (anchors, B, B) temporary


# The plain forms


def _plain_distances(x: torch.Tensor, normalize: bool) -> torch.Tensor:
    """(B, D) -> (B, B) psi_D = ||x_i - x_j|| / mu, zero diagonal (mu = 1 unless `normalize`)."""
    squared = (x[:, None, :] - x[None, :, :]).pow(2).sum(dim=2)
    # clamp before sqrt: the diagonal (and duplicate rows) would give an infinite gradient at 0
    distances = squared.clamp(min=_EPS).sqrt() * (1 - torch.eye(len(x), dtype=x.dtype, device=x.device))
    if not normalize:
        return distances
    mean = distances.sum() / max(len(x) * (len(x) - 1), 1)
    return distances / mean.clamp(min=_EPS)


def plain_rkd_distance(student: torch.Tensor, teacher: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """L_dist = (1/B^2) sum_{i,j} SmoothL1(psi_D(s_i, s_j), psi_D(t_i, t_j)) as written (readable
    reference of `rkd_distance`). student: (B, *s), teacher: (B, *t); float32 (float64 stays)."""
    student, teacher = at_least_float32(student).flatten(1), at_least_float32(teacher.detach()).flatten(1)
    return F.smooth_l1_loss(_plain_distances(student, normalize), _plain_distances(teacher, normalize))


def plain_rkd_angle_pairwise(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """L_angle = (1/B^2) sum_{i,j} SmoothL1(cos theta_S^ij, cos theta_T^ij), cos theta^ij the cosine of
    rows i and j (readable reference of `rkd_angle_pairwise`). Shapes as `plain_rkd_distance`."""

    def cosines(x: torch.Tensor) -> torch.Tensor:
        unit = F.normalize(at_least_float32(x).flatten(1), dim=1)
        return unit @ unit.T

    return F.smooth_l1_loss(cosines(student), cosines(teacher.detach()))


def plain_rkd_angle_triplet(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """L_angle = (1/B^3) sum_{i,j,k} SmoothL1(psi_A(s_i, s_j, s_k), psi_A(t_i, t_j, t_k)), the angle at
    vertex i taken as 0 when j = i or k = i, as Park et al.'s code (readable reference of
    `rkd_angle_triplet`; it holds (B, B, D) and (B, B, B) tensors). Shapes as `plain_rkd_distance`.
    Two equal rows differ here: F.normalize divides their zero difference by 1e-12 in backward,
    where the fused form gives their angles no gradient."""

    def cosines(x: torch.Tensor) -> torch.Tensor:
        x = at_least_float32(x).flatten(1)
        unit = F.normalize(x[None, :, :] - x[:, None, :], dim=2)  # [i, j] = unit vector x_i -> x_j
        return unit @ unit.transpose(1, 2)  # [i, j, k] = cos of the angle j-i-k

    return F.smooth_l1_loss(cosines(student), cosines(teacher.detach()))


# The fused forms: what the adapter runs


def _centred_gram(features: torch.Tensor) -> torch.Tensor:
    # Centring leaves distances and triplet angles unchanged and keeps the Gram entries small,
    # so G_jk - G_ij - G_ik + G_ii loses less to cancellation.
    x = at_least_float32(features).flatten(1)
    x = x - x.mean(dim=0, keepdim=True)
    return x @ x.T


def _distances_from_gram(gram: torch.Tensor) -> torch.Tensor:
    squared = gram.diagonal()[:, None] + gram.diagonal()[None, :] - 2 * gram
    # clamp before sqrt: the diagonal (and duplicates) would give an infinite gradient at 0.
    distances = squared.clamp(min=_EPS).sqrt()
    return distances * (1 - torch.eye(len(gram), device=gram.device, dtype=gram.dtype))


def _smooth_l1_and_slope(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean SmoothL1(student - teacher) with beta 1, its slope h = clamp(student - teacher, -1, 1)),
    from SmoothL1(r) = h r - h^2 / 2, as two dot products; overwrites `teacher` with the gap."""
    gap = torch.sub(student, teacher, out=teacher).view(-1)
    slope = gap.clamp(-1.0, 1.0)
    value = (torch.dot(slope, gap) - 0.5 * torch.dot(slope, slope)) / max(gap.numel(), 1)
    return value, slope.view_as(student)


_EXACT_COSINE_RATIO = 4.0  # rows whose (||x_i - m|| + ||m||) / ||x_i|| exceeds this get exact cosines


def _relations(features: torch.Tensor, normalize: bool, for_gradient: bool = True):
    """One side's pairwise relations from ONE Gram matrix of the centred rows x_c = x - m:
    psi (B, B) = ||x_i - x_j|| / mu (zero diagonal; mu = mean over i != j, clamped at 1e-12; 1
    when not `normalize`), cos (B, B) = G_ij / (n_i n_j) with the uncentred G = G_c + a_i + a_j,
    a_i = x_c,i.m + |m|^2 / 2, and n = max(||x_i||, 1e-12) as F.normalize; plus (`for_gradient`)
    what the student's gradient needs: mu before its clamp, 1/n, whether each norm was not
    clamped, and the mask of pairs whose squared distance was clamped.

    Centring keeps ||x_i - x_j||^2 = q_i + q_j - 2 G_c,ij free of cancellation when rows share a
    large offset. G from G_c is exact to float32 up to a factor (||x_c,i|| + ||m||) / ||x_i||;
    rows where that exceeds 4 (rows near 0, e.g. all-zero) get their cosines from x_i.x_j directly."""
    mean_row = features.mean(dim=0)
    centred = features - mean_row
    gram = centred @ centred.T
    squares = gram.diagonal().clone()
    squared = torch.add(squares[:, None], gram, alpha=-2.0).add_(squares[None, :])
    clamped = squared < _EPS if for_gradient else None
    distances = squared.clamp_(min=_EPS).sqrt_().fill_diagonal_(0.0)
    rows = len(features)
    mean = distances.sum() / max(rows * (rows - 1), 1)
    if normalize:
        distances.div_(mean.clamp(min=_EPS))
    norms = torch.linalg.vector_norm(features, dim=1)
    inverse_norms = 1.0 / norms.clamp(min=_EPS)
    offsets = centred @ mean_row + 0.5 * mean_row.dot(mean_row)
    cosines = gram.add_(offsets[:, None]).add_(offsets[None, :])
    cosines.mul_(inverse_norms[:, None]).mul_(inverse_norms[None, :])
    spread = (squares.sqrt() + mean_row.norm()) * inverse_norms
    inexact = (spread > _EXACT_COSINE_RATIO).nonzero().view(-1)
    if len(inexact):
        exact = (features[inexact] @ features.T) * inverse_norms[inexact, None] * inverse_norms[None, :]
        cosines[inexact] = exact
        cosines[:, inexact] = exact.T
    gradient_parts = (mean, inverse_norms, norms >= _EPS, clamped) if for_gradient else None
    return distances, cosines, gradient_parts


class _PairwiseRKD(torch.autograd.Function):
    """(L_dist, L_angle) of `rkd_distance` and `rkd_angle_pairwise` in one pass: one Gram matrix
    per side, in-place (B, B) work, and the student's gradient in closed form as one
    (B, B) x (B, D) product, instead of autograd through ~25 elementwise (B, B) nodes.

    With h = SmoothL1' of the distance gap (clamp(psi_s - psi_t, -1, 1)), S = sum h psi_s and
    P = B(B - 1): dL_dist/dd_ij = (h_ij - S/P) / (mu B^2) (no S term without normalising or when
    mu is clamped), and through d = sqrt(s), s = q_i + q_j - 2 G_ij the gradient is the graph
    Laplacian form 4 sum_j W_ij (x_i - x_j), W = dL/ds (0 on the diagonal and clamped pairs).
    With a = clamp(cos_s - cos_t, -1, 1) / B^2: dL_angle/dx_i = 2 sum_j a_ij x_j / (n_i n_j)
    - 2 (sum_j a_ij cos_ij) x_i / n_i^2 (the last term only where n_i was not clamped).
    """

    @staticmethod
    def forward(ctx, student, teacher, normalize):
        rows = len(student)
        psi_s, cos_s, (mean, inverse_norms, norm_unclamped, clamped) = _relations(student, normalize)
        psi_t, cos_t, _ = _relations(teacher, normalize, for_gradient=False)
        distance, slope = _smooth_l1_and_slope(psi_s, psi_t)
        angle, gap = _smooth_l1_and_slope(cos_s, cos_t)
        # Distance weights W (up to the scalar saved below), in place in the slope's buffer.
        mu = mean.clamp(min=_EPS) if normalize else torch.ones_like(mean)
        if normalize:
            pairs = max(rows * (rows - 1), 1)
            slope.sub_(torch.dot(slope.view(-1), psi_s.view(-1)) * (mean >= _EPS) / pairs)
        weights = slope.div_(psi_s).masked_fill_(clamped, 0.0).fill_diagonal_(0.0)  # (h - S/P) / psi
        # Angle weights a_ij / (n_i n_j) and the diagonal term sum_j a_ij cos_ij / n_i^2.
        diagonal_angle = torch.mul(gap, cos_s, out=cos_s).sum(dim=1) * inverse_norms.square() * norm_unclamped
        angle_weights = gap.mul_(inverse_norms[:, None]).mul_(inverse_norms[None, :])
        ctx.save_for_backward(student, weights, weights.sum(dim=1), angle_weights, diagonal_angle, mu)
        return distance, angle

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_distance, grad_angle):
        student, weights, weight_sums, angle_weights, diagonal_angle, mu = ctx.saved_tensors
        rows = len(student)
        # d = psi mu, so dL/ds = (h - S/P) / (mu B^2) * 1 / (2 psi mu); the Laplacian brings a 4.
        # Both parts act on the uncentred rows: the angle part needs x itself (x_c + m would
        # cancel 1/n-sized terms for rows near 0), and the Laplacian annihilates the mean anyway.
        alpha = grad_distance * 2.0 / (mu * mu * rows * rows)
        beta = grad_angle * 2.0 / (rows * rows)
        matrix = torch.mul(angle_weights, beta).sub_(weights * alpha)
        diagonal = weight_sums * alpha - diagonal_angle * beta
        return torch.addmm(diagonal[:, None] * student, matrix, student), None, None


def rkd_pairwise(
    student: torch.Tensor, teacher: torch.Tensor, normalize: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_dist, L_angle) = (`rkd_distance(student, teacher, normalize)`,
    `rkd_angle_pairwise(student, teacher)`) computed together from one Gram matrix per side.

    student: (B, *s), teacher: (B, *t), flattened per row; the teacher gets no gradient.
    Time: three (B, D) x (D, B)-sized products (two forward, one backward) and O(B^2) in-place
    elementwise work; memory held for backward: two (B, B) float32 matrices.
    Returns two float32 scalars (float64 for float64 inputs).  Source: Park et al. 2019 (distance-wise
    loss; see the angle below).
    """
    return _PairwiseRKD.apply(
        at_least_float32(student).flatten(1), at_least_float32(teacher.detach()).flatten(1), normalize
    )


def rkd_distance(student: torch.Tensor, teacher: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """L_dist = (1/B^2) sum_{i != j} SmoothL1(psi_D(s_i, s_j), psi_D(t_i, t_j)), SmoothL1 with beta 1.

    psi_D(x_i, x_j) = ||x_i - x_j|| / mu, mu = mean over pairs i != j of ||x_i - x_j|| (Park et al.
    2019; `normalize=False` compares raw distances). student: (B, *s), teacher: (B, *t); the
    feature sizes may differ. Returns a float32 scalar (see `rkd_pairwise`, which computes it).
    Source: Park et al. 2019, the distance-wise loss (psi_D, mu).
    """
    return rkd_pairwise(student, teacher, normalize)[0]


def rkd_angle_pairwise(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """L_angle = (1/B^2) sum_{i,j} SmoothL1(cos theta_S^ij, cos theta_T^ij),
    cos theta^ij = f_i.f_j / (||f_i|| ||f_j||) (not centred).

    student: (B, *s), teacher: (B, *t). Returns a float32 scalar (see `rkd_pairwise`).
    Source: a cheaper O(B^2) form of Park et al. 2019's angle-wise loss (the angle at the origin
    instead of at a third row; not in the paper).
    """
    return rkd_pairwise(student, teacher)[1]


def _triplet_parts(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(G, U, A), each (B, B): the centred Gram matrix, U_ij = 1/||x_i - x_j|| (0 for j = i or a
    duplicate row) and A_ij = G_ij - G_ii / 2, so that for the angle at vertex i
    cos(j, i, k) = U_ij U_ik (G_jk - A_ij - A_ik)  (= (x_j - x_i).(x_k - x_i) / (d_ij d_ik))."""
    gram = _centred_gram(features)
    dist = _distances_from_gram(gram)
    inverse = torch.where(dist > _EPS, 1.0 / dist.clamp(min=_EPS), 0.0)
    return gram, inverse, gram - gram.diagonal()[:, None] / 2


def _chunk_cosines(gram, inverse, half, start, stop):
    """(A, B, B) cos(j, i, k) for anchors i in [start, stop), with the (A, B, B) G_jk - A_ij - A_ik
    and the (A, B) rows of U it was made from."""
    u, a = inverse[start:stop], half[start:stop]
    inner = gram.unsqueeze(0) - a[:, :, None]
    inner -= a[:, None, :]
    cosines = inner * u[:, :, None]
    cosines *= u[:, None, :]
    return cosines, inner, u


class _TripletAngleSum(torch.autograd.Function):
    """sum_{i,j,k} SmoothL1(cos_S(j,i,k) - cos_T(j,i,k)), beta 1, one chunk of anchors at a time.

    Saves only the (B, B) inputs and recomputes each chunk in backward, so neither pass holds
    the B^3 cosines. Gradients flow to the student's (G, U, A), never the teacher's.
    """

    @staticmethod
    def forward(ctx, gram_s, inverse_s, half_s, gram_t, inverse_t, half_t, chunk):
        total = gram_s.new_zeros(())
        for start in range(0, len(gram_s), chunk):
            stop = start + chunk
            cos_s = _chunk_cosines(gram_s, inverse_s, half_s, start, stop)[0]
            cos_t = _chunk_cosines(gram_t, inverse_t, half_t, start, stop)[0]
            total += F.smooth_l1_loss(cos_s, cos_t, reduction="sum", beta=1.0)
        ctx.save_for_backward(gram_s, inverse_s, half_s, gram_t, inverse_t, half_t)
        ctx.chunk = chunk
        return total

    @staticmethod
    def backward(ctx, grad_total):
        gram_s, inverse_s, half_s, gram_t, inverse_t, half_t = ctx.saved_tensors
        grad_gram, grad_inverse, grad_half = (torch.zeros_like(gram_s) for _ in range(3))
        for start in range(0, len(gram_s), ctx.chunk):
            stop = start + ctx.chunk
            slope, inner, u = _chunk_cosines(gram_s, inverse_s, half_s, start, stop)
            slope -= _chunk_cosines(gram_t, inverse_t, half_t, start, stop)[0]
            slope.clamp_(-1.0, 1.0)  # SmoothL1' (beta 1); symmetric in j, k
            column = u.unsqueeze(2)  # (A, B, 1)
            # d/dA_ij = -2 U_ij sum_k slope_ijk U_ik ; d/dU_ij = 2 sum_k slope_ijk inner_ijk U_ik
            grad_half[start:stop] = -2.0 * u * torch.bmm(slope, column).squeeze(2)
            grad_inverse[start:stop] = 2.0 * torch.bmm(inner.mul_(slope), column).squeeze(2)
            # d/dG_jk = sum_i slope_ijk U_ij U_ik
            grad_gram += slope.mul_(column).mul_(u.unsqueeze(1)).sum(dim=0)
        return (
            grad_gram * grad_total,
            grad_inverse * grad_total,
            grad_half * grad_total,
            None,
            None,
            None,
            None,
        )


def rkd_angle_triplet(
    student: torch.Tensor, teacher: torch.Tensor, anchors_per_chunk: int | None = None
) -> torch.Tensor:
    """L_angle = (1/B^3) sum_{i,j,k} SmoothL1(psi_A(s_i, s_j, s_k), psi_A(t_i, t_j, t_k)),
    psi_A = cos angle x_j x_i x_k = (x_i - x_j).(x_i - x_k) / (||x_i - x_j|| ||x_i - x_k||),
    taken as 0 when j = i or k = i (as the RKD reference code).

    student: (B, *s), teacher: (B, *t). Time O(B^3), memory O(B^2 + anchors_per_chunk B^2) in
    forward and backward (default chunk: about 1M values). Returns a float32 scalar.
    Source: Park et al. 2019, the angle-wise loss (psi_A).
    """
    rows = student.shape[0]
    chunk = anchors_per_chunk or max(1, _ELEMENTS_PER_CHUNK // (rows * rows))
    with torch.no_grad():
        teacher_parts = _triplet_parts(teacher.detach())
    total = _TripletAngleSum.apply(*_triplet_parts(student), *teacher_parts, chunk)
    return total / rows**3


class RKDParams(TapTermParams):
    """Relational KD: distance_weight * L_dist + angle_weight * L_angle (Park et al. 2019)."""

    kind: Literal["rkd"] = "rkd"
    whole_batch: ClassVar[bool] = True  # relates the batch's rows to each other (docs/training.md)
    distance_weight: float = Field(25.0, description="w_dist (25: RepDistiller's default)")
    angle_weight: float = Field(50.0, description="w_angle (50: RepDistiller's default)")
    angle: Literal["triplet", "pairwise"] = Field(
        "triplet",
        description="triplet: angle j-i-k (Park et al. 2019); pairwise: cos(f_i, f_j), a cheaper variant",
    )
    normalize_distance: bool = Field(True, description="divide distances by their mean (Park et al.'s mu)")

    def sub_weights(self, epoch: int) -> dict[str, float]:
        return {"distance": self.distance_weight, "angle": self.angle_weight}


class RKDLoss(nn.Module):
    """rkd: distance = L_dist, angle = L_angle (triplet or pairwise form), each averaged over taps;
    student and teacher spaces may differ (relations need no projection).
    Sub-terms: distance, angle.  Source: Park et al. 2019, "Relational Knowledge Distillation"
    (arXiv:1904.05068); weights 25 and 50 as in RepDistiller, the code of Tian et al. 2020 (CRD)."""

    def __init__(self, params: RKDParams, shapes: TapShapes):
        super().__init__()
        self.params = params
        self.pairs = params.pairs()
        self.per_token = check_pairs(self.pairs, shapes)  # such taps are pooled per row first

    def forward(self, inputs: LossInputs) -> dict[str, torch.Tensor]:
        distance, angle = [], []
        for pair, per_token in zip(self.pairs, self.per_token):
            student, teacher = read_row_taps(inputs, pair, per_token)
            pair_distance, pair_angle = rkd_pairwise(student, teacher, self.params.normalize_distance)
            distance.append(pair_distance)
            angle.append(
                rkd_angle_triplet(student, teacher) if self.params.angle == "triplet" else pair_angle
            )
        return {"distance": sum(distance) / len(distance), "angle": sum(angle) / len(angle)}
