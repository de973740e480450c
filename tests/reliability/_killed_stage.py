"""Run one `distillery` stage in this process and SIGKILL it at a chosen point.

    python -m tests.reliability._killed_stage KILL_POINT STAGE [ARGS...]

Kill points (the process dies with SIGKILL, so no `finally` or `except` runs):
  replace:NAME    just before a file or directory named NAME is renamed into place (its bytes are
                  complete in a temporary file: the last instant an atomic write can be interrupted)
  record:K        right after the cache build recorded shard K as done
  teacher:N       inside the N-th teacher forward pass of the cache build
  step:N          before the N-th optimiser step of training
  sigint:N        sends itself SIGINT (Ctrl-C) before the N-th optimiser step, and carries on
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _arm(kill_point: str) -> None:
    kind, _, value = kill_point.partition(":")
    if kind == "replace":
        real_replace = os.replace

        def replace(src, dst, *args, **kwargs):
            if Path(dst).name == value:
                _die()
            return real_replace(src, dst, *args, **kwargs)

        os.replace = replace
    elif kind == "record":
        from pipeline.cache import shards

        real_record = shards._record_shard

        def record(build, index, payload):
            real_record(build, index, payload)
            if index == int(value):
                _die()

        shards._record_shard = record
    elif kind == "teacher":
        from pipeline.teacher.session import TeacherSession

        real_run, calls = TeacherSession.run, [0]

        def run(self, inputs):
            calls[0] += 1
            if calls[0] == int(value):
                _die()
            return real_run(self, inputs)

        TeacherSession.run = run
    elif kind in ("step", "sigint"):
        import torch

        real_step, calls = torch.optim.AdamW.step, [0]

        def step(self, *args, **kwargs):
            calls[0] += 1
            if calls[0] == int(value):
                if kind == "sigint":
                    os.kill(os.getpid(), signal.SIGINT)  # Python raises KeyboardInterrupt right here
                else:
                    _die()
            return real_step(self, *args, **kwargs)

        torch.optim.AdamW.step = step
    else:
        raise SystemExit(f"unknown kill point {kill_point!r}")


def main(argv: list[str]) -> int:
    _arm(argv[0])
    from stages.cli import main as cli_main

    return cli_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
