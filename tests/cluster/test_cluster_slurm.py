"""Against a real single-node Slurm (tests/cluster/slurm.py): dask-jobqueue's SLURMCluster runs the tasks."""

from __future__ import annotations

import json
import time

import pytest

from pipeline.cluster.params import parse_cluster_params
from pipeline.cluster.runner import run_tasks
from pipeline.cluster.sweep import sweep_students
from tests.cluster import cluster_tasks
from tests.cluster.student_project import students

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def slurm_params(tmp_path, **extra):
    return parse_cluster_params(
        {
            "kind": "slurm",
            "workers": 2,
            "cores": 1,
            "memory": "1GB",
            "walltime": "00:10:00",
            "queue": "debug",
            "interface": "lo",
            "start_timeout_s": 60,
            "log_directory": str(tmp_path / "logs"),
            "local_directory": str(tmp_path / "dask"),
            **extra,
        }
    )


def test_tasks_run_inside_slurm_jobs_and_a_failure_is_isolated(slurm, tmp_path):
    tasks = {
        "job-a": cluster_tasks.slurm_job_id,
        "job-b": cluster_tasks.slurm_job_id,
        "bad": (cluster_tasks.raise_value_error, ("no",), {}),
    }
    results = run_tasks(slurm_params(tmp_path), tasks, progress=False)
    assert results["job-a"].ok and results["job-b"].ok
    assert results["job-a"].value and results["job-b"].value  # both ran under a SLURM_JOB_ID
    assert not results["bad"].ok and "ValueError: no" in results["bad"].error
    assert wait_for_empty_queue(slurm), "closing the cluster must cancel its worker jobs"


def test_a_sweep_of_two_students_runs_through_slurm_cluster(slurm, project, tmp_path):
    prepared_dir, cache_dir = project
    results = sweep_students(
        slurm_params(tmp_path, memory="2GB"),
        students(cache_dir),
        prepared_dir,
        tmp_path / "train",
        tmp_path / "scratch",
        progress=False,
    )
    assert {name: r.ok for name, r in results.items()} == {"kd": True, "ce": True}, {
        name: r.error for name, r in results.items()
    }
    for name in ("kd", "ce"):
        summary = json.loads((tmp_path / "train" / name / "summary.json").read_text())
        assert summary["models"] == results[name].value["models"]
    assert wait_for_empty_queue(slurm)


def wait_for_empty_queue(slurm, timeout_s: float = 30.0) -> bool:
    """True once squeue lists no job (cancelled jobs pass through COMPLETING first)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not slurm.run("squeue", "-h").strip():
            return True
        time.sleep(0.5)
    return False
