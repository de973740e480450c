"""Start (or connect to) the Dask engine that `cluster:` names, and hand back a Client.

local   -> distributed.LocalCluster: worker processes, loopback only, no dashboard unless asked.
slurm   -> dask_jobqueue.SLURMCluster, pbs -> dask_jobqueue.PBSCluster: one batch job per worker; the
           scheduler listens on one address (never 0.0.0.0), its HTTP server on loopback, TLS on ask.
address -> a Client on an existing scheduler; nothing is started or stopped.

Everything the engine starts is stopped when the `with` block ends (batch jobs are cancelled).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

from pipeline.cluster.params import AddressParams, LocalParams, PBSParams, SlurmParams
from pipeline.errors import DistilleryError


class ClusterStartError(DistilleryError):
    """The engine started but no worker joined in time, or it could not start at all."""


@contextlib.contextmanager
def _port_moves_are_not_news() -> Iterator[None]:
    """With the dashboard off the scheduler still serves /health on 8787, or on any free port when
    8787 is taken (several clusters on one machine); that move is not worth a warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Port .* is already in use", category=UserWarning)
        yield


def _local_cluster(params: LocalParams):
    from distributed import LocalCluster

    kwargs: dict[str, Any] = dict(
        n_workers=params.workers,
        threads_per_worker=params.threads_per_worker,
        processes=True,
        memory_limit=params.memory,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:8787" if params.dashboard else None,
        silence_logs=logging.ERROR,
    )
    if params.local_directory:
        kwargs["local_directory"] = params.local_directory
    if params.gpus_per_worker:
        kwargs["resources"] = {"GPU": params.gpus_per_worker}
    with _port_moves_are_not_news():
        return LocalCluster(**kwargs)


def scheduler_options(params: SlurmParams | PBSParams) -> dict[str, Any]:
    """Where the jobqueue scheduler listens: `scheduler_interface`, else `interface`, else the one
    address this machine reaches other hosts on (the address dask-jobqueue gives the workers anyway),
    never every interface; its HTTP server (dashboard, /health) only on 127.0.0.1."""
    from distributed.utils import get_ip

    options: dict[str, Any] = {
        "dashboard": params.dashboard,
        "dashboard_address": "127.0.0.1:8787" if params.dashboard else "127.0.0.1:0",
    }
    interface = params.scheduler_interface or params.interface
    if interface:
        options["interface"] = interface
    else:
        options["host"] = get_ip()
    return options


def cluster_security(params: SlurmParams | PBSParams) -> Any:
    """The `distributed.Security` of `params.tls` (None when off): a throw-away certificate for
    `tls: true`, else the given files; encryption required either way."""
    if params.tls is False:
        return None
    from distributed.security import Security

    if params.tls is True:
        return Security.temporary()
    files = params.tls
    roles = {}
    for role in ("scheduler", "worker", "client"):
        roles[f"tls_{role}_cert"] = files.cert_file
        roles[f"tls_{role}_key"] = files.key_file
    return Security(tls_ca_file=files.ca_file, require_encryption=True, **roles)


def jobqueue_kwargs(params: SlurmParams | PBSParams) -> dict[str, Any]:
    """The dask-jobqueue constructor arguments for a slurm/pbs section (pure but for a throw-away
    certificate with `tls: true`; for tests and docs)."""
    worker_args = list(params.worker_extra_args)
    if params.gpus_per_worker:
        worker_args += ["--resources", f"GPU={params.gpus_per_worker}"]
    directives = list(params.job_extra_directives)
    if (
        isinstance(params, SlurmParams)
        and params.gpus_per_worker
        and not any(("gres" in d or "gpu" in d) for d in directives)
    ):
        directives.append(f"--gres=gpu:{params.gpus_per_worker * params.processes}")
    kwargs: dict[str, Any] = dict(
        cores=params.cores,
        processes=params.processes,
        memory=params.memory,
        walltime=params.walltime,
        queue=params.queue,
        account=params.account,
        job_extra_directives=directives,
        job_directives_skip=list(params.job_directives_skip),
        worker_extra_args=worker_args,
        job_script_prologue=list(params.job_script_prologue),
        python=params.python or sys.executable,
        scheduler_options=scheduler_options(params),
        silence_logs="error",
    )
    security = cluster_security(params)
    if security is not None:
        # the worker key of a throw-away certificate is written (mode 600) where the jobs can read it
        kwargs.update(security=security, protocol="tls://", shared_temp_directory=os.getcwd())
    for key in ("interface", "log_directory", "local_directory"):
        if getattr(params, key):
            kwargs[key] = getattr(params, key)
    if isinstance(params, PBSParams) and params.resource_spec:
        kwargs["resource_spec"] = params.resource_spec
    return kwargs


def _jobqueue_cluster(params: SlurmParams | PBSParams):
    try:
        import dask_jobqueue
    except ImportError as error:  # pragma: no cover - a dependency of the project
        raise ClusterStartError(f"cluster.kind={params.kind} needs dask-jobqueue: {error}") from None
    cls = dask_jobqueue.SLURMCluster if isinstance(params, SlurmParams) else dask_jobqueue.PBSCluster
    try:
        with _port_moves_are_not_news():
            cluster = cls(**jobqueue_kwargs(params))
    except Exception as error:
        raise ClusterStartError(
            f"could not start a {cls.__name__}: {type(error).__name__}: {error}"
        ) from error
    cluster.scale(n=params.workers)
    return cluster


@contextlib.contextmanager
def open_client(params: LocalParams | SlurmParams | PBSParams | AddressParams) -> Iterator[Any]:
    """A `distributed.Client` on the engine `params` describes, with at least one worker joined.

    Raises ClusterStartError when no worker joins within `params.start_timeout_s` seconds (a batch
    queue that never starts the jobs, a wrong address), naming where to look, or when the workers
    that joined run no task in that time (e.g. a memory limit below what a worker uses).
    """
    from distributed import Client

    with contextlib.ExitStack() as stack:
        if isinstance(params, AddressParams):
            try:
                client = stack.enter_context(Client(params.address, timeout=params.start_timeout_s))
            except (OSError, TimeoutError) as error:
                raise ClusterStartError(
                    f"cluster.address {params.address!r}: no Dask scheduler answered ({error}); "
                    "start one with `dask scheduler` or fix the address"
                ) from None
        else:
            cluster = _local_cluster(params) if isinstance(params, LocalParams) else _jobqueue_cluster(params)
            stack.enter_context(cluster)
            client = stack.enter_context(Client(cluster))
        try:
            client.wait_for_workers(1, timeout=params.start_timeout_s)
        except TimeoutError:
            where = {
                "local": "the worker processes failed to start; see the log above",
                "slurm": "check `squeue` and the jobs' logs (cluster.log_directory)",
                "pbs": "check `qstat` and the jobs' logs (cluster.log_directory)",
                "address": "start workers with `dask worker <address>`",
            }[params.kind]
            raise ClusterStartError(
                f"cluster.kind={params.kind}: no Dask worker joined within {params.start_timeout_s:.0f} s; "
                f"{where}, or raise cluster.start_timeout_s"
            ) from None
        _probe(client, params)
        yield client


def _ready() -> bool:
    return True


def _probe(client: Any, params: LocalParams | SlurmParams | PBSParams | AddressParams) -> None:
    """One trivial task must run: workers that join but never take work (paused, or restarted over
    and over, because their memory limit is below what they use) would otherwise hang the run."""
    from distributed import wait

    future = client.submit(_ready, pure=False, key=f"distillery-probe-{uuid.uuid4().hex[:8]}")
    try:
        wait([future], timeout=params.start_timeout_s)
    except TimeoutError:
        memory = getattr(params, "memory", "")
        raise ClusterStartError(
            f"cluster.kind={params.kind}: workers joined but none ran a task within "
            f"{params.start_timeout_s:.0f} s: they are paused or restarting (usually a cluster.memory "
            f"{memory!r} below what a worker uses) or busy with other work; raise cluster.memory or "
            "cluster.start_timeout_s"
        ) from None
    finally:
        future.release()
