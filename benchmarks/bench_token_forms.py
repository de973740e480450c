"""Token target forms: sampling throughput at V = 128k, bytes per token of each form, and a student
step from sampled targets against dense ones, all measured in one run on one machine.

    .venv/bin/python benchmarks/bench_token_forms.py [--vocab 128000] [--tokens 1024] [--draws 32 64]
        [--vocabs 32000 128000] [--step-vocab 8192] [--step-tokens 2048] [--threads 1]

The teacher is synthetic: per token, logits sigma_t x N(0, 1) with sigma_t uniform in [4, 7], so
per-token entropies spread over a few nats (mean printed). Sampling is numpy on one core (float32 logits
in, the two-level inverse CDF of pipeline/cache/token_forms.py). Bytes per token are the stored
dtypes of the forms (ragged: the distinct ids drawn; padded: S slots), against dense fp16 (2V);
top-k is taken at the k whose bytes match the sampled form's ragged bytes, with its KL error to the
dense row. The student step is Linear(hidden, V) forward + loss + backward + SGD step on N tokens at
a small V, timed alternately (best of a few) with dense fp16 teacher logits and with sampled targets;
it leaves out reading the cache, where the dense form's 2V bytes a token dominate.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.cache.token_batch import SampledTokens  # noqa: E402
from pipeline.cache.token_forms import (  # noqa: E402
    bytes_per_token,
    dense_bytes_per_token,
    sample_token_targets,
    top_k_kl_error,
    top_k_token_targets,
)
from pipeline.losses.token_kd import token_divergence  # noqa: E402


def synthetic_teacher(tokens: int, vocab: int, seed: int = 0) -> np.ndarray:
    """(tokens, vocab) float32 logits, sigma_t x N(0, 1) with sigma_t ~ U[4, 7] per token."""
    rng = np.random.default_rng(seed)
    sigma = rng.uniform(4.0, 7.0, size=(tokens, 1)).astype(np.float32)
    return rng.standard_normal((tokens, vocab), dtype=np.float32) * sigma


def entropy_nats(logits: np.ndarray) -> np.ndarray:
    """(N,) entropy of softmax(logits) in nats."""
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -(np.exp(log_p) * log_p).sum(axis=1)


def best_time(step, repeats: int = 3) -> float:
    """Best wall time (s) of `step()` over `repeats` runs."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - start)
    return best


def sampling_throughput(vocab: int, tokens: int, draws_list: list[int], top_k: int) -> None:
    logits = synthetic_teacher(tokens, vocab)
    print(f"## throughput at V = {vocab}, {tokens} tokens, numpy on one core")
    for draws in draws_list:
        seconds = best_time(lambda draws=draws: sample_token_targets(logits, draws, seed=0), repeats=2)
        print(f"sampled, draws {draws}: {tokens / seconds:,.0f} tokens/s")
    seconds = best_time(lambda: top_k_token_targets(logits, top_k), repeats=2)
    print(f"top-k, k = {top_k}: {tokens / seconds:,.0f} tokens/s")
    seconds = best_time(lambda: logits.astype(np.float16), repeats=2)
    print(f"dense fp16 (a cast): {tokens / seconds:,.0f} tokens/s\n")


def bytes_table(vocabs: list[int], tokens: int, draws_list: list[int]) -> None:
    print("## bytes per token (synthetic teacher)")
    print(
        "| V | mean entropy (nats) | form | distinct ids | B/token ragged | B/token padded | dense / form |"
    )
    print("| ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    for vocab in vocabs:
        logits = synthetic_teacher(tokens, vocab, seed=1)
        entropy = entropy_nats(logits).mean()
        dense = dense_bytes_per_token(vocab)
        print(f"| {vocab} | {entropy:.2f} | dense fp16 | {vocab} | {dense:,} | {dense:,} | 1 |")
        for draws in draws_list:
            sampled = sample_token_targets(logits, draws, seed=0)
            ragged, padded = bytes_per_token(sampled), bytes_per_token(sampled, padded=True)
            distinct = np.count_nonzero(sampled.counts, axis=1).mean()
            print(
                f"| {vocab} | {entropy:.2f} | sampled, {draws} draws | {distinct:.1f} | {ragged:.0f} | "
                f"{padded:.0f} | {dense / ragged:,.0f} |"
            )
            slot = top_k_token_targets(logits[:1], 1)
            slot_bytes = bytes_per_token(slot) - 8
            k = max(1, round((ragged - 8) / slot_bytes))
            top = top_k_token_targets(logits, k)
            error = top_k_kl_error(logits, top)
            print(
                f"| {vocab} | {entropy:.2f} | top-k, k = {k} (same bytes); KL error mean {error.mean():.3f} "
                f"/ p99 {np.quantile(error, 0.99):.3f} nats | {k} | {bytes_per_token(top):.0f} | "
                f"{bytes_per_token(top):.0f} | {dense / bytes_per_token(top):,.0f} |"
            )
    print()


def student_steps(vocab: int, tokens: int, draws: int, hidden: int = 128) -> None:
    torch.manual_seed(0)
    teacher = synthetic_teacher(tokens, vocab, seed=2)
    dense = torch.from_numpy(teacher.astype(np.float16))
    sampled = SampledTokens.from_targets(sample_token_targets(teacher, draws, seed=0))
    features = torch.randn(tokens, hidden)
    head = torch.nn.Linear(hidden, vocab)
    optimizer = torch.optim.SGD(head.parameters(), lr=1e-3)

    def step(targets) -> None:
        optimizer.zero_grad(set_to_none=True)
        token_divergence(head(features), targets).backward()
        optimizer.step()

    step(dense), step(sampled)  # warm-up
    best_dense = best_sampled = float("inf")
    for _ in range(5):
        best_dense = min(best_dense, best_time(lambda: step(dense), repeats=1))
        best_sampled = min(best_sampled, best_time(lambda: step(sampled), repeats=1))
    print(f"## student step at V = {vocab}: {tokens} tokens, Linear({hidden}, {vocab}), forward KL, SGD")
    sampled_bytes = sum(
        t.numel() * t.element_size() for t in (sampled.ids, sampled.counts, sampled.log_probs)
    )
    print(
        f"dense fp16 targets: {1e3 * best_dense:.1f} ms, sampled ({draws} draws): {1e3 * best_sampled:.1f} ms"
    )
    print(f"dense / sampled: {best_dense / best_sampled:.2f}x")
    print(
        f"targets per step: dense {dense.numel() * 2 / 2**20:.1f} MiB (fp16), "
        f"sampled {sampled_bytes / 2**20:.2f} MiB (int64 ids, float32 counts and log-probs)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=128_000, help="V of the throughput run")
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--draws", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--top-k", type=int, default=32)
    parser.add_argument(
        "--vocabs", type=int, nargs="+", default=[32_000, 128_000], help="V of the bytes table"
    )
    parser.add_argument("--table-tokens", type=int, default=256)
    parser.add_argument("--step-vocab", type=int, default=8192)
    parser.add_argument("--step-tokens", type=int, default=1024)
    parser.add_argument("--step-hidden", type=int, default=64)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1: stable on a shared machine)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"numpy {np.__version__}, torch {torch.__version__}, {torch.get_num_threads()} torch thread(s)\n")
    sampling_throughput(args.vocab, args.tokens, args.draws, args.top_k)
    bytes_table(args.vocabs, args.table_tokens, args.draws)
    student_steps(args.step_vocab, args.step_tokens, args.draws[0], args.step_hidden)
    return 0


if __name__ == "__main__":
    sys.exit(main())
