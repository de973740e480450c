"""One student on several processes: PyTorch DDP, started by torch's own launcher (torchrun).

`launch` runs `torch.distributed.run` (torchrun `--standalone`) inside the calling process, which
becomes its agent: it starts `nproc` copies of a command on this machine, each with RANK,
WORLD_SIZE and LOCAL_RANK set, and fails as a whole when one copy fails. Each copy (a *rank*)
builds the same student from the same seed, reads its own slice of every global batch
(`local_rows`), and wraps the modules in DistributedDataParallel, which averages the gradients
over the ranks in the backward pass: the step of N processes is the step of one process on the
whole batch, up to the order of the float additions in the all-reduce. Rank 0 alone writes
checkpoints, logs and outputs.

A rank dies with its launcher (Linux: PR_SET_PDEATHSIG; elsewhere a thread that watches the
parent), so a launcher killed with SIGKILL leaves no process behind to write into the scratch
directory that the next run resumes from.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from pipeline.errors import DistilleryError

WORKER_ENV = "DISTILLERY_DDP_WORKER"
"""Set to the launcher's process id in the processes `launch` starts (so they do not launch again)."""


class DistributedError(DistilleryError):
    """A student cannot train on several processes, or one of its processes failed."""


@dataclass(frozen=True)
class Ranks:
    """Where this process stands among those training one student.

    rank: 0 .. world - 1 (rank 0 writes). world: number of processes. local_rank: rank on this
    machine (the GPU index on CUDA)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def writes(self) -> bool:
        """Whether this process writes checkpoints, logs and outputs (rank 0)."""
        return self.rank == 0

    @classmethod
    def from_environment(cls) -> Ranks:
        """The ranks torchrun set (RANK, WORLD_SIZE, LOCAL_RANK); one process when unset."""
        return cls(
            int(os.environ.get("RANK", 0)),
            int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)),
        )


SINGLE = Ranks()


def in_worker() -> bool:
    """Whether this process was started by `launch` (it trains; it must not launch again)."""
    return bool(os.environ.get(WORKER_ENV))


def launch(nproc: int, module: str, arguments: Sequence[str]) -> None:
    """Run `python -m module *arguments` as `nproc` processes of this machine through
    `torch.distributed.run --standalone` (rendezvous on a free local port), this process being the
    agent; returns when all exited with 0, else DistributedError naming the ranks that failed
    (their own messages are printed above it)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(["--standalone", f"--nproc-per-node={nproc}", "--module", module])
    args.training_script_args = list(arguments)  # not parsed: torchrun's options abbreviate (--nproc)
    saved = os.environ.get(WORKER_ENV)
    os.environ[WORKER_ENV] = str(os.getpid())
    try:
        run(args)
    except ChildFailedError as error:
        failed = ", ".join(
            f"rank {rank} (exit code {failure.exitcode})" for rank, failure in sorted(error.failures.items())
        )
        raise DistributedError(
            f"{len(error.failures)} of {nproc} processes failed: {failed}; the first error is printed above"
        ) from None
    finally:
        if saved is None:
            os.environ.pop(WORKER_ENV, None)
        else:
            os.environ[WORKER_ENV] = saved


def die_with_launcher() -> None:
    """In a process started by `launch`: be killed when the launcher dies (even by SIGKILL)."""
    launcher = int(os.environ.get(WORKER_ENV) or 0)
    if launcher:
        die_with_parent(launcher)


def die_with_parent(parent: int) -> None:
    """Be killed (SIGKILL) when process `parent`, this one's parent, dies, even by SIGKILL."""
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1  # noqa: N806 (linux/prctl.h)
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)

    def watch() -> None:  # the portable fallback (and the case of a parent already gone)
        while os.getppid() == parent:
            time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="distillery-parent-watch", daemon=True).start()


@contextlib.contextmanager
def process_group(ranks: Ranks, device: torch.device) -> Iterator[None]:
    """The default process group of the ranks (gloo on the CPU, NCCL on CUDA), for the duration;
    nothing for one process."""
    if ranks.world == 1:
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo", rank=ranks.rank, world_size=ranks.world
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


def local_rows(rows: np.ndarray, batch_size: int, ranks: Ranks) -> np.ndarray:
    """The rows this rank reads: its slice of each global batch.

    rows: (n,) the epoch's rows in the seeded global order, n a multiple of `batch_size` (the
    global batch). Rank r takes rows [r*b, (r+1)*b) of each batch, b = batch_size / world, so the
    ranks together read each global batch exactly once and a step of N processes sees the rows
    one process sees."""
    if ranks.world == 1:
        return rows
    share = batch_size // ranks.world
    return rows.reshape(-1, batch_size)[:, ranks.rank * share : (ranks.rank + 1) * share].reshape(-1)


def seed_step(seed: int, step: int, ranks: Ranks) -> None:
    """On several processes, seed torch per (seed, rank, step) before each step: each rank draws its
    own dropout masks and samples, and a resumed run draws what the killed one would have, with
    no generator state to gather from every rank. One process keeps its one stream (checkpointed)."""
    if ranks.world > 1:
        torch.manual_seed(
            int(np.random.SeedSequence([seed, ranks.rank, step]).generate_state(1, np.uint64)[0])
        )


def wrap(module: torch.nn.Module, device: torch.device, ranks: Ranks) -> torch.nn.Module:
    """`module` in DistributedDataParallel (gradients averaged over the ranks), when there are
    several ranks and it has trainable parameters; else `module` itself."""
    if ranks.world == 1 or not any(p.requires_grad for p in module.parameters()):
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def mean_over_ranks(values: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """The mean of `values` over the ranks (every rank gets it); `values` itself for one process."""
    if ranks.world == 1:
        return values
    dist.all_reduce(values)
    return values / ranks.world


def check_split(params, nproc: int) -> None:
    """DistributedError unless `params` (StudentParams) can train on `nproc` processes (a cohort or
    a term relating a batch's rows cannot; the batch must split evenly): see split_refusal."""
    from pipeline.train.params import split_refusal

    reason = split_refusal(params, nproc)
    if reason:
        raise DistributedError(f"nproc {nproc}: {reason}")
