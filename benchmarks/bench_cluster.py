"""Dask benchmarks, every ratio measured in one run on one machine (DESIGN.md performance figures).

1. N students on W local workers / the same N sequentially (goal >= 0.8 * W, for W=2, N=8). Real
   students (`pipeline.train.run.train_student`: MLP, CE + Hinton KD) trained from an on-disk Zarr
   cache; sequential runs in this process with 1 torch thread, workers with 1 thread each. Both
   sides are warm: the workers have imported torch and trained once before the clock starts.
2. The sharded cache stage (`build_cache_on_cluster`, ONNX Runtime teacher, 1 ORT thread per
   worker) on 2 workers / on 1 worker (goal: close to 2 on an idle 2-core machine).

On a shared machine the ratios move with the load: the load average is printed with them.

    .venv/bin/python benchmarks/bench_cluster.py [--students 8] [--workers 2] [--epochs 30] [--cache-rows 50000]
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

    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None, memory_limit="4GB", silence_logs=logging.ERROR)
    return cluster, Client(cluster)


def bench_students(root: Path, num_students: int, workers: int, epochs: int) -> float:
    """Seconds sequential / seconds on `workers` workers for `num_students` equal students."""
    import torch

    from pipeline.cluster.runner import run_tasks

    prepared_dir, cache_dir = write_project(root / "project")
    base = students(cache_dir, names=("kd",), epochs=epochs)["kd"]
    grid = {f"kd{i}": base.model_copy(update={"seeds": (i,)}) for i in range(num_students)}
    tasks = student_tasks(grid, prepared_dir, root / "train", root / "scratch", threads=1)
    warm = student_tasks({"warm": base.model_copy(update={"epochs": 1})}, prepared_dir, root / "warm",
                         root / "warm-scratch", threads=1)["warm"]

    torch.set_num_threads(1)
    fn, args, kwargs = warm
    fn(*args, **kwargs)
    start = time.perf_counter()
    for name, (fn, args, kwargs) in tasks.items():
        fn(*args, **{**kwargs, "out_dir": kwargs["out_dir"] + "-seq", "scratch_dir": kwargs["scratch_dir"] + "-seq"})
    sequential_s = time.perf_counter() - start

    cluster, client = local_client(workers)
    try:
        warm_tasks = {f"warm{i}": (warm[0], warm[1], {**warm[2], "out_dir": f"{warm[2]['out_dir']}{i}",
                                                      "scratch_dir": f"{warm[2]['scratch_dir']}{i}"})
                      for i in range(workers)}
        run_tasks(client, warm_tasks, progress=False)
        start = time.perf_counter()
        results = run_tasks(client, tasks, progress=False)
        parallel_s = time.perf_counter() - start
    finally:
        client.close()
        cluster.close()
    failed = [name for name, r in results.items() if not r.ok]
    if failed:
        raise SystemExit(f"students failed: {failed}\n{results[failed[0]].error}")
    ratio = sequential_s / parallel_s
    print(f"students: N={num_students}, W={workers}: sequential {sequential_s:.1f} s, on {workers} workers "
          f"{parallel_s:.1f} s -> speedup {ratio:.2f} (goal >= {0.8 * workers:.1f})")
    return ratio


def export_teacher(path: Path, in_features: int) -> None:
    """An MLP teacher (in -> 1024 -> 1024 -> 1024 -> 10, + a 64-wide tap): inference, not I/O, dominates."""
    import torch

    from pipeline.teacher.export import export_onnx

    class Teacher(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(in_features, 1024), torch.nn.ReLU(),
                                            torch.nn.Linear(1024, 1024), torch.nn.ReLU(),
                                            torch.nn.Linear(1024, 1024), torch.nn.ReLU())
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
    prepared = make_prepared(np.arange(rows), np.zeros(rows, np.int8), rng.integers(0, 10, rows),
                             rng.normal(size=(rows, 1, 8, 8)).astype(np.float32), 10)
    write_prepared(prepared, root / "big")
    export_teacher(root / "teacher.onnx", 64)
    params = CacheParams(rows_per_chunk=1024, chunks_per_shard=2, batch_size=512)
    seconds, digests = {}, {}
    for workers in (1, 2):
        cluster, client = local_client(workers)
        try:
            client.run(lambda: __import__("onnxruntime") and __import__("pipeline.cache.writer"))
            start = time.perf_counter()
            result = build_cache_on_cluster(client, root / "big", root / "teacher.onnx", "s" * 64,
                                            prepared.fingerprint, params, root / f"cache{workers}" / "store",
                                            root / f"cache{workers}" / "scratch", provider="cpu",
                                            intra_op_threads=1, progress=False)
            seconds[workers] = time.perf_counter() - start
        finally:
            client.close()
            cluster.close()
        digests[workers] = sorted((p.relative_to(result.store_dir).as_posix(), p.read_bytes())
                                  for p in result.store_dir.rglob("*") if p.is_file())
    assert digests[1] == digests[2], "the 1- and 2-worker caches differ"
    ratio = seconds[1] / seconds[2]
    print(f"sharded cache: {rows} rows, {result.store_dir.name}: 1 worker {seconds[1]:.1f} s, 2 workers "
          f"{seconds[2]:.1f} s -> speedup {ratio:.2f} (same bytes)")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=30, help="epochs per student (sets the task size)")
    parser.add_argument("--cache-rows", type=int, default=50000)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    try:
        print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
        bench_students(root, args.students, args.workers, args.epochs)
        bench_sharded_cache(root, args.cache_rows)
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
