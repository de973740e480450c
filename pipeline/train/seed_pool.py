"""A student's seeds trained side by side in forked processes, one CPU core each.

A small student trains at one thread (`torch_threads: 1`): a step is a few hundred microseconds of
single-threaded ops, so on a 2-core machine one core sits idle while its seeds run one after the
other. Each seed is independent (its own RNG stream, checkpoint directory and output directory), so
the seeds of one student can run at once; a seed trained in a child process is the same model, bit
for bit, as that seed trained in the parent (tests/train/test_seed_pool.py). The children are
forked, so they start with torch, the cache and the joined training data already in memory (no
import, no re-read), and die with the parent (PR_SET_PDEATHSIG), so a killed `dvc repro` leaves no
child writing into the staging directory; every seed resumes from its own checkpoints as before.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

from tqdm import tqdm

from pipeline.train.distributed import die_with_parent

_JOB: Callable[[int], Any] | None = None
"""The seed function the forked children call (set before the pool forks them)."""


def seed_processes(requested: int | None, seeds: int, threads: int | None, device: str, world: int) -> int:
    """How many processes train `seeds` seeds: `requested` (params' `seed_processes`), or when None
    as many as seeds and cores allow at `threads` intra-op threads each. 1 (in this process) on a
    GPU (CUDA cannot be forked), under DDP (`world` > 1), or where fork is not available."""
    if device != "cpu" or world > 1 or seeds < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return 1
    if requested is not None:
        return max(1, min(requested, seeds))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(seeds, cores // max(threads or cores, 1)))


def _run(seed: int) -> Any:
    assert _JOB is not None
    return _JOB(seed)


def map_seeds(
    job: Callable[[int], Any], seeds: Sequence[int], processes: int, progress: str | None = None
) -> dict[int, Any]:
    """seed -> job(seed) for every seed, in `processes` forked processes (in this one when 1).
    `job` must be safe to run in a fork of this process (no CUDA, no open process group); what it
    returns must pickle. An exception in a child is raised here, as `job` raised it. progress: with
    several processes, a bar of that description counting finished seeds (each seed's own step bar
    is left to a single process)."""
    global _JOB
    if processes <= 1:
        return {seed: job(seed) for seed in seeds}
    _JOB = job
    try:
        context = multiprocessing.get_context("fork")
        pool = ProcessPoolExecutor(
            processes, mp_context=context, initializer=die_with_parent, initargs=(os.getpid(),)
        )
        with pool, tqdm(total=len(seeds), desc=progress, unit="seed", disable=progress is None) as bar:
            futures = {pool.submit(_run, seed): seed for seed in seeds}
            results = {}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                bar.update()
        return {seed: results[seed] for seed in seeds}
    finally:
        _JOB = None
