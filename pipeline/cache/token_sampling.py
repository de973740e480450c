"""Drawing from many softmax rows at once: the inverse-CDF machinery of `token_forms.sample_token_targets`.

Every function works on a chunk of tokens, (n, V) float32 logits, vectorised over the chunk (no
Python loop per token) in torch, so the softmax and the sums run on all of torch's threads. The
uniforms come from the caller's numpy Generator, in token order, so the draws depend on the seed and
the logits only (not on the chunk size, nor on the number of threads: every reduction here is along
a row, one thread per row). The cumulative distribution is two-level (float64 sums of blocks of
BLOCK ids, then a float64 cumulative sum inside the one block a draw lands in), so no (n, V) float64
array is ever made and rounding never lets a draw land on an id without mass.
"""

from __future__ import annotations

import numpy as np
import torch

CHUNK_BYTES = 16 * 2**20
"""Default working memory per chunk of tokens: small enough that the allocator reuses the pages of
the last chunk (a fresh 256 MiB buffer per chunk spent as long faulting its pages in as on the softmax)."""

BLOCK = 256
"""Ids per block of the two-level inverse CDF."""


def chunk_tokens(elements_per_token: int, chunk_bytes: int) -> int:
    """Tokens per chunk so that ~12 bytes per working element stay within chunk_bytes."""
    return max(1, int(chunk_bytes) // (12 * elements_per_token))


def block_size_for(vocab_size: int) -> int:
    """Ids per block for a row of V ids: BLOCK, or V when the row is shorter."""
    return min(BLOCK, vocab_size)


def padded_width(vocab_size: int) -> int:
    """V rounded up to whole blocks: the width of a `draw_chunk` workspace."""
    width = block_size_for(vocab_size)
    return -(-vocab_size // width) * width


def _tensor(chunk: np.ndarray) -> torch.Tensor:
    """A torch view of float32 `chunk` (a copy only when numpy marks it read-only)."""
    return torch.from_numpy(chunk if chunk.flags.writeable else chunk.copy())


def _exps(logits: torch.Tensor, temperature: float, out: torch.Tensor | None = None):
    """exp((z - max) / T) float32 (n, V) written into `out` (n, >= V; its first V columns) or a new
    tensor, and max / T (n,) float64."""
    row_max = logits.amax(dim=1, keepdim=True)
    exps = torch.empty_like(logits) if out is None else out[:, : logits.shape[1]]
    torch.sub(logits, row_max, out=exps)
    if temperature != 1.0:
        exps.mul_(1.0 / temperature)
    exps.exp_()
    return exps, row_max[:, 0].double() / temperature


def exp_block(chunk: np.ndarray, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """exp((z - max) / T) in float32 (n, V), and max / T (n,) float64, as numpy arrays."""
    exps, scaled_max = _exps(_tensor(chunk), temperature)
    return exps.numpy(), scaled_max.numpy()


def log_normalizer_of(chunk: np.ndarray, temperature: float) -> np.ndarray:
    """(n,) float64 logsumexp(z / T) of each row."""
    exps, scaled_max = _exps(_tensor(chunk), temperature)
    return scaled_max.numpy() + np.log(exps.numpy().sum(axis=1, dtype=np.float64))


def workspace(tokens: int, vocab_size: int) -> torch.Tensor:
    """A zeroed (tokens, padded_width(V)) float32 buffer that `draw_chunk` reuses chunk after chunk
    (one allocation, not one per chunk: fresh pages of a large array cost as much as the softmax)."""
    return torch.zeros(tokens, padded_width(vocab_size))


def draw_chunk(
    chunk: np.ndarray,
    draws: int,
    temperature: float,
    rng: np.random.Generator,
    work: torch.Tensor | None = None,
):
    """Inverse-CDF draws of one chunk: sorted ids (n, draws) int64, their log p_T (n, draws)
    float64 and the rows' log-normaliser (n,) float64, as numpy arrays.

    chunk: (n, V) float32 logits; rng: the numpy Generator the (n, draws) uniforms come from;
    work: an optional `workspace(>= n, V)` (its columns past V must stay 0).
    Two levels, so no (n, V) float64 cumulative sum is ever made: float64 sums of blocks of BLOCK
    ids find each draw's block (a binary search of the block CDF); a float64 cumulative sum of that
    one block finds the id. A zero-mass id (-inf logit) is never returned: its cumulative value
    equals its predecessor's.
    """
    num_rows, vocab_size = chunk.shape
    block_width, width = block_size_for(vocab_size), padded_width(vocab_size)
    if work is None:
        work = workspace(num_rows, vocab_size)
    # torch for the (n, V) softmax (all threads, no fresh pages); numpy for the float64 sums, which
    # run several times faster there than torch's on float32 input.
    scaled_max = _exps(_tensor(chunk), temperature, work[:num_rows])[1].numpy()
    blocks_of = work[:num_rows].numpy().reshape(num_rows, width // block_width, block_width)
    block_cdf = np.cumsum(blocks_of.sum(axis=2, dtype=np.float64), axis=1)
    totals = block_cdf[:, -1]
    # u < 1, but u * total may round up to total; the largest float below it keeps the last id live.
    targets = np.minimum(rng.random((num_rows, draws)) * totals[:, None], np.nextafter(totals, 0)[:, None])
    # The first block whose CDF passes each target (a binary search per row).
    block = torch.searchsorted(torch.from_numpy(block_cdf), torch.from_numpy(targets), right=True).numpy()
    before = np.where(block > 0, np.take_along_axis(block_cdf, np.maximum(block - 1, 0), axis=1), 0.0)
    inside = blocks_of[np.arange(num_rows)[:, None], block]  # (n, draws, BLOCK)
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
