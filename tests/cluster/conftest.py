"""Fixtures of the cluster tests: a small LocalCluster client, and a real single-node Slurm."""

from __future__ import annotations

import logging
import os

import pytest

from tests.cluster.slurm import SlurmUnavailable, start_slurm


@pytest.fixture(scope="session")
def local_client():
    """A Client on a LocalCluster of 2 worker processes x 1 thread, loopback, no dashboard."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            memory_limit="2GB",
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


@pytest.fixture(scope="session")
def project(tmp_path_factory):
    """(prepared_dir, cache_store_dir) of a tiny on-disk project students can train from."""
    from tests.cluster.student_project import write_project

    return write_project(tmp_path_factory.mktemp("project"))


@pytest.fixture(scope="session")
def slurm():
    """A started single-node Slurm; SLURM_CONF points at it for the session (dask-jobqueue needs it).

    Skips, with the reason, where the packages, root or the daemons are not available.
    """
    try:
        cluster = start_slurm()
    except SlurmUnavailable as error:
        pytest.skip(f"single-node Slurm unavailable: {error}")
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        yield cluster
    finally:
        cluster.stop()
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
