"""Many students at once: each selected student is one Dask task calling `train_student`.

The alternative to DVC's per-student foreach (DVC runs stages one at a time, and two `dvc repro`
in one workspace fail on its lock). Every task gets paths, never arrays: it opens the one cache
read-only itself, trains all the student's seeds and writes `<out_root>/<student>/` (the layout of
`train@<student>`), resuming from `<scratch_root>/<student>/` after a kill. A student that raises
is reported with its traceback; the others' outputs are written all the same.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.cluster.runner import ClusterLike, TaskResult, run_tasks
from pipeline.io import atomic_write_json
from pipeline.names import child_path


def _absolute(path: str | Path) -> str:
    return str(Path(path).resolve())


def student_tasks(
    students: Mapping[str, Any],
    prepared_dir: str | Path,
    out_root: str | Path,
    scratch_root: str | Path,
    seeds: Sequence[int] | None = None,
    threads: int = 1,
) -> dict[str, tuple]:
    """name -> (train_student, args, kwargs), with every path made absolute (a worker's working
    directory need not be ours: a batch job may start elsewhere)."""
    from pipeline.train.run import train_student

    tasks = {}
    for name, params in students.items():
        params = params.model_copy(update={"cache": _absolute(params.cache)})
        tasks[name] = (
            train_student,
            (name, params, _absolute(prepared_dir)),
            {
                "out_dir": _absolute(child_path(out_root, name, "student")),
                "scratch_dir": _absolute(child_path(scratch_root, name, "student")),
                "seeds": None if seeds is None else list(seeds),
                "progress": False,
                "threads": threads,
            },
        )
    return tasks


def sweep_students(
    cluster: ClusterLike,
    students: Mapping[str, Any],
    prepared_dir: str | Path,
    out_root: str | Path,
    scratch_root: str | Path,
    seeds: Sequence[int] | None = None,
    threads: int | None = None,
    progress: bool = True,
) -> dict[str, TaskResult]:
    """Train every student of `students` (name -> StudentParams) as one Dask task each.

    cluster: the `cluster:` params (an engine is started and stopped) or an open Client.
    threads: torch threads per task (default: the cluster's threads_per_worker, else 1).
    Returns name -> TaskResult; `value` is train_student's summary (val accuracy per seed, ...).
    Tasks ask for {"GPU": 1} where the cluster declares GPUs.
    """
    if threads is None:
        threads = getattr(cluster, "threads_per_worker", 1) or 1
    tasks = student_tasks(students, prepared_dir, out_root, scratch_root, seeds, threads)
    return run_tasks(cluster, tasks, progress=progress, desc="students")


def write_sweep_report(results: Mapping[str, TaskResult], path: str | Path) -> dict[str, Any]:
    """Write {"ok": [...], "failed": [...], "students": {name: result}} as JSON (atomically); return it."""
    report = {
        "ok": [name for name, result in results.items() if result.ok],
        "failed": [name for name, result in results.items() if not result.ok],
        "students": {name: result.to_json() for name, result in results.items()},
    }
    atomic_write_json(path, report)
    return report
