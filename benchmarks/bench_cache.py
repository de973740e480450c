"""Cache benchmarks, every ratio measured in one run on one machine.

    .venv/bin/python benchmarks/bench_cache.py [--rows 8192] [--classes 100] [--batch 256] [--ort-threads N]

On a CPU-only machine inference and the writer (fp16 cast, NaN check, digests, zstd) share the cores:
with ONNX Runtime on every core the writer slows inference down (2 cores: ratio ~0.71); with a core left
to the writer (--ort-threads 1 on 2 cores) the overlap hides it (~0.95-0.98). On a GPU the teacher runs
on the device and the writer has the CPU.

1. Cache-stage throughput / bare `InferenceSession.run` throughput on the same model and batches
   (goal >= 0.95): the stage adds casting, NaN checks, digests and zstd writes, overlapped with
   inference by a writer thread, plus fixed costs (store creation, finalize). Bare and stage runs
   alternate and the best of --repeats is kept, since the machine may be shared.
2. Reader: random 256-row batch (ms) and batches/s, in-RAM (StoredCache), uncompressed memory map
   (MmapCache, built once outside the store) and lazy Zarr paths (goal <= 10 ms).
3. Bytes per sample per store and dtype (on disk, all arrays: ids, splits, labels, logits, taps).
"""

from __future__ import annotations

import argparse
import logging
import mmap
import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.cache.open import open_cache  # noqa: E402
from pipeline.cache.params import CacheParams  # noqa: E402
from pipeline.cache.reader import block_shuffle  # noqa: E402
from pipeline.cache.writer import build_cache  # noqa: E402


@dataclass(frozen=True)
class Rows:
    sample_id: np.ndarray
    split: np.ndarray
    label: np.ndarray
    inputs: np.ndarray
    fingerprint: str = "b" * 64


def export_teacher(path: Path, num_classes: int) -> None:
    """A small CNN teacher (3x32x32 -> logits (C) + embed (128)), dynamic batch."""
    import torch

    class Teacher(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = torch.nn.Sequential(
                torch.nn.Conv2d(3, 32, 3, padding=1),
                torch.nn.ReLU(),
                torch.nn.MaxPool2d(2),
                torch.nn.Conv2d(32, 64, 3, padding=1),
                torch.nn.ReLU(),
                torch.nn.MaxPool2d(2),
                torch.nn.Flatten(),
                torch.nn.Linear(64 * 8 * 8, 128),
                torch.nn.ReLU(),
            )
            self.head = torch.nn.Linear(128, num_classes)

        def forward(self, x):
            embed = self.features(x)
            return self.head(embed), embed

    torch.manual_seed(0)
    batch = torch.export.Dim("batch", min=1, max=8192)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        logging.getLogger("torch").setLevel(logging.ERROR)
        torch.onnx.export(
            Teacher().eval(),
            (torch.zeros(2, 3, 32, 32),),
            str(path),
            dynamo=True,
            external_data=False,
            input_names=["input"],
            output_names=["logits", "embed"],
            dynamic_shapes=({0: batch},),
            verbose=False,
        )


class BareTeacher:
    """The bare ORT session behind the writer's Teacher protocol."""

    provider = "CPUExecutionProvider"
    logits_name = "logits"
    tap_names = ("embed",)

    def __init__(self, path: Path, intra_op_threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if intra_op_threads:
            options.intra_op_num_threads = intra_op_threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        logits, embed = self.session.run(["logits", "embed"], {"input": inputs})
        return {"logits": logits, "embed": embed}


class TimedTeacher:
    """Wraps a teacher and adds up the wall time spent inside `run`."""

    def __init__(self, teacher: BareTeacher) -> None:
        self.teacher, self.seconds = teacher, 0.0
        self.provider, self.logits_name, self.tap_names = (
            teacher.provider,
            teacher.logits_name,
            teacher.tap_names,
        )

    def run(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        try:
            return self.teacher.run(inputs)
        finally:
            self.seconds += time.perf_counter() - start


def bare_seconds(teacher: BareTeacher, inputs: np.ndarray, batch: int, rows_per_shard: int) -> float:
    """Time of sess.run over the same batches the writer runs (batches restart at each shard)."""
    start = time.perf_counter()
    for shard in range(0, len(inputs), rows_per_shard):
        for b in range(shard, min(shard + rows_per_shard, len(inputs)), batch):
            teacher.run(np.ascontiguousarray(inputs[b : min(b + batch, shard + rows_per_shard, len(inputs))]))
    return time.perf_counter() - start


def store_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def evict_pages(directory: Path) -> None:
    """Drop the page cache of every .npy under `directory` (posix_fadvise DONTNEED, no root needed)."""
    for path in directory.rglob("*.npy"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def cold_mmap_ms(cache, rows: int, batches: int = 10, seed: int = 1) -> float:
    """Median random 256-row batch (ms) of an MmapCache with its pages evicted before each batch
    (a cache larger than RAM: every row a page fault served from disk)."""
    rng = np.random.default_rng(seed)
    times = []
    for _ in range(batches):
        picks = rng.choice(rows, 256, replace=False)
        for array in (cache.logits, *cache.features.values()):
            array._mmap.madvise(mmap.MADV_DONTNEED)  # unmap this process's pages, then drop the page cache
        evict_pages(cache.sidecar)
        start = time.perf_counter()
        cache.batch(picks)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def reader_ms(cache, rows: int, batches: int = 50, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    cache.batch(rng.choice(rows, 256, replace=False))  # warm
    times = []
    for _ in range(batches):
        picks = rng.choice(rows, 256, replace=False)
        start = time.perf_counter()
        cache.batch(picks)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=16384)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5, help="paired (bare, stage) throughput runs")
    parser.add_argument(
        "--ort-threads",
        type=int,
        default=None,
        help="ONNX Runtime intra-op threads (default: every core). On a CPU-only machine the "
        "writer thread needs a core of its own to overlap: compare with cores - 1",
    )
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    try:
        rng = np.random.default_rng(0)
        n = args.rows
        rows = Rows(
            np.arange(n, dtype=np.int64),
            (np.arange(n) % 3).astype(np.int8),
            rng.integers(0, args.classes, n),
            rng.normal(size=(n, 3, 32, 32)).astype(np.float32),
        )
        export_teacher(tmp / "teacher.onnx", args.classes)
        teacher = BareTeacher(tmp / "teacher.onnx", args.ort_threads)
        params = CacheParams(batch_size=args.batch)
        teacher.run(rows.inputs[: args.batch])  # warm up
        print(
            f"cache benchmark: {n} rows, 3x32x32 CNN teacher, C={args.classes}, embed 128, batch "
            f"{args.batch}, "
            f"shard {params.rows_per_shard} rows"
        )

        # 1. Throughput, default params (zarr, float16): pairs of (bare, stage) runs, alternating.
        params = CacheParams(batch_size=args.batch)
        timed = TimedTeacher(teacher)
        ratios, bare_best, stage_best, inference_share = [], np.inf, np.inf, 0.0
        for _ in range(args.repeats):
            bare = bare_seconds(teacher, rows.inputs, args.batch, params.rows_per_shard)
            shutil.rmtree(tmp / "out", ignore_errors=True)
            timed.seconds = 0.0
            start = time.perf_counter()
            build_cache(
                rows,
                timed,
                "a" * 64,
                rows.fingerprint,
                params,
                tmp / "out" / "zarr",
                tmp / "scratch",
                progress=False,
            )
            stage = time.perf_counter() - start
            ratios.append(bare / stage)
            if stage < stage_best:
                inference_share = timed.seconds / stage
            bare_best, stage_best = min(bare_best, bare), min(stage_best, stage)
        print(
            f"  throughput (zarr, float16): bare sess.run best {n / bare_best:.0f} rows/s, cache stage best "
            f"{n / stage_best:.0f} rows/s; ratio of bests {bare_best / stage_best:.3f}, median of "
            f"{len(ratios)} paired ratios {np.median(ratios):.3f} (goal >= 0.95)"
        )
        print(
            f"  of the best stage run, teacher.run took {100 * inference_share:.1f}% of the wall time "
            f"(the rest: store creation, finalize, the last shard's unoverlapped write, waits)"
        )

        # 2. Reader.
        store_dir = tmp / "out" / "zarr"
        start = time.perf_counter()
        memory = open_cache(store_dir)
        open_s = time.perf_counter() - start
        lazy = open_cache(store_dir, mode="lazy")
        start = time.perf_counter()
        mapped = open_cache(store_dir, mode="mmap", mmap_dir=tmp / "mmap")
        build_s = time.perf_counter() - start
        start = time.perf_counter()
        open_cache(store_dir, mode="mmap", mmap_dir=tmp / "mmap")
        reopen_s = time.perf_counter() - start
        print(
            f"  reader mmap sidecar: build (verify every shard, write .npy) {build_s * 1000:.0f} ms, "
            f"reopen {reopen_s * 1000:.0f} ms"
        )
        for name, cache, batches in (
            ("in-RAM (StoredCache)", memory, 50),
            ("uncompressed mmap (MmapCache)", mapped, 50),
            ("lazy Zarr chunks", lazy, 10),
        ):
            ms = reader_ms(cache, n, batches=batches)
            print(f"  reader {name}: random 256-row batch {ms:.2f} ms ({1000 / ms:.0f} batches/s)")
        ms = cold_mmap_ms(mapped, n)
        print(
            f"  reader uncompressed mmap, pages evicted before each batch (read from disk): random 256-row "
            f"batch {ms:.2f} ms ({1000 / ms:.0f} batches/s)"
        )
        order = block_shuffle(np.arange(n), params.rows_per_chunk, 4, seed=0)
        times = []
        for start in range(0, min(n, 20 * 256), 256):
            t0 = time.perf_counter()
            lazy.batch(order[start : start + 256])
            times.append(time.perf_counter() - t0)
        ms = 1000 * float(np.median(times))
        print(
            f"  reader lazy Zarr chunks, block-shuffled batches (4 chunks per window): {ms:.2f} ms "
            f"({1000 / ms:.0f} batches/s)"
        )
        print(f"  reader open_cache (load + verify every shard into RAM): {open_s * 1000:.0f} ms")

        # 3. Bytes per sample.
        for store in ("zarr", "parquet"):
            for dtype in ("float16", "float32"):
                params = CacheParams(
                    store=store, logits_dtype=dtype, features_dtype=dtype, batch_size=args.batch
                )
                shutil.rmtree(tmp / "out", ignore_errors=True)
                build_cache(
                    rows,
                    teacher,
                    "a" * 64,
                    rows.fingerprint,
                    params,
                    tmp / "out" / store,
                    tmp / "scratch",
                    progress=False,
                )
                size = store_bytes(tmp / "out" / store)
                print(
                    f"  bytes/sample {store:8s} {dtype}: {size / n:6.1f} on disk "
                    f"(raw {17 + (args.classes + 128) * np.dtype(dtype).itemsize} B: ids, split, label, "
                    f"{args.classes} logits, 128 embed)"
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
