"""run_tasks: every task once on Dask workers, failures isolated and reported with tracebacks."""

from __future__ import annotations

import pytest

from pipeline.cluster.engine import ClusterStartError
from pipeline.cluster.params import AddressParams, LocalParams
from pipeline.cluster.runner import NoWorkerWithResourcesError, TaskResult, run_tasks
from tests.cluster import cluster_tasks


def test_tasks_run_on_a_local_cluster_and_results_keep_the_task_order(local_client):
    tasks = {f"sq{i}": (cluster_tasks.square, (i,), {}) for i in (3, 1, 2)}
    results = run_tasks(local_client, tasks, progress=False)
    assert list(results) == ["sq3", "sq1", "sq2"]
    assert [r.value for r in results.values()] == [9, 1, 4]
    assert all(r.ok and r.error is None and r.worker.startswith("tcp://127.0.0.1") for r in results.values())


def test_a_task_that_raises_does_not_lose_the_others(local_client, tmp_path, capsys):
    tasks = {
        "good-a": (cluster_tasks.write_marker, (str(tmp_path / "a.txt"), "a"), {}),
        "bad": (cluster_tasks.raise_value_error, ("student exploded",), {}),
        "good-b": (cluster_tasks.write_marker, (str(tmp_path / "b.txt"), "b"), {}),
    }
    results = run_tasks(local_client, tasks, progress=True)
    assert results["good-a"].ok and results["good-b"].ok
    assert (tmp_path / "a.txt").read_text() == "a" and (tmp_path / "b.txt").read_text() == "b"
    bad = results["bad"]
    assert not bad.ok and bad.value is None
    assert "Traceback" in bad.error and "raise_value_error" in bad.error
    assert bad.error.strip().endswith("ValueError: student exploded")
    assert "task bad failed: ValueError: student exploded" in capsys.readouterr().err


def test_a_worker_that_dies_is_reported_and_the_others_finish(local_client):
    results = run_tasks(
        local_client,
        {"dies": cluster_tasks.exit_worker_process, "fine": (cluster_tasks.square, (5,), {})},
        progress=False,
    )
    assert results["fine"].value == 25
    assert not results["dies"].ok and "KilledWorker" in results["dies"].error


def test_a_bad_task_spec_names_the_task(local_client):
    with pytest.raises(TypeError, match="task 'x': expected a callable"):
        run_tasks(local_client, {"x": 42}, progress=False)


def test_gpu_tasks_without_gpu_workers_fail_at_once_with_the_fix(local_client):
    with pytest.raises(NoWorkerWithResourcesError, match="gpus_per_worker"):
        run_tasks(local_client, {"t": cluster_tasks.worker_pid}, resources={"GPU": 1}, progress=False)


def test_params_start_a_cluster_whose_workers_advertise_gpus():
    params = LocalParams(workers=2, threads_per_worker=1, gpus_per_worker=1, memory="1GB")
    tasks = {f"t{i}": cluster_tasks.worker_pid for i in range(4)}
    results = run_tasks(params, tasks, progress=False)
    assert all(isinstance(r, TaskResult) and r.ok for r in results.values())
    assert len({r.worker for r in results.values()}) >= 1


def test_an_existing_scheduler_is_used_by_address_and_left_running(local_client):
    params = AddressParams(kind="address", address=local_client.scheduler.address)
    results = run_tasks(params, {"sq": (cluster_tasks.square, (7,), {})}, progress=False)
    assert results["sq"].value == 49
    assert run_tasks(local_client, {"again": (cluster_tasks.square, (2,), {})}, progress=False)["again"].ok


def test_an_address_where_no_scheduler_answers_says_how_to_fix_it():
    params = AddressParams(kind="address", address="tcp://127.0.0.1:9", start_timeout_s=1)
    with pytest.raises(
        ClusterStartError, match=r"cluster.address 'tcp://127.0.0.1:9': no Dask scheduler answered"
    ):
        run_tasks(params, {"t": cluster_tasks.worker_pid}, progress=False)
