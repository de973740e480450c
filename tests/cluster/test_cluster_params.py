"""The `cluster:` params: kinds, defaults, errors that name the key, and what each kind starts."""

from __future__ import annotations

import pytest

from pipeline.cluster.engine import jobqueue_kwargs
from pipeline.cluster.params import AddressParams, LocalParams, PBSParams, SlurmParams, parse_cluster_params
from pipeline.config import ParamsError


def test_no_section_means_a_local_cluster_without_gpus():
    params = parse_cluster_params(None)
    assert isinstance(params, LocalParams)
    assert params.task_resources == {}
    assert params.threads_per_worker == 1


def test_kind_selects_the_model():
    assert isinstance(parse_cluster_params({"kind": "slurm", "memory": "4GB"}), SlurmParams)
    assert isinstance(parse_cluster_params({"kind": "pbs", "memory": "4GB"}), PBSParams)
    assert isinstance(parse_cluster_params({"kind": "address", "address": "tcp://h:8786"}), AddressParams)


def test_declared_gpus_make_tasks_ask_for_one_gpu():
    assert parse_cluster_params({"workers": 2, "gpus_per_worker": 1}).task_resources == {"GPU": 1}


def test_unknown_key_is_named_with_a_suggestion():
    with pytest.raises(ParamsError, match=r"cluster\.wokers: unknown key; did you mean 'workers'"):
        parse_cluster_params({"kind": "local", "wokers": 2})


def test_unknown_kind_lists_the_valid_ones():
    with pytest.raises(
        ParamsError, match=r"cluster: kind 'sge' is not known; valid: local, slurm, pbs, address"
    ):
        parse_cluster_params({"kind": "sge"})


def test_slurm_needs_memory():
    with pytest.raises(ParamsError, match=r"cluster\.memory: required key is missing"):
        parse_cluster_params({"kind": "slurm"})


def test_slurm_gpus_add_gres_and_worker_resources():
    params = parse_cluster_params(
        {
            "kind": "slurm",
            "memory": "8GB",
            "cores": 4,
            "gpus_per_worker": 1,
            "queue": "gpu",
            "worker_extra_args": ["--lifetime", "55m"],
        }
    )
    kwargs = jobqueue_kwargs(params)
    assert kwargs["job_extra_directives"] == ["--gres=gpu:1"]
    assert kwargs["worker_extra_args"] == ["--lifetime", "55m", "--resources", "GPU=1"]
    assert (kwargs["cores"], kwargs["memory"], kwargs["queue"]) == (4, "8GB", "gpu")
    assert params.threads_per_worker == 4


def test_slurm_gpu_directive_written_by_the_user_is_kept_alone():
    params = parse_cluster_params(
        {"kind": "slurm", "memory": "8GB", "gpus_per_worker": 1, "job_extra_directives": ["--gpus=a100:1"]}
    )
    assert jobqueue_kwargs(params)["job_extra_directives"] == ["--gpus=a100:1"]


def test_slurm_job_script_carries_the_params():
    from dask_jobqueue import SLURMCluster

    params = parse_cluster_params(
        {
            "kind": "slurm",
            "memory": "2GB",
            "walltime": "00:10:00",
            "queue": "debug",
            "account": "proj",
            "job_script_prologue": ["source .venv/bin/activate"],
            "interface": "lo",
        }
    )
    with SLURMCluster(**jobqueue_kwargs(params)) as cluster:
        script = cluster.job_script()
    for line in (
        "#SBATCH -p debug",
        "#SBATCH -A proj",
        "#SBATCH --mem=2G",
        "#SBATCH -t 00:10:00",
        "source .venv/bin/activate",
    ):
        assert line in script
