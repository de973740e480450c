"""Per-token target forms of a (tokens, V) teacher output, as numpy arrays the cache can store.

Dense fp16 logits cost 2V bytes a token (256 KiB at V = 128k), so a language-model cache stores one
of two sparse forms (docs/token_distillation.md):

- **sampled** (Random-Sampling KD; Anshumann et al., ACL 2025, "Sparse Logit Sampling: Accelerating
  Knowledge Distillation in LLMs", arXiv:2503.16870): `draws` i.i.d. draws from the teacher's
  softmax(z / T), kept as distinct ids with counts. counts / draws is an unbiased estimate of p_T,
  so the forward KL and its gradient estimated from it are unbiased. We also keep the teacher's
  log-prob at each id (the KL's entropy term, and importance weights towards another temperature)
  and the row's log-normaliser at chosen temperatures.
- **top-k**: the k most likely ids, their log-probs and the exact log tail mass. Biased (the tail's
  shape is lost); `top_k_kl_error` measures by how much against the dense row.

Work is done on chunks of tokens so memory stays O(chunk x V), never O(N x V) of float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.cache.token_layout import id_dtype
from pipeline.cache.token_sampling import (
    CHUNK_BYTES,
    block_size_for,
    chunk_tokens,
    distinct_with_counts,
    draw_chunk,
    exp_block,
    log_normalizer_of,
)
from pipeline.errors import DistilleryError

MAX_DRAWS = 2**16 - 1
"""Counts are stored as uint16 at most."""

LOG_PROB_DTYPES = ("float16", "float32")


class TokenFormError(DistilleryError, ValueError):
    """Logits or options that cannot make a per-token target form (the message names the fix)."""


@dataclass(frozen=True)
class SampledTargets:
    """`draws` teacher draws per token, as distinct ids + counts, padded to width S.

    ids: (N, S) uint16 (V <= 65536) or int32: the distinct drawn ids of each token, ascending, then 0
        in the padding slots.
    counts: (N, S) uint8 (draws <= 255) or uint16: draws of each id; 0 marks a padding slot. Every
        row sums to `draws`.
    log_probs: (N, S) float16 or float32: log p_T(id) = z_id / T - logsumexp(z / T) at the sampling
        temperature T, in nats; 0 in padding slots.
    log_normalizers: (N, R) float32: logsumexp(z / T_r) of the full row for each T_r of
        `normalizer_temperatures` (the first is `temperature`); with them p_{T_r}(id) is exact.
    log_probs and log_normalizers are None when read from a cache that stores ids + counts alone
    (`store_log_probs: false`).
    """

    ids: np.ndarray
    counts: np.ndarray
    log_probs: np.ndarray | None
    log_normalizers: np.ndarray | None
    draws: int
    temperature: float
    normalizer_temperatures: tuple[float, ...]
    vocab_size: int


@dataclass(frozen=True)
class TopKTargets:
    """The k most likely ids of each token at temperature T, with the exact tail mass.

    ids: (N, k) uint16 (V <= 65536) or int32, by descending probability (ties among them: lower id
        first; a tie at the k-th place keeps either).
    log_probs: (N, k) float16 or float32: log p_T(id), in nats.
    log_normalizer: (N,) float32: logsumexp(z / T) of the full row (raw logits z = T (log_probs +
        log_normalizer)).
    log_tail_mass: (N,) float32: log of 1 - sum of the k probabilities, computed from the tail itself
        (no cancellation); -inf when k = V.
    """

    ids: np.ndarray
    log_probs: np.ndarray
    log_normalizer: np.ndarray
    log_tail_mass: np.ndarray
    temperature: float
    vocab_size: int


def _checked_logits(logits) -> np.ndarray:
    logits = np.asarray(logits)
    if logits.ndim != 2 or logits.shape[1] < 1:
        raise TokenFormError(f"token logits must be (tokens, V) with V >= 1; got shape {tuple(logits.shape)}")
    if not np.issubdtype(logits.dtype, np.floating):
        raise TokenFormError(f"token logits must be floating point; got {logits.dtype}")
    logits = logits.astype(np.float32, copy=False)
    row_max = logits.max(axis=1) if len(logits) else np.zeros(0, np.float32)  # NaN and +inf reach the max
    if np.isnan(row_max).any() or np.isposinf(row_max).any():
        raise TokenFormError(
            "token logits hold NaN or +inf; fix the teacher output (-inf is allowed: a masked id)"
        )
    if np.isneginf(row_max).any():
        raise TokenFormError("a token's logits are all -inf; every token needs one finite logit")
    return logits


def _checked_temperature(name: str, value: float) -> float:
    value = float(value)
    if not np.isfinite(value) or value <= 0:
        raise TokenFormError(f"{name} must be a finite number > 0; got {value}")
    return value


def sample_token_targets(
    logits,
    draws: int,
    seed: int | np.random.Generator,
    temperature: float = 1.0,
    *,
    width: int | None = None,
    log_prob_dtype: str = "float16",
    normalizer_temperatures: tuple[float, ...] = (),
    chunk_bytes: int = CHUNK_BYTES,
) -> SampledTargets:
    """`draws` i.i.d. draws per token from softmax(logits / temperature), as distinct ids + counts.

    logits: (N, V) float raw teacher logits (-inf marks an id that can never be drawn).
    draws: draws per token, 1..65535 (Anshumann et al. 2025 use ~50, giving ~12 distinct ids).
    seed: an int or a numpy Generator. The result depends only on the seed and the logits, not on
        `chunk_bytes` (draws are taken from the stream in token order); a resumable cache seeds each
        shard on its own, e.g. `np.random.default_rng([seed, shard])`.
    width: S, the padded width; None = the most distinct ids any token of this call needed; a fixed
        width (e.g. `draws`, always enough) gives every call the same shape.
    log_prob_dtype: "float16" (default) or "float32" for the stored log-probs.
    normalizer_temperatures: further temperatures whose full-row logsumexp is stored (4 B/token each)
        so that a student at one of them gets exact importance weights (docs/token_distillation.md).
    chunk_bytes: working memory per chunk of tokens.
    Returns a SampledTargets. Sampling is inverse-CDF on a float64 cumulative sum: an id whose
    probability is below ~1e-16 of its row's mass is never drawn.
    """
    logits = _checked_logits(logits)
    temperature = _checked_temperature("temperature", temperature)
    if not 1 <= int(draws) <= MAX_DRAWS:
        raise TokenFormError(f"draws must be in 1..{MAX_DRAWS}; got {draws}")
    if log_prob_dtype not in LOG_PROB_DTYPES:
        raise TokenFormError(
            f"log_prob_dtype must be one of {', '.join(LOG_PROB_DTYPES)}; got {log_prob_dtype!r}"
        )
    draws = int(draws)
    extra = [_checked_temperature("normalizer temperature", t) for t in normalizer_temperatures]
    temperatures = tuple(dict.fromkeys([temperature, *extra]))
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    num_tokens, vocab_size = logits.shape
    ids = np.zeros((num_tokens, draws), id_dtype(vocab_size))
    counts = np.zeros((num_tokens, draws), np.uint8 if draws <= 255 else np.uint16)
    log_probs = np.zeros((num_tokens, draws), log_prob_dtype)
    normalizers = np.zeros((num_tokens, len(temperatures)), np.float32)
    distinct = np.zeros(num_tokens, np.int64)
    step = chunk_tokens(vocab_size + draws * block_size_for(vocab_size), chunk_bytes)
    for start in range(0, num_tokens, step):
        chunk = logits[start : start + step]
        rows = slice(start, start + len(chunk))
        drawn, drawn_log_probs, normalizers_at_t = draw_chunk(chunk, draws, temperature, rng)
        ids[rows], counts[rows], log_probs[rows], distinct[rows] = distinct_with_counts(
            drawn, drawn_log_probs
        )
        normalizers[rows, 0] = normalizers_at_t
        for column, other in enumerate(temperatures[1:], start=1):
            normalizers[rows, column] = log_normalizer_of(chunk, other)
    needed = int(distinct.max(initial=1))
    if width is None:
        width = needed
    elif not needed <= int(width) <= draws:
        raise TokenFormError(
            f"width {width} cannot hold the draws: a token drew {needed} distinct ids; "
            f"use width between {needed} and draws ({draws}), or width: None"
        )
    keep = slice(0, int(width))
    return SampledTargets(
        ids=np.ascontiguousarray(ids[:, keep]),
        counts=np.ascontiguousarray(counts[:, keep]),
        log_probs=np.ascontiguousarray(log_probs[:, keep]),
        log_normalizers=normalizers,
        draws=draws,
        temperature=temperature,
        normalizer_temperatures=temperatures,
        vocab_size=vocab_size,
    )


def top_k_token_targets(
    logits,
    k: int,
    temperature: float = 1.0,
    *,
    log_prob_dtype: str = "float16",
    chunk_bytes: int = CHUNK_BYTES,
) -> TopKTargets:
    """The k most likely ids of each token at temperature T, their log-probs and the exact tail mass.

    logits: (N, V) float raw teacher logits; k >= 1 (k > V is taken as V). Returns a TopKTargets.
    """
    logits = _checked_logits(logits)
    temperature = _checked_temperature("temperature", temperature)
    if int(k) < 1:
        raise TokenFormError(f"k must be >= 1; got {k}")
    if log_prob_dtype not in LOG_PROB_DTYPES:
        raise TokenFormError(
            f"log_prob_dtype must be one of {', '.join(LOG_PROB_DTYPES)}; got {log_prob_dtype!r}"
        )
    num_tokens, vocab_size = logits.shape
    k = min(int(k), vocab_size)
    ids = np.zeros((num_tokens, k), id_dtype(vocab_size))
    log_probs = np.zeros((num_tokens, k), log_prob_dtype)
    log_normalizer = np.zeros(num_tokens, np.float32)
    log_tail = np.zeros(num_tokens, np.float32)
    step = chunk_tokens(vocab_size, chunk_bytes)
    for start in range(0, num_tokens, step):
        chunk = logits[start : start + step]
        rows = slice(start, start + len(chunk))
        top = (
            np.argpartition(chunk, vocab_size - k, axis=1)[:, vocab_size - k :]
            if k < vocab_size
            else np.tile(np.arange(k), (len(chunk), 1))
        )
        top_logits = np.take_along_axis(chunk, top, axis=1)
        order = np.lexsort((top, -top_logits), axis=1)  # descending logit, then ascending id
        top, top_logits = (
            np.take_along_axis(top, order, axis=1),
            np.take_along_axis(top_logits, order, axis=1),
        )
        exps, scaled_max = exp_block(chunk, temperature)
        head = np.take_along_axis(exps, top, axis=1).sum(axis=1, dtype=np.float64)
        np.put_along_axis(exps, top, 0.0, axis=1)  # the tail summed on its own: exact even when tiny
        tail = exps.sum(axis=1, dtype=np.float64)
        normalizer = scaled_max + np.log(head + tail)
        ids[rows] = top
        log_probs[rows] = top_logits.astype(np.float64) / temperature - normalizer[:, None]
        log_normalizer[rows] = normalizer
        with np.errstate(divide="ignore"):
            log_tail[rows] = np.log(tail) - np.log(head + tail)
    return TopKTargets(ids, log_probs, log_normalizer, log_tail, temperature, vocab_size)


def top_k_kl_error(logits, targets: TopKTargets, chunk_bytes: int = CHUNK_BYTES) -> np.ndarray:
    """(N,) float64 KL(p_T || p_hat) in nats at the form's temperature: what a student loses by
    learning from `targets` instead of the dense row.

    p_hat keeps the stored head (as rounded to its dtype) and spreads the stored tail mass evenly over
    the V - k other ids (the maximum-entropy completion), renormalised; its KL is tail_mass x
    KL(tail shape || uniform) plus the head's rounding. logits: (N, V) the dense row the form came from.
    """
    logits = _checked_logits(logits)
    if logits.shape != (len(targets.ids), targets.vocab_size):
        raise TokenFormError(
            f"logits {tuple(logits.shape)} do not match the top-k form of "
            f"{len(targets.ids)} tokens x V = {targets.vocab_size}"
        )
    num_tokens, vocab_size = logits.shape
    k = targets.ids.shape[1]
    errors = np.zeros(num_tokens, np.float64)
    step = chunk_tokens(vocab_size, chunk_bytes)
    for start in range(0, num_tokens, step):
        rows = slice(start, start + step)
        chunk = logits[rows]
        log_p = (
            chunk.astype(np.float64) / targets.temperature
            - log_normalizer_of(chunk, targets.temperature)[:, None]
        )
        head = targets.log_probs[rows].astype(np.float64)
        tail = targets.log_tail_mass[rows].astype(np.float64)
        with np.errstate(divide="ignore"):
            log_q = np.repeat((tail - np.log(max(vocab_size - k, 1)))[:, None], vocab_size, axis=1)
            total = np.logaddexp(np.logaddexp.reduce(head, axis=1), tail)
        np.put_along_axis(log_q, targets.ids[rows].astype(np.int64), head, axis=1)
        p = np.exp(log_p)
        with np.errstate(invalid="ignore"):
            errors[rows] = np.where(p > 0, p * (log_p - log_q + total[:, None]), 0.0).sum(axis=1)
    return np.maximum(errors, 0.0)


def bytes_per_token(form: SampledTargets | TopKTargets, padded: bool = False) -> float:
    """Mean bytes one token takes in `form`, at the stored dtypes.

    Sampled: (id + count + log-prob bytes) x the distinct ids actually drawn (counts > 0: what a
    ragged store keeps; padded=True counts all S slots) + 4 B per stored normaliser. Top-k: k x
    (id + log-prob bytes) + 8 B (normaliser and tail mass).
    """
    if isinstance(form, SampledTargets):
        stored = form.log_probs is not None
        slot = form.ids.itemsize + form.counts.itemsize + (form.log_probs.itemsize if stored else 0)
        normalizers = form.log_normalizers.shape[1] * form.log_normalizers.itemsize if stored else 0
        slots = (
            form.ids.shape[1]
            if padded or not form.counts.size
            else np.count_nonzero(form.counts, axis=1).mean()
        )
        return float(slots * slot + normalizers)
    slot = form.ids.itemsize + form.log_probs.itemsize
    return float(form.ids.shape[1] * slot + form.log_normalizer.itemsize + form.log_tail_mass.itemsize)


def dense_bytes_per_token(vocab_size: int, dtype: str = "float16") -> int:
    """Bytes of one token's dense logits: V x the dtype's size (2V for float16)."""
    return int(vocab_size) * np.dtype(dtype).itemsize
