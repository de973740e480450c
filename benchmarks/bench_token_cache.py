"""Scale check of the sampled token cache (issue 17, item 4): a synthetic LM teacher at V = 128k, over a
million tokens through the real cache writer in the sampled form, then student steps reading it back.

    python benchmarks/bench_token_cache.py [--vocab 128000] [--tokens 1048576] [--draws 32]
        [--row-tokens 256] [--student-rows 2] [--steps 5] [--threads 1]
        [--step-vocab 8192] [--step-tokens 65536] [--out data/.scratch/bench_token_cache]
        [--steps-from STORE]   # only the student steps, on a finished store

The teacher is an ONNX Gather over a table of `--contexts` logit rows (sigma x N(0, 1), sigma ~ U[4, 7]
per row, as benchmarks/bench_token_forms.py): input_ids (batch, sequence) -> logits (batch, sequence,
V), run by ONNX Runtime through `pipeline.cache.writer.build_cache` exactly as the `cache` stage
runs a teacher (one row of `--row-tokens` tokens a teacher batch, so a batch's logits are
row_tokens x V x 4 bytes: 128 MiB at the defaults, the bound on the writer's memory with the
sampler's 16 MiB working chunk). Printed: tokens, write throughput (tokens/s, wall), bytes per token
(on disk, and the form's raw padded / ragged bytes from the cache report), peak RSS of this process
after the build and after the steps, and the student's steps/s reading batches from the cache
(lazy Zarr reads + forward KL from the sampled targets + backward + SGD on Linear(64, V)).
Then, at a small V (`--step-vocab`, where a dense cache fits), the same teacher over `--step-tokens`
tokens is cached twice, dense fp16 and sampled, and the student's step time from each is printed
with their ratio (the issue's "step time from the sampled cache against dense fp16 at a small V").
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.cache.open import open_cache  # noqa: E402
from pipeline.cache.params import CacheParams, TokenLogitsParams  # noqa: E402
from pipeline.cache.report import cache_report  # noqa: E402
from pipeline.cache.writer import build_cache  # noqa: E402
from pipeline.data.fields import Ragged  # noqa: E402
from pipeline.losses.token_kd import token_divergence  # noqa: E402
from pipeline.teacher.session import open_teacher  # noqa: E402


class TokenRows:
    """A RowSource of `rows` sequences of `length` token ids below `contexts` (one ragged field)."""

    def __init__(self, rows: int, length: int, contexts: int, vocab: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.sample_id = np.arange(rows, dtype=np.int64)
        self.split = np.zeros(rows, np.int8)
        self.label = np.zeros(rows, np.int64)
        offsets = np.arange(rows + 1, dtype=np.int64) * length
        self.fields = {"input_ids": Ragged(rng.integers(0, contexts, rows * length), offsets)}
        self.num_classes = vocab
        self.fingerprint = f"bench-{rows}-{length}-{contexts}-{vocab}-{seed}"


def write_teacher(path: Path, contexts: int, vocab: int, seed: int = 0) -> None:
    """The Gather teacher: logits[b, t] = table[input_ids[b, t]], table (contexts, V) float32."""
    rng = np.random.default_rng(seed)
    sigma = rng.uniform(4.0, 7.0, size=(contexts, 1)).astype(np.float32)
    table = rng.standard_normal((contexts, vocab), dtype=np.float32) * sigma
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "input_ids"], ["logits"])],
        "synthetic_lm",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", vocab])],
        [numpy_helper.from_array(table, "table")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    onnx.save(model, str(path))


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def tree_size(directory: Path) -> int:
    """Bytes of every file under `directory`."""
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def monitor(
    scratch: Path, tokens_per_shard: int, start: float, every_s: float, stop: threading.Event
) -> None:
    """Print tokens written so far, the rate and the peak RSS every `every_s` seconds until `stop`
    (so a run cut short still leaves figures)."""
    while not stop.wait(every_s):
        shards = len(list((scratch / "progress").glob("shard-*.json")))
        elapsed = time.perf_counter() - start
        done = shards * tokens_per_shard
        print(
            f"  {elapsed:6.0f} s: {done:,} tokens in {shards} shards, {done / elapsed:,.0f} tokens/s, "
            f"peak RSS {peak_rss_mib():,.0f} MiB",
            flush=True,
        )


def student_steps(store: Path, vocab: int, rows: int, steps: int, hidden: int = 64) -> tuple[float, float]:
    """(steps/s, tokens/s) of `steps` student steps of `rows` rows each, read lazily from `store`
    (sampled targets, or the dense per-token logits when the cache holds those)."""
    cache = open_cache(store, mode="lazy")
    torch.manual_seed(0)
    embed, head = torch.nn.Embedding(vocab, hidden), torch.nn.Linear(hidden, vocab)
    optimizer = torch.optim.SGD([*embed.parameters(), *head.parameters()], lr=1e-3)
    order = np.random.default_rng(0).permutation(len(cache))
    tokens, start = 0, None
    for step in range(steps + 1):  # step 0 warms up, untimed
        if step == 1:
            tokens, start = 0, time.perf_counter()
        batch = cache.batch(np.sort(order[step * rows : (step + 1) * rows]))
        targets, mask = batch.tokens.targets, batch.tokens.mask
        if targets is None:  # a dense cache: the padded (B, L, V) logits
            targets = batch.logits
        inputs = torch.zeros(mask.shape, dtype=torch.int64)  # the student's own inputs do not matter here
        optimizer.zero_grad(set_to_none=True)
        token_divergence(head(embed(inputs)), targets, token_mask=mask).backward()
        optimizer.step()
        tokens += int(mask.sum())
    elapsed = time.perf_counter() - start
    return steps / elapsed, tokens / elapsed


def print_steps(store: Path, vocab: int, rows: int, row_tokens: int, steps: int, what: str = "") -> float:
    """Time the student steps on `store`, print steps/s and tokens/s; return seconds a step."""
    per_second, tokens_per_second = student_steps(store, vocab, rows, steps)
    print(
        f"student steps{what} (Linear(64, {vocab}), {rows} rows = {rows * row_tokens} tokens a step, lazy "
        f"reads + forward KL + backward + SGD): {per_second:.2f} steps/s, {tokens_per_second:,.0f} tokens/s"
    )
    return 1.0 / per_second


def build(out: Path, vocab: int, tokens: int, args, token_logits: TokenLogitsParams | None, every_s: float):
    """Write the Gather teacher at V = `vocab` and cache `tokens` tokens of it under `out` in the form
    `token_logits` (None: dense fp16); returns (BuildResult, seconds)."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    rows = -(-tokens // args.row_tokens)
    data = TokenRows(rows, args.row_tokens, args.contexts, vocab)
    write_teacher(out / "teacher.onnx", args.contexts, vocab)
    teacher = open_teacher(
        out / "teacher.onnx", inputs={"input_ids": "input_ids"}, provider="cpu", intra_op_threads=args.threads
    )
    params = CacheParams(batch_size=1, rows_per_chunk=16, chunks_per_shard=4, token_logits=token_logits)
    start, stop = time.perf_counter(), threading.Event()
    watcher = threading.Thread(
        target=monitor,
        args=(out / "scratch", params.rows_per_shard * args.row_tokens, start, every_s, stop),
        daemon=True,
    )
    watcher.start()
    try:
        result = build_cache(
            data, teacher, "0" * 64, data.fingerprint, params, out / "store", out / "scratch", progress=False
        )
    finally:
        stop.set()
    return result, time.perf_counter() - start


def compare_steps(args) -> None:
    """The student's step time from a dense fp16 cache and from a sampled one at V = --step-vocab."""
    seconds = {}
    for name, form in (
        ("dense fp16", None),
        ("sampled", TokenLogitsParams(form="sampled", draws=args.draws)),
    ):
        out = args.out / f"steps_{name.split()[0]}"
        result, _ = build(out, args.step_vocab, args.step_tokens, args, form, every_s=1e9)
        on_disk = tree_size(result.store_dir) / args.step_tokens
        seconds[name] = print_steps(
            result.store_dir,
            args.step_vocab,
            args.student_rows,
            args.row_tokens,
            args.steps,
            f" from the {name} cache ({on_disk:,.1f} B/token on disk)",
        )
        shutil.rmtree(out, ignore_errors=True)
    print(
        f"step time at V = {args.step_vocab}: sampled / dense fp16 = "
        f"{seconds['sampled'] / seconds['dense fp16']:.2f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=128_000)
    parser.add_argument("--tokens", type=int, default=1 << 20)
    parser.add_argument("--draws", type=int, default=32)
    parser.add_argument("--row-tokens", type=int, default=256)
    parser.add_argument("--contexts", type=int, default=32, help="distinct teacher rows in the table")
    parser.add_argument("--student-rows", type=int, default=2, help="rows per student step")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--report-every", type=float, default=120.0, help="seconds between progress lines")
    parser.add_argument("--threads", type=int, default=1, help="torch and ORT threads")
    parser.add_argument("--step-vocab", type=int, default=8192, help="V of the dense-vs-sampled step timing")
    parser.add_argument("--step-tokens", type=int, default=1 << 16, help="tokens of each step-timing cache")
    parser.add_argument("--out", type=Path, default=Path("data/.scratch/bench_token_cache"))
    parser.add_argument("--steps-from", type=Path, help="only time the student steps on this finished store")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.steps_from is not None:
        print_steps(args.steps_from, args.vocab, args.student_rows, args.row_tokens, args.steps)
        return 0
    print(
        f"V = {args.vocab}, {args.tokens:,} tokens in rows of {args.row_tokens}, sampled form, "
        f"{args.draws} draws, {args.threads} thread(s)"
    )
    result, build_s = build(
        args.out / "big",
        args.vocab,
        args.tokens,
        args,
        TokenLogitsParams(form="sampled", draws=args.draws),
        args.report_every,
    )
    rss_build = peak_rss_mib()
    cache = open_cache(result.store_dir, mode="lazy")
    form = cache_report(cache)["token_form"]
    tokens = form["tokens"]
    on_disk, dense = tree_size(result.store_dir), form["dense_bytes_per_token"]
    print(
        f"tokens written: {tokens:,} in {build_s:.0f} s: {tokens / build_s:,.0f} tokens/s "
        "(wall, teacher included)"
    )
    print(
        f"bytes/token: {on_disk / tokens:.1f} on disk (zstd, whole store), form raw "
        f"{form['bytes_per_token_padded']:.0f} padded / {form['bytes_per_token_ragged']:.1f} ragged "
        f"({form['mean_distinct_ids']:.1f} distinct ids a token), dense fp16 {dense:,}: "
        f"{dense * tokens / on_disk:,.0f}x smaller"
    )
    print(f"peak RSS after the build: {rss_build:,.0f} MiB")
    print_steps(result.store_dir, args.vocab, args.student_rows, args.row_tokens, args.steps)
    print(f"peak RSS after the steps: {peak_rss_mib():,.0f} MiB")
    shutil.rmtree(args.out / "big", ignore_errors=True)
    compare_steps(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
