"""One plan and one finish for every way of building a cache (in this process, or on Dask workers).

`plan_build` takes the scratch build `create_store` made or reopened, lists the shards already
done and picks the reference rows; `finish_build` finalizes the store and assembles the reference
logits the report needs from what each shard kept. `pipeline.cache.writer.build_cache` and
`pipeline.cluster.sharded_cache.build_cache_sharded` differ only in how the shards in between get
computed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.cache.build import CacheBuild, completed_shards, finalize
from pipeline.cache.reference import reference_rows


@dataclass(frozen=True)
class BuildPlan:
    """What a build has to do: `build` (the scratch), `done` (shard indices already written) and
    `keep` ((n,) sorted int64 rows whose fp32 logits are kept for the report)."""

    build: CacheBuild
    done: frozenset[int]
    keep: np.ndarray

    def pending(self) -> list[int]:
        """Shard indices still to write, ascending."""
        return [k for k in range(self.build.layout.num_shards) if k not in self.done]


@dataclass(frozen=True)
class BuildResult:
    """What a cache build did.

    store_dir: the finished store. reference_rows (n,) int64 and reference_logits (n, C) float32:
    fp32 teacher logits kept for measuring the stored dtype's error. shards_written /
    shards_resumed: shards computed in this run / found complete in the scratch. provider: the
    execution provider the teacher ran on.
    """

    store_dir: Path
    reference_rows: np.ndarray
    reference_logits: np.ndarray
    shards_written: int
    shards_resumed: int
    provider: str


def plan_build(build: CacheBuild, kl_sample_rows: int) -> BuildPlan:
    """The plan of `build` (from `create_store`: a new scratch, or one to resume): the shards
    already done and the `kl_sample_rows` evenly spaced reference rows (at most 256 MiB of fp32
    logits, `reference_rows`)."""
    layout = build.layout
    keep = reference_rows(layout.num_rows, kl_sample_rows, layout.num_classes)
    if layout.logits != "row":  # the stored-dtype error is measured on per-row logits only
        keep = keep[:0]
    return BuildPlan(build, frozenset(completed_shards(build)), keep)


def finish_build(
    plan: BuildPlan, out_dir: str | Path, kept: Mapping[int, np.ndarray], provider: str
) -> BuildResult:
    """Finalize the store onto `out_dir` and return the BuildResult.

    kept: shard index -> (n_k, C) fp32 logits of the plan's `keep` rows inside that shard, for
    every shard (written in this run or resumed).
    """
    layout = plan.build.layout
    store_dir = finalize(plan.build, out_dir)
    reference = (
        np.concatenate([kept[k] for k in range(layout.num_shards)])
        if layout.num_shards
        else np.empty((0, layout.num_classes), np.float32)
    )
    resumed = len(plan.done)
    return BuildResult(store_dir, plan.keep, reference, layout.num_shards - resumed, resumed, provider)
