"""Drawing from many softmax rows at once: the inverse-CDF machinery of `token_forms.sample_token_targets`.

Every function works on a chunk of tokens, (n, V) float32 logits, vectorised over the chunk (no
Python loop per token). The cumulative distribution is two-level (float64 sums of blocks of BLOCK
ids, then a float64 cumulative sum inside the one block a draw lands in), so no (n, V) float64 array
is ever made and rounding never lets a draw land on an id without mass.
"""

from __future__ import annotations

import numpy as np

CHUNK_BYTES = 256 * 2**20
"""Default working memory per chunk of tokens."""

BLOCK = 256
"""Ids per block of the two-level inverse CDF."""


def chunk_tokens(elements_per_token: int, chunk_bytes: int) -> int:
    """Tokens per chunk so that ~12 bytes per working element stay within chunk_bytes."""
    return max(1, int(chunk_bytes) // (12 * elements_per_token))


def exp_block(chunk: np.ndarray, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """exp((z - max) / T) in float32 (n, V), and max / T (n,) float64 (one buffer, written in place)."""
    row_max = chunk.max(axis=1, keepdims=True)
    exps = np.subtract(chunk, row_max)
    if temperature != 1.0:
        np.multiply(exps, np.float32(1.0 / temperature), out=exps)
    np.exp(exps, out=exps)
    return exps, row_max[:, 0].astype(np.float64) / temperature


def log_normalizer_of(chunk: np.ndarray, temperature: float) -> np.ndarray:
    """(n,) float64 logsumexp(z / T) of each row."""
    exps, scaled_max = exp_block(chunk, temperature)
    return scaled_max + np.log(exps.sum(axis=1, dtype=np.float64))


def block_size_for(vocab_size: int) -> int:
    """Ids per block for a row of V ids: BLOCK, or V when the row is shorter."""
    return min(BLOCK, vocab_size)


def _first_index_above(cdf: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(n, D) int64: per row, the first index j with cdf[j] > target (vectorised binary search).

    cdf: (n, M) non-decreasing rows; targets: (n, D), each < its row's last cdf value.
    """
    low = np.zeros(targets.shape, np.int64)
    high = np.full(targets.shape, cdf.shape[1] - 1, np.int64)
    for _ in range(int(np.ceil(np.log2(max(cdf.shape[1], 2))))):
        middle = (low + high) // 2
        right = np.take_along_axis(cdf, middle, axis=1) <= targets
        low = np.where(right, middle + 1, low)
        high = np.where(right, high, middle)
    return low


def draw_chunk(chunk: np.ndarray, draws: int, temperature: float, rng: np.random.Generator):
    """Inverse-CDF draws of one chunk: sorted ids (n, draws) int64, their log p_T (n, draws)
    float64 and the rows' log-normaliser (n,) float64.

    Two levels, so no (n, V) float64 cumulative sum is ever made: float64 sums of blocks of BLOCK
    ids find each draw's block; a float64 cumulative sum of that one block finds the id. A zero-mass
    id (-inf logit) is never returned: its cumulative value equals its predecessor's.
    """
    num_rows, vocab_size = chunk.shape
    exps, scaled_max = exp_block(chunk, temperature)
    block_width = block_size_for(vocab_size)
    blocks = -(-vocab_size // block_width)
    if blocks * block_width != vocab_size:
        exps = np.pad(exps, ((0, 0), (0, blocks * block_width - vocab_size)))
    exps = exps.reshape(num_rows, blocks, block_width)
    block_cdf = np.cumsum(exps.sum(axis=2, dtype=np.float64), axis=1)
    totals = block_cdf[:, -1]
    # u < 1, but u * total may round up to total; the largest float below it keeps the last id live.
    targets = np.minimum(rng.random((num_rows, draws)) * totals[:, None], np.nextafter(totals, 0)[:, None])
    block = _first_index_above(block_cdf, targets)
    before = np.where(block > 0, np.take_along_axis(block_cdf, np.maximum(block - 1, 0), axis=1), 0.0)
    inside = exps[np.arange(num_rows)[:, None], block]  # (n, draws, BLOCK)
    inside_cdf = np.cumsum(inside, axis=2, dtype=np.float64)
    offset = (inside_cdf <= (targets - before)[..., None]).sum(axis=2)
    # Rounding between the block sum and the in-block sum can leave the target past the block's
    # last id: take the block's last id with mass then.
    last_live = block_width - 1 - np.argmax(inside[..., ::-1] > 0, axis=2)
    drawn = np.sort(block * block_width + np.minimum(offset, last_live), axis=1)
    log_normalizer = scaled_max + np.log(totals)
    logits_at = np.take_along_axis(chunk, drawn, axis=1).astype(np.float64)
    return drawn, logits_at / temperature - log_normalizer[:, None], log_normalizer


def distinct_with_counts(drawn: np.ndarray, log_probs: np.ndarray):
    """Sorted draws (n, D) -> distinct ids, counts and log-probs, each (n, D) left-aligned and padded
    with count 0, and the number of distinct ids per row (n,)."""
    n, draws = drawn.shape
    starts = np.ones((n, draws), bool)
    starts[:, 1:] = drawn[:, 1:] != drawn[:, :-1]
    slot = np.cumsum(starts, axis=1) - 1
    flat = (np.arange(n)[:, None] * draws + slot).ravel()
    counts = np.bincount(flat, minlength=n * draws).reshape(n, draws)
    ids = np.zeros((n, draws), np.int64)
    values = np.zeros((n, draws), np.float64)
    rows = np.arange(n)[:, None]
    ids[rows, slot] = drawn
    values[rows, slot] = log_probs
    return ids, counts, values, slot[:, -1] + 1
