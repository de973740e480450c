"""The forward KL estimated from sampled teacher targets (Random-Sampling KD; Anshumann et al.,
ACL 2025, "Sparse Logit Sampling: Accelerating Knowledge Distillation in LLMs", arXiv:2503.16870).

A token's targets are D i.i.d. draws x_1..x_D from p_{T_s} = softmax(z / T_s), kept as distinct
ids j with counts c_j. For a student q_T = softmax(s / T):

    at T = T_s:  KL_hat = sum_j (c_j / D) (log p_{T_s}(j) - log q_T(j))
    at T != T_s: KL_hat = sum_j (c_j / D) w_j (log p_T(j) - log q_T(j)),  w_j = p_T(j) / p_{T_s}(j)

E[c_j / D] = p_{T_s}(j), so E[KL_hat] = KL(p_T || q_T) and, the weights not depending on the
student, E[grad_s KL_hat] = grad_s KL: the estimate and its gradient are unbiased (the paper's
importance-sampling argument with the teacher as proposal). The entropy term sum (c_j/D) w_j log p_T(j)
does not depend on the student; it makes the value a KL (0 when q = p in expectation).

log p_T(j) = (T_s / T)(log p_{T_s}(j) + logsumexp(z / T_s)) - logsumexp(z / T) needs the row's
normaliser at T. With it stored (`normalizer_temperatures`) the weights are exact: `importance:
exact`. Without it, `importance: self_normalized` estimates logsumexp(z / T) from the same draws
(log of (1/D) sum_j c_j exp(z_j / T) / p_{T_s}(j)): the weights then sum to 1 per token and the
estimate is consistent, with a bias of order 1/D.
"""

from __future__ import annotations

import math

import torch

from pipeline.cache.token_batch import SampledTokens
from pipeline.errors import DistilleryError
from pipeline.losses._probs import as_float32

IMPORTANCE = ("exact", "self_normalized")

ESTIMATORS = ("counts", "inclusion")
"""How a drawn id's share of the draws is weighed: `counts`, c_j / D (the paper's); `inclusion`, the
Horvitz-Thompson weight p_{T_s}(j) / pi_j, pi_j = 1 - (1 - p_{T_s}(j))^D the chance that j is drawn
at least once. Both are unbiased: E[c_j / D] = p(j) and E[1{j drawn} p(j) / pi_j] = p(j). The
inclusion weight uses the stored log-prob instead of the count, so an id the teacher is sure of
(pi_j ~ 1) gets its exact p(j) and the sampling noise stays in the tail: a lower-variance target."""


class SampledTemperatureError(DistilleryError, ValueError):
    """A student temperature or estimator the sampled targets cannot serve: no normaliser stored for
    that temperature (exact weights asked), or no log-probs stored at all (ids + counts alone)."""


def drawn_share(sampled: SampledTokens, estimator: str = "counts") -> torch.Tensor:
    """(N, S) float32 unbiased estimate of p_{T_s}(j) at each drawn id (0 in padding slots): c_j / D
    (`counts`) or p_{T_s}(j) / (1 - (1 - p_{T_s}(j))^D) (`inclusion`; ESTIMATORS)."""
    if estimator == "counts":
        return sampled.counts / sampled.draws
    live = sampled.counts > 0
    p = sampled.log_probs.float().exp().clamp(max=1.0)
    included = -torch.expm1(sampled.draws * torch.log1p(-p))  # 1 - (1 - p)^D; 1 when p = 1
    return torch.where(live, p / included.clamp(min=torch.finfo(torch.float32).tiny), 0.0)


def sampled_teacher_weights(
    sampled: SampledTokens, temperature: float, importance: str = "exact", estimator: str = "counts"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-slot (weight, log p_T) of sampled targets with leading axis N: both (N, S) float32
    (log p_T None for ids + counts alone, which serve `counts` at the sampling temperature only).

    weight_j = f_j p_T(j) / p_{T_s}(j) (just f_j at T = T_s), f_j = `drawn_share` (c_j / D by
    default), 0 in padding slots; log p_T is 0 in padding slots. See the module docstring for
    `importance`.
    """
    live = sampled.counts > 0
    same_temperature = math.isclose(temperature, sampled.temperature, rel_tol=1e-9)
    if sampled.log_probs is None and (estimator != "counts" or not same_temperature):
        raise SampledTemperatureError(
            f"the sampled targets store ids + counts alone (store_log_probs: false), drawn at T = "
            f"{sampled.temperature}, but the loss asks estimator {estimator!r} at T = {temperature}: "
            f"use estimator: counts at T = {sampled.temperature}, or cache with store_log_probs: true"
        )
    frequency = drawn_share(sampled, estimator)
    if same_temperature:
        return frequency, sampled.log_probs
    ratio = sampled.temperature / temperature
    scaled = ratio * (sampled.log_probs + sampled.log_normalizers[:, :1])  # z_j / T
    stored = [t for t in sampled.normalizer_temperatures if math.isclose(t, temperature, rel_tol=1e-9)]
    if importance == "exact":
        if not stored:
            raise SampledTemperatureError(
                f"the sampled targets were drawn at T = {sampled.temperature} with normalisers at T in "
                f"{list(sampled.normalizer_temperatures)}, but the loss asks T = {temperature}: use one of "
                "those, store its normaliser when sampling (normalizer_temperatures), or set importance: "
                "self_normalized (consistent, biased by O(1/draws))"
            )
        column = sampled.normalizer_temperatures.index(stored[0])
        log_normalizer = sampled.log_normalizers[:, column : column + 1]
    else:
        log_terms = torch.where(
            live,
            frequency.clamp(min=torch.finfo(torch.float32).tiny).log() + scaled - sampled.log_probs,
            -torch.inf,
        )
        log_normalizer = torch.logsumexp(log_terms, dim=-1, keepdim=True).nan_to_num(
            neginf=0.0
        )  # a token with no draws (padding) has weight 0 everywhere anyway
    log_p = torch.where(live, scaled - log_normalizer, 0.0)
    weights = torch.where(live, frequency * torch.where(live, log_p - sampled.log_probs, 0.0).exp(), 0.0)
    return weights, log_p


def sampled_forward_kl_tokens(
    student_logits: torch.Tensor,
    sampled: SampledTokens,
    temperature: float = 1.0,
    importance: str = "exact",
    estimator: str = "counts",
) -> torch.Tensor:
    """(N, V) student logits, sampled targets with leading axis N -> (N,) float32 unbiased estimate of
    KL(p_T || q_T) (unscaled; `importance: self_normalized` is consistent, not unbiased; `estimator`:
    ESTIMATORS). Targets of ids + counts alone give the cross-entropy to the draws instead, an
    unbiased estimate of KL + H(p_T): the teacher's entropy is a constant, the gradient the same.

    Only log q_T at the drawn ids is needed: s_j / T - logsumexp(s / T), no (N, V) log-softmax.
    """
    scaled = as_float32(student_logits) / temperature
    student_at = scaled.gather(-1, sampled.ids) - torch.logsumexp(scaled, dim=-1, keepdim=True)
    weights, teacher_at = sampled_teacher_weights(sampled, temperature, importance, estimator)
    if teacher_at is None:  # ids + counts alone: the cross-entropy to the draws (KL + H(p), same gradient)
        return -(weights.detach() * student_at).sum(dim=-1)
    return (weights.detach() * (teacher_at.detach() - student_at)).sum(dim=-1)
