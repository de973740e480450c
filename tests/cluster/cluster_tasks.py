"""Plain task functions the cluster tests run on Dask workers.

Registered with cloudpickle by value, so a worker that cannot import this test folder (a Slurm
job, a spawned process) still gets the functions.
"""

from __future__ import annotations

import os
import sys

import cloudpickle

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def square(x: int) -> int:
    return x * x


def raise_value_error(message: str) -> None:
    raise ValueError(message)


def worker_pid() -> int:
    return os.getpid()


def write_marker(path: str, text: str) -> str:
    with open(path, "w") as handle:
        handle.write(text)
    return path


def exit_worker_process() -> None:
    os._exit(3)


def slurm_job_id() -> str | None:
    """The Slurm job this task runs in (None outside Slurm)."""
    return os.environ.get("SLURM_JOB_ID")
