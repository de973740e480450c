"""Dask benchmarks, every ratio measured in one run on one machine (README's performance table).

1. N students on W local workers / the same N sequentially (goal >= 0.8 * W, for W=2, N=8). Real
   students (`pipeline.train.run.train_student`: MLP, CE + Hinton KD) trained from an on-disk Zarr
   cache; sequential runs in this process with 1 torch thread, workers with 1 thread each. Both
   sides are warm: the workers have imported torch and trained once before the clock starts.
2. The sharded cache stage (`build_cache_on_cluster`, ONNX Runtime teacher, 1 ORT thread per
   worker) on 2 workers / on 1 worker (goal: close to 2 on an idle 2-core machine).

On a shared machine the ratios move with the load: the load average is printed with them.

    .venv/bin/python benchmarks/bench_cluster.py [--students 8] [--workers 2] [--epochs 100]
    [--cache-rows 200000] [--repeats 2]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.cluster.sweep import student_tasks  # noqa: E402
from tests.cluster.student_project import students, write_project  # noqa: E402


def local_client(workers: int):
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        memory_limit="4GB",
        silence_logs=logging.ERROR,
    )
    return cluster, Client(cluster)


def _student_round(grid, prepared_dir, root: Path, tag: str) -> dict:
    """The sweep's tasks for `grid`, writing under root/<tag>/ (fresh outputs: nothing resumes)."""
    return student_tasks(grid, prepared_dir, root / tag / "train", root / tag / "scratch", threads=1)


def bench_students(root: Path, num_students: int, workers: int, epochs: int, repeats: int) -> float:
    """Seconds sequential / seconds on `workers` workers for `num_students` equal students.

    Sequential and parallel rounds alternate `repeats` times and the best of each is kept, so a
    burst of load from other users hits both sides alike.
    """
    import torch

    from pipeline.cluster.runner import run_tasks

    prepared_dir, cache_dir = write_project(root / "project")
    base = students(cache_dir, names=("kd",), epochs=epochs)["kd"]
    grid = {f"kd{i}": base.model_copy(update={"seeds": (i,)}) for i in range(num_students)}
    warm_grid = {f"warm{i}": base.model_copy(update={"epochs": 1}) for i in range(workers)}

    torch.set_num_threads(1)
    for fn, args, kwargs in _student_round(
        {"warm": warm_grid["warm0"]}, prepared_dir, root, "warm-seq"
    ).values():
        fn(*args, **kwargs)
    cluster, client = local_client(workers)
    sequential, parallel = [], []
    try:
        run_tasks(client, _student_round(warm_grid, prepared_dir, root, "warm-par"), progress=False)
        for repeat in range(repeats):
            start = time.perf_counter()
            for fn, args, kwargs in _student_round(grid, prepared_dir, root, f"seq{repeat}").values():
                fn(*args, **kwargs)
            sequential.append(time.perf_counter() - start)
            start = time.perf_counter()
            results = run_tasks(
                client, _student_round(grid, prepared_dir, root, f"par{repeat}"), progress=False
            )
            parallel.append(time.perf_counter() - start)
            failed = [name for name, r in results.items() if not r.ok]
            if failed:
                raise SystemExit(f"students failed: {failed}\n{results[failed[0]].error}")
    finally:
        client.close()
        cluster.close()
    ratio = min(sequential) / min(parallel)
    print(
        f"students: N={num_students}, W={workers}: sequential {min(sequential):.1f} s, on {workers} workers "
        f"{min(parallel):.1f} s (best of {repeats}) -> speedup {ratio:.2f} (goal >= {0.8 * workers:.1f})"
    )
    return ratio


def export_teacher(path: Path, in_features: int) -> None:
    """An MLP teacher (in -> 1024 -> 1024 -> 1024 -> 10, + a 64-wide tap): inference, not I/O, dominates."""
    import torch

    from pipeline.teacher.export import export_onnx

    class Teacher(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = torch.nn.Sequential(
                torch.nn.Flatten(),
                torch.nn.Linear(in_features, 1024),
                torch.nn.ReLU(),
                torch.nn.Linear(1024, 1024),
                torch.nn.ReLU(),
                torch.nn.Linear(1024, 1024),
                torch.nn.ReLU(),
            )
            self.embed = torch.nn.Linear(1024, 64)
            self.head = torch.nn.Linear(1024, 10)

        def forward(self, x):
            hidden = self.body(x)
            return self.head(hidden), self.embed(hidden)

    torch.manual_seed(0)
    export_onnx(Teacher(), torch.zeros(2, 1, 8, 8), path, ("logits", "embed"))


def bench_sharded_cache(root: Path, rows: int) -> float:
    """Seconds of the sharded cache build on 1 worker / on 2 workers (same bytes, checked)."""
    import numpy as np

    from pipeline.cache.params import CacheParams
    from pipeline.cluster.sharded_cache import build_cache_on_cluster
    from pipeline.data.prepared import make_prepared, write_prepared

    rng = np.random.default_rng(0)
    prepared = make_prepared(
        np.arange(rows),
        np.zeros(rows, np.int8),
        rng.integers(0, 10, rows),
        rng.normal(size=(rows, 1, 8, 8)).astype(np.float32),
        10,
    )
    write_prepared(prepared, root / "big")
    export_teacher(root / "teacher.onnx", 64)
    params = CacheParams(rows_per_chunk=1024, chunks_per_shard=2, batch_size=512)
    seconds, digests = {}, {}
    for workers in (1, 2):
        cluster, client = local_client(workers)
        try:
            client.run(lambda: __import__("onnxruntime") and __import__("pipeline.cache.writer"))
            start = time.perf_counter()
            result = build_cache_on_cluster(
                client,
                root / "big",
                root / "teacher.onnx",
                "s" * 64,
                prepared.fingerprint,
                params,
                root / f"cache{workers}" / "store",
                root / f"cache{workers}" / "scratch",
                provider="cpu",
                intra_op_threads=1,
                progress=False,
            )
            seconds[workers] = time.perf_counter() - start
        finally:
            client.close()
            cluster.close()
        digests[workers] = sorted(
            (p.relative_to(result.store_dir).as_posix(), p.read_bytes())
            for p in result.store_dir.rglob("*")
            if p.is_file()
        )
    assert digests[1] == digests[2], "the 1- and 2-worker caches differ"
    ratio = seconds[1] / seconds[2]
    print(
        f"sharded cache: {rows} rows, {result.store_dir.name}: 1 worker {seconds[1]:.1f} s, 2 workers "
        f"{seconds[2]:.1f} s -> speedup {ratio:.2f} (same bytes)"
    )
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=100, help="epochs per student (sets the task size)")
    parser.add_argument("--cache-rows", type=int, default=200000)
    parser.add_argument(
        "--repeats", type=int, default=2, help="alternating rounds; the best of each side is kept"
    )
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    try:
        print(
            f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores"
        )
        bench_students(root, args.students, args.workers, args.epochs, args.repeats)
        bench_sharded_cache(root, args.cache_rows)
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
