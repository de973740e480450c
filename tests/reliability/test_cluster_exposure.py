"""The Slurm/PBS scheduler is not open to the network (issue 12, item 7): it listens on the one
address the workers are given (never 0.0.0.0), its HTTP server (dashboard, /health) only on
127.0.0.1, and with `cluster.tls` every connection is TLS. Checked on a real dask-jobqueue
SLURMCluster built from params: its scheduler starts in this process, no batch job is submitted,
so no Slurm is needed."""

from __future__ import annotations

import contextlib

import psutil
import pytest

from pipeline.cluster.engine import jobqueue_kwargs
from pipeline.cluster.params import parse_cluster_params

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

WILDCARDS = {"0.0.0.0", "::", ""}


def _listening() -> set[tuple[str, int]]:
    return {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process().net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    }


@contextlib.contextmanager
def _slurm_cluster(**section):
    """A SLURMCluster from the `cluster:` section, and the sockets it opened."""
    from dask_jobqueue import SLURMCluster

    params = parse_cluster_params({"kind": "slurm", "memory": "2GB", **section})
    before = _listening()
    with SLURMCluster(**jobqueue_kwargs(params)) as cluster:
        yield cluster, _listening() - before


def test_the_jobqueue_scheduler_listens_on_one_address_and_its_http_server_on_loopback(record):
    with _slurm_cluster() as (cluster, sockets):
        host = cluster.scheduler_address.split("://")[1].rsplit(":", 1)[0]
        script = cluster.job_script()
    assert sockets and not {ip for ip, _ in sockets} & WILDCARDS, sockets
    assert {ip for ip, _ in sockets} == {host, "127.0.0.1"}
    assert f"tcp://{host}:" in script  # the workers are given exactly the address it listens on
    record(
        "the Slurm/PBS scheduler's network exposure (default `cluster:` of kind slurm)",
        f"no error: the scheduler listens on {len(sockets)} sockets, none on 0.0.0.0: its address "
        "(the one the job script gives the workers) and its HTTP server (dashboard off) on 127.0.0.1",
    )


def test_the_dashboard_when_asked_is_on_loopback_only():
    with _slurm_cluster(dashboard=True) as (cluster, sockets):
        http = cluster.scheduler.http_server
    assert (http.address, http.port) in sockets and http.address == "127.0.0.1"


def test_an_interface_named_in_params_binds_the_scheduler_there():
    params = parse_cluster_params({"kind": "slurm", "memory": "2GB", "interface": "lo"})
    assert jobqueue_kwargs(params)["scheduler_options"]["interface"] == "lo"
    params = parse_cluster_params(
        {"kind": "pbs", "memory": "2GB", "interface": "ib0", "scheduler_interface": "eth1"}
    )
    assert jobqueue_kwargs(params)["scheduler_options"]["interface"] == "eth1"


def test_tls_true_encrypts_scheduler_worker_and_client_traffic(record):
    with _slurm_cluster(tls=True) as (cluster, sockets):
        address, script = cluster.scheduler_address, cluster.job_script()
        security = cluster.security
    assert address.startswith("tls://")
    assert security.require_encryption
    assert all(option in script for option in ("--tls-ca-file", "--tls-cert", "--tls-key"))
    record("`cluster.tls: true` on Slurm/PBS", "no error: scheduler at tls://…, workers started with "
           "--tls-ca-file/--tls-cert/--tls-key, encryption required")  # fmt: skip


def test_tls_with_your_certificates_uses_them(tmp_path):
    from distributed.security import Security

    temporary = Security.temporary()
    files = {}
    for name, text in (
        ("ca", temporary.tls_ca_file),
        ("cert", temporary.tls_scheduler_cert),
        ("key", temporary.tls_scheduler_key),
    ):
        files[name] = tmp_path / f"{name}.pem"
        files[name].write_text(text)
    section = {
        "tls": {"ca_file": str(files["ca"]), "cert_file": str(files["cert"]), "key_file": str(files["key"])}
    }
    params = parse_cluster_params({"kind": "slurm", "memory": "2GB", **section})
    kwargs = jobqueue_kwargs(params)
    assert kwargs["protocol"] == "tls://" and kwargs["security"].require_encryption
    assert kwargs["security"].tls_scheduler_cert == str(files["cert"])
    with _slurm_cluster(**section) as (cluster, _):
        assert cluster.scheduler_address.startswith("tls://")
