"""The `train` stage as one of the processes `launch` starts, with two test hooks: each rank writes its
process id to $DDP_TEST_PIDS/<rank>, and rank 0 kills the launcher with SIGKILL after optimiser step
$DDP_TEST_KILL_AT_STEP (tests/train/test_distributed.py)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from pipeline.train import run
from pipeline.train.distributed import WORKER_ENV
from stages.cli import main

_run_seed = run.run_seed


def _run_seed_killing_the_launcher(*args, on_step=None, **kwargs):
    kill_at = int(os.environ["DDP_TEST_KILL_AT_STEP"])

    def hook(step):
        if on_step:
            on_step(step)
        if step == kill_at and os.environ["RANK"] == "0":
            os.kill(int(os.environ[WORKER_ENV]), signal.SIGKILL)

    return _run_seed(*args, on_step=hook, **kwargs)


if __name__ == "__main__":
    Path(os.environ["DDP_TEST_PIDS"], os.environ["RANK"]).write_text(str(os.getpid()))
    run.run_seed = _run_seed_killing_the_launcher
    sys.exit(main())
