"""Token-level distillation of a language model: a divergence between the teacher's and the
student's next-token distributions, averaged over the real tokens of a batch, from dense teacher
logits, sampled targets or top-k targets (docs/token_distillation.md).

What works with what:

| divergence | dense | sampled (ids + counts) | top_k (+ tail bucket) |
| --- | --- | --- | --- |
| forward_kl | exact | unbiased estimate, unbiased gradient | k + 1 buckets: biased low |
| reverse_kl, jsd, tvd | exact | refused | k + 1 buckets: biased low |

Reverse KL, JSD and TVD weigh the teacher's probability at every id the student puts mass on. A
sampled cache knows p only at the teacher's own draws: reweighting those by q / p is unbiased in
principle but its variance grows without bound exactly where the student overweights an id the
teacher rarely draws, which is where these divergences push hardest, so the combination is refused.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from pipeline.cache.token_batch import SampledTokens, TopKTokens
from pipeline.errors import DistilleryError
from pipeline.losses._contract import LossInputs, TapShapes, TermParams
from pipeline.losses._probs import masked_mean
from pipeline.losses.token_divergences import (
    DIVERGENCES,
    TEMPERATURE_POWER,
    dense_token_divergence,
    top_k_token_divergence,
)
from pipeline.losses.token_sampled import sampled_forward_kl_tokens

WORKS_WITH = {
    "forward_kl": ("dense", "sampled", "top_k"),
    "reverse_kl": ("dense", "top_k"),
    "jsd": ("dense", "top_k"),
    "tvd": ("dense", "top_k"),
}


class TokenTargetsError(DistilleryError, ValueError):
    """The teacher targets cannot serve this token loss (missing, the wrong form, or misaligned)."""


class VocabularyMismatchError(DistilleryError, ValueError):
    """Teacher and student vocabularies differ in size (mapping between vocabularies is out of scope)."""


def sampled_refusal(divergence: str) -> str:
    """The one-line reason a sampled cache cannot serve `divergence`, naming what works."""
    return (
        f"token_kd: divergence {divergence} needs the teacher's probability at every id the student "
        "puts mass on, and a sampled cache holds it only at the teacher's own draws; use divergence: "
        "forward_kl with the sampled cache, or teacher_source: dense or top_k for "
        f"{divergence} (top_k: on k + 1 buckets, a lower bound)"
    )


def _flat_student(student_logits: torch.Tensor, token_mask: torch.Tensor | None):
    if student_logits.dim() < 2:
        raise TokenTargetsError(f"student logits must be (..., V); got shape {tuple(student_logits.shape)}")
    leading = tuple(student_logits.shape[:-1])
    if token_mask is None:
        mask = torch.ones(leading, dtype=torch.bool, device=student_logits.device)
    elif tuple(token_mask.shape) != leading:
        raise TokenTargetsError(
            f"token_mask has shape {tuple(token_mask.shape)}; the student's tokens are {leading}"
        )
    else:
        mask = token_mask.bool()
    return student_logits.reshape(-1, student_logits.shape[-1]), mask.reshape(-1), leading


def _check_vocabulary(teacher_vocab: int, student_vocab: int) -> None:
    if teacher_vocab != student_vocab:
        raise VocabularyMismatchError(
            f"the teacher's vocabulary has {teacher_vocab} tokens and the student's {student_vocab}; "
            "token distillation needs one tokenizer for both (mapping between vocabularies is out of scope)"
        )


def _check_leading(name: str, shape: tuple[int, ...], leading: tuple[int, ...]) -> None:
    if shape != leading:
        raise TokenTargetsError(f"{name} cover tokens {shape}; the student's logits cover {leading}")


def token_divergence(
    student_logits: torch.Tensor,
    teacher: torch.Tensor | SampledTokens | TopKTokens,
    divergence: str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    importance: str = "exact",
    token_mask: torch.Tensor | None = None,
    estimator: str = "counts",
) -> torch.Tensor:
    """T^p (1/|M|) sum over real tokens of divergence(p_T, q_T): a float32 scalar (0, on the graph,
    when no token is real).

    student_logits: (..., V) raw logits, (N, V) or (B, L, V). teacher: dense (..., V) raw logits, or
    SampledTokens / TopKTokens with the same leading axes. token_mask: (...) bool, True on real
    tokens (None: all). p = 2 for the KL-type divergences, 1 for TVD (TEMPERATURE_POWER).
    """
    if divergence not in DIVERGENCES:
        raise TokenTargetsError(f"unknown divergence {divergence!r}; choose one of {', '.join(DIVERGENCES)}")
    student, mask, leading = _flat_student(student_logits, token_mask)
    vocab = student.shape[-1]
    if isinstance(teacher, SampledTokens):
        if divergence != "forward_kl":
            raise TokenTargetsError(sampled_refusal(divergence))
        _check_vocabulary(teacher.vocab_size, vocab)
        _check_leading("the sampled targets", tuple(teacher.ids.shape[:-1]), leading)
        per_token = sampled_forward_kl_tokens(
            student, teacher.reshape(-1), temperature, importance, estimator
        )
    elif isinstance(teacher, TopKTokens):
        _check_vocabulary(teacher.vocab_size, vocab)
        _check_leading("the top-k targets", tuple(teacher.ids.shape[:-1]), leading)
        per_token = top_k_token_divergence(student, teacher.reshape(-1), divergence, temperature, beta)
    else:
        _check_vocabulary(teacher.shape[-1], vocab)
        _check_leading("the teacher's logits", tuple(teacher.shape[:-1]), leading)
        per_token = dense_token_divergence(student, teacher.reshape(-1, vocab), divergence, temperature, beta)
    return temperature ** TEMPERATURE_POWER[divergence] * masked_mean(per_token, mask)


class TokenKDParams(TermParams):
    """Token-level KD: T^p x mean over real tokens of a divergence of next-token distributions."""

    kind: Literal["token_kd"] = "token_kd"
    divergence: Literal["forward_kl", "reverse_kl", "jsd", "tvd"] = Field(
        "forward_kl", description="KL(p||q), KL(q||p), JSD_beta(p, q) or TVD; p teacher, q student"
    )
    beta: float = Field(0.5, gt=0, lt=1, description="jsd: m = beta p + (1-beta) q; 0.5 is the JSD")
    temperature: float = Field(1.0, gt=0, description="T of both softmaxes (values scaled by T^2, TVD by T)")
    teacher_source: Literal["dense", "sampled", "top_k", "auto"] = Field(
        "auto",
        description="dense: full logits (exact); sampled: ids + counts (forward_kl only); top_k: k + 1 "
        "buckets; auto: the batch's token targets when it carries them, else dense",
    )
    importance: Literal["exact", "self_normalized"] = Field(
        "exact",
        description="sampled at T != the sampling T: exact needs the stored normaliser at T; "
        "self_normalized estimates it (biased by O(1/draws))",
    )

    estimator: Literal["counts", "inclusion"] = Field(
        "counts",
        description="sampled: weigh a drawn id by c/D (counts) or by p/(1-(1-p)^D) (inclusion: "
        "Horvitz-Thompson, exact on ids the teacher is sure of); both unbiased",
    )

    @model_validator(mode="after")
    def _source_serves_divergence(self):
        if self.teacher_source == "sampled" and self.divergence != "forward_kl":
            raise ValueError(sampled_refusal(self.divergence))
        return self

    def sub_weights(self, epoch: int) -> dict[str, float]:
        return {self.divergence: 1.0}


class TokenKDLoss(nn.Module):
    """token_kd: T^p (1/|M|) sum over real tokens t of D(p_t^T, q_t^T), D = forward_kl | reverse_kl |
    jsd (beta) | tvd, p = 2 (TVD: 1), M the real tokens (token_mask). Teacher forms: dense logits
    (every D, exact); sampled ids + counts (forward_kl only, the unbiased estimate
    sum_j (c_j/D) w_j (log p_T(j) - log q_T(j)); reverse_kl, jsd, tvd are refused: they need p
    wherever q has mass); top-k (every D on k + 1 buckets, a lower bound of the dense value).
    Sub-terms: the divergence's name.  Source: Anshumann et al. 2025 (arXiv:2503.16870) for the
    sampled estimator; Agarwal et al. 2024 (arXiv:2306.13649) for JSD(beta); Hinton et al. 2015,
    Distilling the Knowledge in a Neural Network (arXiv:1503.02531) for KL at T scaled by T^2.
    """

    def __init__(self, params: TokenKDParams, shapes: TapShapes):
        super().__init__()
        self.params = params

    def forward(self, inputs: LossInputs) -> dict[str, torch.Tensor]:
        p = self.params
        tokens = inputs.teacher_tokens
        if p.teacher_source in ("sampled", "top_k"):
            form = SampledTokens if p.teacher_source == "sampled" else TopKTokens
            if not isinstance(tokens, form):
                raise TokenTargetsError(
                    f"token_kd with teacher_source: {p.teacher_source} needs a batch with "
                    f"{p.teacher_source} token targets; it carries {type(tokens).__name__}: cache that form, "
                    "or use teacher_source: auto or dense"
                )
        teacher = inputs.teacher_logits if p.teacher_source == "dense" or tokens is None else tokens
        value = token_divergence(
            inputs.student_logits,
            teacher,
            p.divergence,
            p.temperature,
            p.beta,
            p.importance,
            inputs.token_mask,
            p.estimator,
        )
        return {p.divergence: value}
