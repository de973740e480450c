"""Run named, independent tasks as Dask futures: progress, failure isolation, GPU resources.

Each task runs inside a wrapper on its worker that catches any exception and returns the
traceback as text, so one failing task is reported (with the worker-side traceback) and never
loses the results of the others. A worker that dies (KilledWorker) is reported the same way.
Tasks should take paths and return small JSON-able values; big artifacts are written by the task.
"""

from __future__ import annotations

import sys
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from pipeline.cluster.engine import open_client
from pipeline.cluster.params import AddressParams, LocalParams, PBSParams, SlurmParams
from pipeline.errors import DistilleryError

TaskSpec = Callable[[], Any] | tuple[Callable[..., Any], tuple, dict]
"""A task: a callable of no arguments, or (fn, args, kwargs)."""

ClusterLike = LocalParams | SlurmParams | PBSParams | AddressParams | Any


class NoWorkerWithResourcesError(DistilleryError):
    """Tasks ask for resources (e.g. GPU) that no worker of the cluster advertises; they would wait
    forever."""


@dataclass(frozen=True)
class TaskResult:
    """The outcome of one task.

    ok: True when the task returned; `value` is what it returned (None on failure).
    error: on failure, the traceback text from the worker (or the client, when the worker died).
    duration_s: seconds the task ran on its worker (None when unknown, e.g. the worker died).
    worker: the address of the worker that ran it (None when unknown).
    """

    name: str
    ok: bool
    value: Any = None
    error: str | None = None
    duration_s: float | None = None
    worker: str | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-able summary (the value is kept as is: tasks return JSON-able values)."""
        return {
            "name": self.name,
            "ok": self.ok,
            "value": self.value,
            "error": self.error,
            "duration_s": self.duration_s,
            "worker": self.worker,
        }


def _split_spec(name: str, spec: TaskSpec) -> tuple[Callable[..., Any], tuple, dict]:
    if callable(spec):
        return spec, (), {}
    if isinstance(spec, tuple) and len(spec) == 3 and callable(spec[0]):
        fn, args, kwargs = spec
        return fn, tuple(args), dict(kwargs)
    raise TypeError(f"task {name!r}: expected a callable or (fn, args, kwargs), got {type(spec).__name__}")


def _run_captured(fn: Callable[..., Any], args: tuple, kwargs: dict) -> dict[str, Any]:
    """Runs on the worker: the task's value, or its traceback as text; never raises."""
    from distributed import get_worker

    start = time.perf_counter()
    try:
        worker = get_worker().address
    except ValueError:
        worker = None
    try:
        value = fn(*args, **kwargs)
        return {"ok": True, "value": value, "duration_s": time.perf_counter() - start, "worker": worker}
    except BaseException:  # noqa: BLE001 - reported to the client, the worker goes on
        return {
            "ok": False,
            "error": traceback.format_exc(),
            "duration_s": time.perf_counter() - start,
            "worker": worker,
        }


def _check_resources(client: Any, resources: Mapping[str, float]) -> None:
    """Refuse to submit when no current worker can meet `resources` (such tasks never fail, they wait)."""
    if not resources:
        return
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    if any(all(w.get("resources", {}).get(k, 0) >= v for k, v in resources.items()) for w in workers):
        return
    have = sorted({f"{k}={v}" for w in workers for k, v in w.get("resources", {}).items()}) or ["none"]
    raise NoWorkerWithResourcesError(
        f"tasks ask for resources {dict(resources)} but the workers advertise {', '.join(have)}; "
        "set cluster.gpus_per_worker (local, slurm, pbs) or start workers with "
        "`dask worker --resources GPU=1` (address), or set cluster.gpus_per_worker: 0"
    )


def _collect(
    client: Any,
    tasks: Mapping[str, TaskSpec],
    resources: Mapping[str, float],
    progress: bool,
    retries: int,
    desc: str,
) -> dict[str, TaskResult]:
    from distributed import as_completed

    _check_resources(client, resources)
    token = uuid.uuid4().hex[:8]
    futures = {}
    for name, spec in tasks.items():
        fn, args, kwargs = _split_spec(name, spec)
        future = client.submit(
            _run_captured,
            fn,
            args,
            kwargs,
            key=f"{name}-{token}",
            pure=False,
            resources=dict(resources) or None,
            retries=retries,
        )
        futures[future] = name
    results: dict[str, TaskResult] = {}
    failed = 0
    bar = tqdm(total=len(futures), desc=desc, unit="task", disable=None if progress else True)
    try:
        for future in as_completed(futures):
            name = futures[future]
            try:
                outcome = future.result()
                results[name] = TaskResult(name=name, **outcome)
            except BaseException as error:  # noqa: BLE001 - the worker died, or the result did not unpickle
                if isinstance(error, KeyboardInterrupt):
                    raise
                text = "".join(traceback.format_exception(error))
                results[name] = TaskResult(name=name, ok=False, error=text)
            if not results[name].ok:
                failed += 1
                last = results[name].error.strip().splitlines()[-1]
                bar.write(f"task {name} failed: {last}", file=sys.stderr)
            bar.set_postfix(failed=failed, refresh=False)
            bar.update(1)
    finally:
        bar.close()
    return {name: results[name] for name in tasks}


def run_tasks(
    cluster: ClusterLike,
    tasks: Mapping[str, TaskSpec],
    resources: Mapping[str, float] | None = None,
    progress: bool = True,
    desc: str = "tasks",
) -> dict[str, TaskResult]:
    """Run every task once as a Dask future; return name -> TaskResult, in the order of `tasks`.

    cluster: the `cluster:` params (an engine is started and stopped around the run) or an open
        `distributed.Client` (reused, left open).
    tasks: name -> callable or (fn, args, kwargs). Names must be unique; they become the Dask keys.
    resources: what each task asks for, e.g. {"GPU": 1}; None takes the params' default
        ({"GPU": 1} where cluster.gpus_per_worker > 0, else nothing); {} asks for nothing.
    progress: a tqdm bar over completed tasks (hidden when stderr is not a terminal); every
        failure is printed as it happens.

    A task that raises, or whose worker dies, gives ok=False and its traceback; the others go on.
    """
    if isinstance(cluster, (LocalParams, SlurmParams, PBSParams, AddressParams)):
        resources = cluster.task_resources if resources is None else resources
        with open_client(cluster) as client:
            return _collect(client, tasks, resources, progress, cluster.task_retries, desc)
    return _collect(cluster, tasks, resources or {}, progress, 0, desc)
