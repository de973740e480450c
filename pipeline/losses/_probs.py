"""Numerically safe building blocks shared by the logit families (private).

Everything is computed in float32 whatever the input dtype (a float16 cache or an autocast student
would otherwise overflow in exp), and from log-probabilities (log_softmax), so logits of magnitude
1e4 give finite losses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def as_float32(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` in float32 (a no-op for float32; fp16/bf16 inputs are upcast before any exp)."""
    return tensor if tensor.dtype == torch.float32 else tensor.float()


def at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` in float32, or float64 when it is float64 (so a fused form can be checked against
    its plain form in float64); fp16/bf16 inputs are upcast. The adapters pass float32 taps."""
    return tensor if tensor.dtype in (torch.float32, torch.float64) else tensor.float()


def log_softmax_at(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """(B, C) logits -> (B, C) log softmax(logits / T), in float32."""
    return F.log_softmax(as_float32(logits) / temperature, dim=-1)


def kl_rows(target_log_probs: torch.Tensor, input_log_probs: torch.Tensor) -> torch.Tensor:
    """(B, C), (B, C) -> (B,) KL(p || q) = sum_c p_c (log p_c - log q_c), p = exp(target).

    Classes with p_c = 0 (log p = -inf: masked or underflowed) contribute exactly 0, where a plain
    `p * (log p - log q)` would give 0 * inf = NaN.
    """
    target_probs = target_log_probs.exp()
    gap = torch.where(target_probs > 0, target_log_probs - input_log_probs, 0.0)
    return (target_probs * gap).sum(dim=-1)


def soft_ce_rows(target_log_probs: torch.Tensor, input_log_probs: torch.Tensor) -> torch.Tensor:
    """(B, C), (B, C) -> (B,) cross-entropy H(p, q) = -sum_c p_c log q_c, p = exp(target)."""
    target_probs = target_log_probs.exp()
    return -(torch.where(target_probs > 0, target_probs * input_log_probs, 0.0)).sum(dim=-1)


def hard_ce_rows(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, C), (B,) -> (B,) -log softmax(z)_y per row, in float32 (one fused log_softmax + NLL
    kernel); rows with label -1 get 0, with a zero gradient, which `masked_mean` drops."""
    return F.cross_entropy(as_float32(student_logits), labels, ignore_index=-1, reduction="none")


_LOG_ZERO = torch.finfo(torch.float32).min
"""Stands in for log 0 = -inf in a target: exp gives exactly 0 and differences stay finite."""


def kl_batch_mean(
    target_log_probs: torch.Tensor, input_log_probs: torch.Tensor, scale: float = 1.0
) -> torch.Tensor:
    """(B, C), (B, C) -> scalar (scale/B) sum_i KL(p_i || q_i): `scale * kl_rows(...).mean()` as one fused
    `F.kl_div(log_target=True)` kernel (the dense fast path of the Hinton term).

    Targets of -inf (masked or underflowed classes) are clamped to the float32 minimum first, so
    they contribute exactly 0 as in `kl_rows` (a raw `kl_div` gives 0 * inf = NaN). Needs finite
    `input_log_probs` (the log_softmax of finite logits), and a target without gradient (the
    teacher's). Returns a float32 scalar; 0 for B = 0.
    """
    target = target_log_probs.detach().clamp(min=_LOG_ZERO)
    total = F.kl_div(input_log_probs, target, reduction="sum", log_target=True)
    return total * (scale / max(input_log_probs.shape[0], 1))


def soft_ce_batch_mean(
    target_log_probs: torch.Tensor, input_log_probs: torch.Tensor, scale: float = 1.0
) -> torch.Tensor:
    """(B, C), (B, C) -> scalar (scale/B) sum_i H(p_i, q_i) = `scale * soft_ce_rows(...).mean()`;
    masked targets (p = 0) contribute 0. Needs finite `input_log_probs` and a target without
    gradient, as `kl_batch_mean`. Returns a float32 scalar; 0 for B = 0."""
    products = target_log_probs.detach().exp() * input_log_probs
    return products.sum() * (-scale / max(input_log_probs.shape[0], 1))


def labelled(labels: torch.Tensor) -> torch.Tensor:
    """(B,) bool: rows that have a hard label (label != -1)."""
    return labels >= 0


def masked_mean(per_row: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of (B,) `per_row` over rows where `mask` is True.

    With no row selected the result is an exact 0 that is still connected to the graph (its
    gradient is 0, never NaN), so an all-unlabelled batch trains on its soft terms only.
    """
    total = torch.where(mask, per_row, 0.0).sum()
    return total / mask.sum().clamp(min=1)
