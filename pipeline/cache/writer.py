"""Build the teacher cache in this process: `build_cache`, resumable, inference overlapped with writing.

The teacher computes shard k+1 while a writer thread commits shard k (a queue of one shard), then
`pipeline.cache.plan.finish_build` finalizes the store. The same store comes out of a build that
was killed and resumed, or whose shards were written by Dask workers
(`pipeline.cluster.sharded_cache`): see `pipeline.cache.build`.
"""

from __future__ import annotations

import logging
import queue
import threading
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.cache.build import CacheBuild, RowSource, create_store
from pipeline.cache.params import CacheParams
from pipeline.cache.plan import BuildResult, finish_build, plan_build
from pipeline.cache.reference import shard_reference_logits
from pipeline.cache.shards import commit_shard, compute_shard
from pipeline.cache.teacher_outputs import Teacher

log = logging.getLogger(__name__)

__all__ = ["BuildResult", "build_cache"]


class _ShardWriter:
    """A thread writing computed shards while the teacher computes the next (bounded queue)."""

    def __init__(self, build: CacheBuild) -> None:
        self.build = build
        self.queue: queue.Queue = queue.Queue(maxsize=1)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name="cache-shard-writer", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is not None:
                continue
            shard_index, arrays = item
            try:
                commit_shard(self.build, shard_index, arrays)
            except BaseException as error:  # re-raised in the main thread by close()
                self.error = error

    def put(self, shard_index: int, arrays: dict[str, np.ndarray]) -> None:
        self.queue.put((shard_index, arrays))

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()


def build_cache(
    data: RowSource,
    teacher: Teacher,
    teacher_sha256: str,
    dataset_fingerprint: str,
    params: CacheParams,
    out_dir: str | Path,
    scratch_dir: str | Path,
    progress: bool | None = None,
) -> BuildResult:
    """Run the teacher over every row and write the cache to `out_dir`, resuming from `scratch_dir`.

    Inference of shard k+1 overlaps the writing of shard k. progress: tqdm bar (None = only on a
    tty). Raises TeacherOutputError (a wrong output shape, NaN/Inf) or CacheDiskFullError with
    completed shards kept.
    """
    provider = str(getattr(teacher, "provider", "an unnamed provider"))
    log.info("cache: the teacher runs on %s", provider)
    build = create_store(scratch_dir, data, teacher, teacher_sha256, dataset_fingerprint, params)
    plan = plan_build(build, params.kl_sample_rows)
    kept: dict[int, np.ndarray] = {}
    bar = tqdm(
        total=build.layout.num_rows,
        initial=sum(build.layout.shard_rows(k).stop - build.layout.shard_rows(k).start for k in plan.done),
        unit="row",
        desc="cache",
        disable=(not progress) if progress is not None else None,
    )
    writer = _ShardWriter(build)
    try:
        for shard_index in plan.pending():
            if writer.error is not None:
                break
            arrays, kept[shard_index] = compute_shard(build, shard_index, teacher, plan.keep)
            writer.put(shard_index, arrays)
            rows = build.layout.shard_rows(shard_index)
            bar.update(rows.stop - rows.start)
    finally:
        writer.close()
        bar.close()
    if writer.error is not None:
        raise writer.error
    for shard_index in sorted(plan.done):  # reference logits of resumed shards: recompute those batches only
        kept[shard_index] = shard_reference_logits(build, shard_index, teacher, plan.keep)
    return finish_build(plan, out_dir, kept, provider)
