"""Hinton knowledge distillation: T^2 * KL(p_t^T || p_s^T) (or its soft cross-entropy form),
optionally mixed with the hard-label cross-entropy, from dense logits or the cache's top-k form.

Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network" (arXiv:1503.02531), §2,
take a weighted average of the soft and the hard loss. Implementations differ on which one alpha
weighs (L = a*hard + (1-a)*T^2*soft, or a*T^2*soft + (1-a)*hard). The params name each weight
(`hard_weight`, `soft_weight`); `alpha` is accepted only together with `alpha_weights: hard|soft`,
which says which convention is meant.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from pipeline.cache.batch import SparseLogits
from pipeline.errors import DistilleryError
from pipeline.losses._contract import LossInputs, TapShapes, TermParams
from pipeline.losses._probs import (
    as_float32,
    hard_ce_rows,
    kl_batch_mean,
    kl_rows,
    labelled,
    log_softmax_at,
    masked_mean,
    soft_ce_batch_mean,
)


class MissingSparseLogitsError(DistilleryError, ValueError):
    """`teacher_source: sparse` was asked for but the batch carries no top-k teacher logits."""


def soft_targets(teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """(B, C) raw logits -> (B, C) p^T = softmax(z / T), float32.  Source: Hinton et al. 2015 §2."""
    return log_softmax_at(teacher_logits, temperature).exp()


def distillation_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """T^2 * (1/B) sum_i KL(softmax(z_t,i/T) || softmax(z_s,i/T)) ("batchmean").

    student_logits, teacher_logits: (B, C) raw logits. Returns a float32 scalar.
    Its gradient w.r.t. z_s,i is T (p_s^T - p_t^T) / B: the T^2 restores the gradient scale that
    the 1/T of the softmax takes away (Hinton et al. 2015 §2 and §2.1).
    Source: Hinton et al. 2015 §2.
    """
    teacher = log_softmax_at(teacher_logits.detach(), temperature)
    student = log_softmax_at(student_logits, temperature)
    return kl_batch_mean(teacher, student, scale=temperature**2)


def distillation_soft_ce(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """T^2 * (1/B) sum_i H(p_t,i^T, p_s,i^T), H(p, q) = -sum_c p_c log q_c.

    Equals `distillation_kl` + T^2 * H(p_t^T) (a constant in the student): same gradient.
    Shapes as `distillation_kl`.  Source: Hinton et al. 2015 §2 (the cross-entropy form they write).
    """
    teacher = log_softmax_at(teacher_logits.detach(), temperature)
    student = log_softmax_at(student_logits, temperature)
    return soft_ce_batch_mean(teacher, student, scale=temperature**2)


def sparse_teacher_log_probs(sparse: SparseLogits, num_classes: int, temperature: float) -> torch.Tensor:
    """Teacher log-probabilities on the stored top-k support plus one tail bucket: (B, K+1).

    sparse.values/indices: (B, K); sparse.logsumexp: (B,) of the full row at T = 1.
    At T = 1 this is exact: log p(k) = v_k - lse and the tail bucket holds 1 - sum_k p(k).
    At T != 1 the tail's logits are unknown; each of the C-K tail classes is given the same
    logit lse + log(tail mass / (C-K)) (the maximum-entropy tail, below every stored logit), which
    is exact at T = 1 and an approximation elsewhere. With K = C there is no tail bucket.
    Top-k teacher caches and their bias: Anshumann et al. 2025, "Sparse Logit Sampling: Accelerating
    Knowledge Distillation in LLMs" (arXiv:2503.16870); docs/cache_format.md.
    """
    values = as_float32(sparse.values)
    logsumexp = as_float32(sparse.logsumexp)
    tail_count = num_classes - values.shape[1]
    if tail_count == 0:
        return torch.log_softmax(values / temperature, dim=-1)
    tail_mass = (1.0 - (values - logsumexp[:, None]).exp().sum(dim=1)).clamp(min=0.0)
    tail_logit = logsumexp + tail_mass.log() - math.log(tail_count)
    # tail_count classes, each exp(tail_logit / T): one bucket of log-mass tail_logit/T + log(C-K).
    buckets = torch.cat([values / temperature, (tail_logit / temperature + math.log(tail_count))[:, None]], 1)
    return torch.log_softmax(buckets, dim=-1)


def student_bucket_log_probs(
    student_logits: torch.Tensor, indices: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Student log p_s^T on the teacher's support (B, K) plus the exact log tail mass: (B, K+1)
    (or (B, K) when K = C).  student_logits: (B, C); indices: (B, K) int64."""
    log_probs = log_softmax_at(student_logits, temperature)
    support = log_probs.gather(1, indices)
    if indices.shape[1] == log_probs.shape[1]:
        return support
    tail = log_probs.scatter(1, indices, float("-inf")).logsumexp(dim=1, keepdim=True)
    return torch.cat([support, tail], dim=1)


def sparse_distillation_kl(
    student_logits: torch.Tensor, sparse: SparseLogits, temperature: float
) -> torch.Tensor:
    """T^2 * (1/B) sum_i KL over the K+1 buckets (top-k support + tail) of teacher and student.

    Exact for T = 1 on the stored support with the tail as one bucket; see
    `sparse_teacher_log_probs` for T != 1.  Source: Hinton et al. 2015 on the cache's top-k form.
    """
    teacher = sparse_teacher_log_probs(sparse, student_logits.shape[1], temperature).detach()
    student = student_bucket_log_probs(student_logits, sparse.indices, temperature)
    return temperature**2 * kl_rows(teacher, student).mean()


class HintonParams(TermParams):
    """Hinton KD: soft_weight * T^2 KL(p_t^T || p_s^T) + hard_weight * CE (Hinton et al. 2015)."""

    kind: Literal["hinton"] = "hinton"
    temperature: float = Field(4.0, gt=0, description="softmax temperature T")
    form: Literal["kl", "soft_ce"] = Field(
        "kl", description="kl: T^2 KL(p_t||p_s); soft_ce: T^2 H(p_t, p_s) as Hinton et al., same gradient"
    )
    soft_weight: float | None = Field(None, description="factor of the soft term (default 1)")
    hard_weight: float | None = Field(
        None, description="factor of the hard-label CE mixed in (default 0: keep CE its own term)"
    )
    alpha: float | None = Field(None, ge=0, le=1, description="convenience; needs alpha_weights")
    alpha_weights: Literal["hard", "soft"] | None = Field(
        None, description="hard: a*hard + (1-a)*soft; soft: a*soft + (1-a)*hard (both are in use)"
    )
    teacher_source: Literal["dense", "sparse", "auto"] = Field(
        "dense",
        description="dense: the full logits (exact); sparse: KL on the cache's top-k + tail "
        "bucket; auto: sparse when the batch carries it",
    )

    @model_validator(mode="after")
    def _alpha_or_weights(self):
        if self.alpha is None and self.alpha_weights is not None:
            raise ValueError("alpha_weights is given without alpha")
        if self.alpha is not None:
            if self.alpha_weights is None:
                raise ValueError(
                    "alpha needs alpha_weights: 'hard' (alpha weighs the hard CE: a*hard + (1-a)*soft) "
                    "or 'soft' (alpha weighs the KD term: a*soft + (1-a)*hard)"
                )
            if self.soft_weight is not None or self.hard_weight is not None:
                raise ValueError("give alpha (+ alpha_weights) or hard_weight/soft_weight, not both")
        return self

    def resolved_weights(self) -> tuple[float, float]:
        """(hard_weight, soft_weight) after applying the alpha convention."""
        if self.alpha is not None:
            a = self.alpha
            return (a, 1.0 - a) if self.alpha_weights == "hard" else (1.0 - a, a)
        hard = 0.0 if self.hard_weight is None else self.hard_weight
        soft = 1.0 if self.soft_weight is None else self.soft_weight
        return hard, soft

    def sub_weights(self, epoch: int) -> dict[str, float]:
        hard, soft = self.resolved_weights()
        return {"soft": soft, "hard": hard} if hard else {"soft": soft}


class HintonLoss(nn.Module):
    """hinton: soft = T^2 (1/B) sum_i KL(softmax(z_t/T) || softmax(z_s/T)) (or T^2 H(p_t, p_s));
    hard = CE(y, softmax(z_s)) over labelled rows, present when its weight is not 0.
    Sub-terms: soft[, hard].  Source: Hinton et al. 2015, "Distilling the Knowledge in a Neural
    Network" (arXiv:1503.02531), §2."""

    def __init__(self, params: HintonParams, shapes: TapShapes):
        super().__init__()
        self.params = params
        self.with_hard = params.resolved_weights()[0] != 0

    def forward(self, inputs: LossInputs) -> dict[str, torch.Tensor]:
        p, temperature = self.params, self.params.temperature
        use_sparse = p.teacher_source == "sparse" or (
            p.teacher_source == "auto" and inputs.teacher_sparse is not None
        )
        if use_sparse and inputs.teacher_sparse is None:
            raise MissingSparseLogitsError(
                "hinton with teacher_source: sparse needs a cache with top-k logits; "
                "store them in the cache stage or use teacher_source: dense"
            )
        if use_sparse:
            soft = sparse_distillation_kl(inputs.student_logits, inputs.teacher_sparse, temperature)
        elif p.form == "kl":
            soft = distillation_kl(inputs.student_logits, inputs.teacher_logits, temperature)
        else:
            soft = distillation_soft_ce(inputs.student_logits, inputs.teacher_logits, temperature)
        terms = {"soft": soft}
        if self.with_hard:
            terms["hard"] = masked_mean(
                hard_ce_rows(inputs.student_logits, inputs.labels), labelled(inputs.labels)
            )
        return terms
