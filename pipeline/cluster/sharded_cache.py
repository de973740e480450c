"""Sharded teacher inference: the cache's shards are computed and written by Dask workers.

The client creates the scratch store once (`create_store`) and plans the build
(`pipeline.cache.plan.plan_build`: the shards already done, the reference rows), splits the shards
not yet written into contiguous groups of WHOLE shards, and submits one task per group. Each task
opens its own rows and its own teacher (an ONNX Runtime session with 1 intra-op thread by default)
on its worker, then computes and commits its shards one by one. No two writers ever touch one
shard: zarr 3.1.6 silently loses data when two processes write parts of the same shard. The client
then finishes the build (`finish_build`, the same as `build_cache`'s). Teacher batches start at each
shard's first row, so the store is byte-identical to a single-process `build_cache` (tests/cluster
prove it).

A failing group loses nothing already written: its finished shards keep their progress records
and the next run resumes from them.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.cache.build import create_store, open_build
from pipeline.cache.params import CacheParams
from pipeline.cache.plan import BuildResult, finish_build, plan_build
from pipeline.cache.shards import commit_shard, compute_shard
from pipeline.cluster.engine import open_client
from pipeline.cluster.params import AddressParams, LocalParams, PBSParams, SlurmParams
from pipeline.cluster.runner import ClusterLike, run_tasks
from pipeline.errors import DistilleryError

ShardOpener = Callable[[], Any]
"""A picklable callable of no arguments, run on each worker: returns the rows, or the teacher."""


class ShardedCacheError(DistilleryError):
    """Some shard groups failed; the shards they finished are kept and a re-run resumes."""


def onnx_teacher_opener(
    path: str | Path, provider: str = "auto", intra_op_threads: int = 1, **names: Any
) -> ShardOpener:
    """A picklable opener of the ONNX teacher at `path` for workers (1 ORT thread by default, so
    W workers do not oversubscribe the cores)."""
    from pipeline.teacher.session import open_teacher

    return functools.partial(
        open_teacher, str(Path(path).resolve()), provider=provider, intra_op_threads=intra_op_threads, **names
    )


def prepared_rows_opener(prepared_dir: str | Path) -> ShardOpener:
    """A picklable opener of the prepared dataset in `prepared_dir` (each worker opens it once: whole
    when small, as digits; else memory-mapped shards read per batch, so W workers never hold W copies)."""
    from pipeline.data.prepared import open_for_reading

    return functools.partial(open_for_reading, str(Path(prepared_dir).resolve()))


def plan_shard_groups(pending_shards: list[int], num_groups: int) -> list[list[int]]:
    """Split pending shard indices (ascending) into at most `num_groups` contiguous, non-empty groups
    of whole shards, sizes differing by at most one."""
    if not pending_shards:
        return []
    groups = np.array_split(np.asarray(sorted(pending_shards)), min(num_groups, len(pending_shards)))
    return [[int(k) for k in group] for group in groups if len(group)]


_OPENED: dict[str, tuple[str, Any]] = {}
"""Per worker process: "rows"/"teacher" -> (token, what the opener returned). One entry each, so a
worker running several shard groups of one build loads the rows and opens the teacher once. The
token holds the build fingerprint (dataset and teacher sha256), so a long-lived worker never
reuses rows or a teacher across builds, even when the files at the same paths have changed."""


def _open_once(kind: str, opener: ShardOpener, build_fingerprint: str) -> Any:
    from dask.base import tokenize

    token = tokenize(opener, build_fingerprint)
    cached = _OPENED.get(kind)
    if cached is None or cached[0] != token:
        _OPENED.pop(kind, None)  # free the previous one before loading the next
        _OPENED[kind] = (token, opener())
    return _OPENED[kind][1]


def _write_shard_group(
    scratch_dir: str,
    build_fingerprint: str,
    open_rows: ShardOpener,
    open_teacher: ShardOpener,
    shard_indices: list[int],
    written: list[bool],
    keep_rows: np.ndarray,
) -> dict[str, Any]:
    """Runs on a worker: compute every shard of the group whole; commit those not yet written.

    Returns {"provider": str, "reference": {shard: (n, C) float32 fp32 logits of keep_rows}}.
    """
    build = open_build(scratch_dir, _open_once("rows", open_rows, build_fingerprint))
    teacher = _open_once("teacher", open_teacher, build_fingerprint)
    reference = {}
    for shard_index, already_written in zip(shard_indices, written):
        rows = build.layout.shard_rows(shard_index)
        if already_written and not ((keep_rows >= rows.start) & (keep_rows < rows.stop)).any():
            reference[shard_index] = np.empty((0, build.layout.num_classes), np.float32)
            continue
        arrays, kept = compute_shard(build, shard_index, teacher, keep_rows)
        if not already_written:
            commit_shard(build, shard_index, arrays)
        reference[shard_index] = kept
    return {"provider": str(getattr(teacher, "provider", "unknown")), "reference": reference}


def build_cache_sharded(
    cluster: ClusterLike,
    open_rows: ShardOpener,
    open_teacher: ShardOpener,
    teacher_sha256: str,
    dataset_fingerprint: str,
    params: CacheParams,
    out_dir: str | Path,
    scratch_dir: str | Path,
    groups_per_worker: int = 2,
    progress: bool = True,
) -> BuildResult:
    """`pipeline.cache.writer.build_cache`, with the shards computed and written by Dask workers
    (the same `plan_build` before and `finish_build` after).

    cluster: the `cluster:` params (an engine is started and stopped) or an open Client.
    open_rows / open_teacher: picklable openers run on each worker (and once here, to create the
        store); see `prepared_rows_opener` and `onnx_teacher_opener`.
    groups_per_worker: shard groups (tasks) per worker; more groups balance uneven workers.
    Returns the same BuildResult as build_cache (reference logits for the report included).
    Shards already written in `scratch_dir` are not rewritten. Raises ShardedCacheError naming the
    failed shard groups (with the first traceback); their finished shards are kept.
    """
    scratch_dir = Path(scratch_dir).resolve()
    build = create_store(
        scratch_dir, open_rows(), open_teacher(), teacher_sha256, dataset_fingerprint, params
    )
    plan = plan_build(build, params.kl_sample_rows)
    is_params = isinstance(cluster, (LocalParams, SlurmParams, PBSParams, AddressParams))
    resources = cluster.task_resources if is_params else {}
    with open_client(cluster) if is_params else contextlib.nullcontext(cluster) as client:
        workers = max(1, len(client.scheduler_info(n_workers=-1)["workers"]))
        groups = plan_shard_groups(list(range(plan.build.layout.num_shards)), workers * groups_per_worker)
        tasks = {
            f"shards-{group[0]}-{group[-1]}": (
                _write_shard_group,
                (
                    str(scratch_dir),
                    plan.build.metadata.build_fingerprint,
                    open_rows,
                    open_teacher,
                    group,
                    [k in plan.done for k in group],
                    plan.keep,
                ),
                {},
            )
            for group in groups
        }
        results = run_tasks(client, tasks, resources=resources, progress=progress, desc="cache shards")
    failed = {name: result for name, result in results.items() if not result.ok}
    if failed:
        first = next(iter(failed.values()))
        raise ShardedCacheError(
            f"{len(failed)} of {len(tasks)} shard groups failed ({', '.join(failed)}); the shards they "
            f"finished are kept in {scratch_dir}, re-run to resume. First failure: "
            f"{first.error.strip().splitlines()[-1]}\n{first.error}"
        )
    kept: dict[int, np.ndarray] = {}
    for result in results.values():
        kept.update(result.value["reference"])
    provider = next(iter(results.values())).value["provider"] if results else "none"
    return finish_build(plan, out_dir, kept, provider)


def build_cache_on_cluster(
    cluster: ClusterLike,
    prepared_dir: str | Path,
    teacher_path: str | Path,
    teacher_sha256: str,
    dataset_fingerprint: str,
    params: CacheParams,
    out_dir: str | Path,
    scratch_dir: str | Path,
    input_name: str = "input",
    logits_name: str | None = "logits",
    tap_names: Any = None,
    provider: str = "auto",
    intra_op_threads: int | None = None,
    progress: bool = True,
    inputs: dict[str, str] | None = None,
    max_length: int | None = None,
    per_token: Any = None,
) -> BuildResult:
    """The cache stage's sharded build: workers load `prepared_dir` and open the ONNX teacher at
    `teacher_path` themselves (names and provider as in the `teacher:` section; ORT threads:
    `intra_op_threads`, else the cluster's threads per worker, else 1), then `build_cache_sharded`.
    The cache stage calls it where `cluster.shard_cache` is true."""
    threads = intra_op_threads or getattr(cluster, "threads_per_worker", 1) or 1
    teacher = onnx_teacher_opener(
        teacher_path,
        provider,
        threads,
        input_name=input_name,
        logits_name=logits_name,
        tap_names=tap_names,
        inputs=inputs,
        max_length=max_length,
        per_token=per_token,
    )
    return build_cache_sharded(
        cluster,
        prepared_rows_opener(prepared_dir),
        teacher,
        teacher_sha256,
        dataset_fingerprint,
        params,
        out_dir,
        scratch_dir,
        progress=progress,
    )
