"""Run a cache build in its own process, optionally SIGKILLing itself at a chosen point.

    python -m tests.cache._build_subprocess DIR build [KILL_POINT SHARD]
    python -m tests.cache._build_subprocess DIR create
    python -m tests.cache._build_subprocess DIR shards K1,K2,...
    python -m tests.cache._build_subprocess DIR finalize

Kill points: after_record (shard k's progress record is on disk), mid_shard (three of shard k's
arrays written, no record), in_teacher (while the teacher runs shard k, earlier shards possibly
still being written), in_finalize (cache.json marked complete, store not yet moved).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from pipeline.cache import build as scratch
from pipeline.cache import shards
from pipeline.cache.zarr_store import ZarrStore
from tests.cache.helpers import FakeTeacher, build, make_rows, small_params


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _arm(kill_point: str, shard: int, teacher: FakeTeacher) -> None:
    rows_per_shard = small_params().rows_per_shard
    if kill_point == "after_record":
        real = shards._record_shard

        def record(build_, index, record_):
            real(build_, index, record_)
            if index == shard:
                _die()

        shards._record_shard = record
    elif kill_point == "mid_shard":
        real_write, written = ZarrStore.write_array, []

        def write_array(self, name, rows, values):
            real_write(self, name, rows, values)
            if rows.start // rows_per_shard == shard:
                written.append(name)
                if len(written) == 3:
                    _die()

        ZarrStore.write_array = write_array
    elif kill_point == "in_teacher":
        real_run = teacher.run
        inputs = make_rows().inputs

        def run(batch):
            if len(batch) > 1 and (batch[0] == inputs[shard * rows_per_shard + 10]).all():
                _die()
            return real_run(batch)

        teacher.run = run
    elif kill_point == "in_finalize":
        real_replace = scratch.replace_dir

        def replace_dir(*args):
            _die()
            return real_replace(*args)

        scratch.replace_dir = replace_dir
    else:
        raise SystemExit(f"unknown kill point {kill_point}")


def main(argv: list[str]) -> int:
    tmp, command = Path(argv[0]), argv[1]
    rows, teacher, params = make_rows(), FakeTeacher(), small_params()
    scratch_dir = tmp / "cache" / "scratch"
    if command == "build":
        if len(argv) > 2:
            _arm(argv[2], int(argv[3]), teacher)
        build(tmp, rows, teacher, params)
    elif command == "create":
        scratch.create_store(scratch_dir, rows, teacher, "t" * 64, rows.fingerprint, params)
    elif command == "shards":
        handle = scratch.open_build(scratch_dir, rows)
        for index in map(int, argv[2].split(",")):
            shards.write_shard(handle, index, teacher)
    elif command == "finalize":
        scratch.finalize(scratch.open_build(scratch_dir, rows), tmp / "cache" / "store")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
