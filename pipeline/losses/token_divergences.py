"""Per-token divergences between the teacher's and the student's next-token distributions, on dense
log-probabilities and on the top-k form's k + 1 buckets (docs/token_distillation.md).

Every function takes (N, V) log-probabilities (the teacher's without gradient) and returns (N,)
float32 values in nats; `token_kd.py` scales, masks and averages them. p is the teacher, q the
student, both softmax(z / T):

    forward_kl   KL(p || q) = sum_v p_v (log p_v - log q_v)          (mean-seeking; Hinton et al.)
    reverse_kl   KL(q || p) = sum_v q_v (log q_v - log p_v)          (mode-seeking)
    jsd          JSD_beta = beta KL(p || m) + (1 - beta) KL(q || m), m = beta p + (1 - beta) q
                 (beta = 0.5: the Jensen-Shannon divergence; Agarwal et al. 2024, "On-Policy
                 Distillation of Language Models: Learning from Self-Generated Mistakes",
                 arXiv:2306.13649, eq. for JSD(beta); JSD_beta / beta -> forward KL as beta -> 0
                 and JSD_beta / (1 - beta) -> reverse KL as beta -> 1)
    tvd          TVD = (1/2) sum_v |p_v - q_v|

All four are f-divergences, so on the top-k form's buckets (the k ids + one tail bucket) each is a
lower bound of its dense value (data-processing inequality); for the forward KL the gap is exactly
tail_p x KL(p's tail shape || q's tail shape).
"""

from __future__ import annotations

import math

import torch

from pipeline.cache.token_batch import TopKTokens
from pipeline.losses._probs import as_float32, kl_rows
from pipeline.losses.hinton import student_bucket_log_probs

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "tvd")

TEMPERATURE_POWER = {"forward_kl": 2, "reverse_kl": 2, "jsd": 2, "tvd": 1}
"""Each divergence is multiplied by T to this power, so its gradient w.r.t. the student logits keeps
its size as T grows: a KL-type gradient shrinks as 1/T^2 (Hinton's T^2), a TVD gradient as 1/T."""


def forward_kl_tokens(teacher_log_probs: torch.Tensor, student_log_probs: torch.Tensor) -> torch.Tensor:
    """(N, V), (N, V) -> (N,) KL(p || q); ids with p = 0 add exactly 0."""
    return kl_rows(teacher_log_probs, student_log_probs)


def reverse_kl_tokens(teacher_log_probs: torch.Tensor, student_log_probs: torch.Tensor) -> torch.Tensor:
    """(N, V), (N, V) -> (N,) KL(q || p); +inf where q > 0 on an id with p = 0."""
    return kl_rows(student_log_probs, teacher_log_probs)


def generalized_jsd_tokens(
    teacher_log_probs: torch.Tensor, student_log_probs: torch.Tensor, beta: float = 0.5
) -> torch.Tensor:
    """(N, V), (N, V) -> (N,) beta KL(p || m) + (1 - beta) KL(q || m), m = beta p + (1 - beta) q,
    0 < beta < 1; at most h(beta) = -beta log beta - (1-beta) log(1-beta) (log 2 at beta = 0.5).
    Source: Agarwal et al. 2024 (arXiv:2306.13649), JSD(beta)."""
    mixture = torch.logaddexp(teacher_log_probs + math.log(beta), student_log_probs + math.log1p(-beta))
    return beta * kl_rows(teacher_log_probs, mixture) + (1.0 - beta) * kl_rows(student_log_probs, mixture)


def tvd_tokens(teacher_log_probs: torch.Tensor, student_log_probs: torch.Tensor) -> torch.Tensor:
    """(N, V), (N, V) -> (N,) (1/2) sum_v |p_v - q_v|, in [0, 1]."""
    return 0.5 * (teacher_log_probs.exp() - student_log_probs.exp()).abs().sum(dim=-1)


def divergence_tokens(
    divergence: str, teacher_log_probs: torch.Tensor, student_log_probs: torch.Tensor, beta: float = 0.5
) -> torch.Tensor:
    """(N,) `divergence` (one of DIVERGENCES) between matching (N, V) log-probabilities."""
    if divergence == "forward_kl":
        return forward_kl_tokens(teacher_log_probs, student_log_probs)
    if divergence == "reverse_kl":
        return reverse_kl_tokens(teacher_log_probs, student_log_probs)
    if divergence == "jsd":
        return generalized_jsd_tokens(teacher_log_probs, student_log_probs, beta)
    return tvd_tokens(teacher_log_probs, student_log_probs)


def dense_token_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    divergence: str,
    temperature: float = 1.0,
    beta: float = 0.5,
) -> torch.Tensor:
    """(N, V) student logits, (N, V) dense teacher logits -> (N,) unscaled divergence at T, float32."""
    teacher = torch.log_softmax(as_float32(teacher_logits.detach()) / temperature, dim=-1)
    student = torch.log_softmax(as_float32(student_logits) / temperature, dim=-1)
    return divergence_tokens(divergence, teacher, student, beta)


def top_k_teacher_bucket_log_probs(top_k: TopKTokens, temperature: float) -> torch.Tensor:
    """(N, k + 1) teacher log-probs on the k stored ids plus one tail bucket at temperature T
    ((N, k) when k = V).

    At the form's own temperature this is the stored head and exact tail mass. At another T the
    head logits are known (z = T_k (log p + logsumexp)) but the tail's shape is not: every tail id is
    given the same logit (the maximum-entropy tail, exact at T_k), an approximation elsewhere.
    """
    head_logits = (top_k.log_probs + top_k.log_normalizer[:, None]) * (top_k.temperature / temperature)
    tail_count = top_k.vocab_size - top_k.ids.shape[1]
    if tail_count == 0:
        return torch.log_softmax(head_logits, dim=-1)
    tail_logit = top_k.log_normalizer + top_k.log_tail_mass - math.log(tail_count)
    tail_bucket = tail_logit * (top_k.temperature / temperature) + math.log(tail_count)
    return torch.log_softmax(torch.cat([head_logits, tail_bucket[:, None]], dim=1), dim=-1)


def top_k_token_divergence(
    student_logits: torch.Tensor,
    top_k: TopKTokens,
    divergence: str,
    temperature: float = 1.0,
    beta: float = 0.5,
) -> torch.Tensor:
    """(N, V) student logits, top-k targets with leading axis N -> (N,) divergence between the
    teacher's and the student's k + 1 buckets at T (a lower bound of the dense value; see module)."""
    teacher = top_k_teacher_bucket_log_probs(top_k, temperature).detach()
    student = student_bucket_log_probs(as_float32(student_logits), top_k.ids, temperature)
    return divergence_tokens(divergence, teacher, student, beta)
