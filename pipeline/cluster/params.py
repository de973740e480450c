"""The `cluster:` section of params.yaml: which Dask engine runs the batch work, and its size.

A discriminated union on `kind`; with no section at all the engine is a LocalCluster on loopback.

```yaml
cluster: {kind: local, workers: 2, threads_per_worker: 1}
cluster:
  kind: slurm                     # or pbs: the same keys, plus resource_spec
  workers: 4                      # worker processes in all; one batch job each (processes: 1)
  cores: 8                        # per job; each worker runs cores/processes threads
  memory: 32GB                    # per job (required by dask-jobqueue)
  walltime: "02:00:00"
  queue: gpu
  account: proj
  gpus_per_worker: 1              # workers advertise GPU=1, tasks ask for it, and Slurm gets --gres=gpu:1
  job_script_prologue: ["source .venv/bin/activate"]
cluster: {kind: address, address: "tcp://10.0.0.5:8786"}
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from pipeline.config import StrictModel, read_params_file, validate_section
from pipeline.names import check_name

MIN_WORKER_MEMORY = 256 * 2**20
"""The least `memory` accepted: a Dask worker holds ~100 MB before it runs anything; with less it is
paused (no task ever starts) and restarted over and over, and the run hangs instead of failing."""


def _check_memory(memory: str) -> str:
    """`memory` as Dask reads it ("4GB", "512MiB"; "auto" and "0" for local clusters), refused when it
    does not parse or is below MIN_WORKER_MEMORY."""
    from dask.utils import parse_bytes

    if memory in ("auto", "0"):
        return memory
    try:
        size = parse_bytes(memory)
    except (ValueError, TypeError):
        raise ValueError(f"{memory!r} is not a size; write it like 4GB or 512MiB") from None
    if size < MIN_WORKER_MEMORY:
        raise ValueError(
            f"{memory} is less than the {MIN_WORKER_MEMORY // 2**20} MiB a Dask worker needs to start (it "
            "would be paused and restarted forever); give e.g. 4GB"
        )
    return memory


class TLSFiles(StrictModel):
    """Certificates for TLS between scheduler, workers and this client (PEM files all of them read)."""

    ca_file: str
    """The certificate authority that signed `cert_file`."""
    cert_file: str
    """The certificate scheduler, workers and client present."""
    key_file: str | None = None
    """Its private key (None: it is in `cert_file`)."""


class _Common(StrictModel):
    """Keys every kind shares."""

    gpus_per_worker: int = Field(0, ge=0)
    """GPUs each worker advertises (Dask resource `GPU`); with any, every task asks for {"GPU": 1}."""
    start_timeout_s: float = Field(300.0, gt=0)
    """How long to wait for the first worker before failing with a message (batch queues can be slow)."""
    task_retries: int = Field(0, ge=0)
    """Dask re-runs a task this often when its worker dies (not when the task raises)."""
    shard_cache: bool = False
    """The cache stage computes and writes its shards on this cluster's workers (whole shards each)."""

    @property
    def task_resources(self) -> dict[str, int]:
        """The resources each task asks for: {"GPU": 1} where GPUs are declared, else none."""
        return {"GPU": 1} if self.gpus_per_worker else {}


class LocalParams(_Common):
    """A `distributed.LocalCluster` of worker processes on this machine, bound to loopback."""

    kind: Literal["local"] = "local"
    workers: int | None = Field(None, ge=1)
    """Worker processes; None lets Dask choose from the core count."""
    threads_per_worker: int = Field(1, ge=1)
    """Threads per worker; tasks also use this many torch / ONNX Runtime threads."""
    memory: str = "auto"
    """Memory limit per worker ("4GB", "auto" = RAM split evenly, "0" = none)."""

    _memory = field_validator("memory")(classmethod(lambda cls, value: _check_memory(value)))
    dashboard: bool = False
    """Serve the Dask dashboard on 127.0.0.1:8787 (off by default: tests and CI need no port)."""
    local_directory: str | None = None
    """Workers' scratch directory (default: Dask's, under the temp dir)."""
    start_timeout_s: float = Field(60.0, gt=0)


class _JobQueue(_Common):
    """Keys of the dask-jobqueue kinds: each worker is one batch job (processes per job, default 1)."""

    workers: int = Field(1, ge=1)
    """Worker processes in all; the cluster submits ceil(workers / processes) jobs."""
    cores: int = Field(1, ge=1)
    """Cores per job; each worker runs cores / processes threads."""
    processes: int = Field(1, ge=1)
    """Worker processes per job."""
    memory: str
    """Memory per job, e.g. "16GB" (dask-jobqueue requires it)."""

    _memory = field_validator("memory")(classmethod(lambda cls, value: _check_memory(value)))
    walltime: str = "01:00:00"
    queue: str | None = None
    account: str | None = None
    job_extra_directives: list[str] = []
    """Extra scheduler directives, e.g. ["--gres=gpu:a100:1"] or ["-l select=1:ngpus=1"]."""
    job_directives_skip: list[str] = []
    """Generated directive lines to drop, e.g. ["--mem"] where the site wants --mem-per-gpu."""
    worker_extra_args: list[str] = []
    """Extra `dask worker` arguments, e.g. ["--lifetime", "55m", "--lifetime-stagger", "4m"]."""
    job_script_prologue: list[str] = []
    """Shell lines run before the worker starts, e.g. ["source .venv/bin/activate"]."""
    python: str | None = None
    """Python on the compute nodes (default: this interpreter, which must be reachable there)."""
    interface: str | None = None
    """Network interface of scheduler and workers (e.g. "ib0"; "lo" for a single-node test cluster)."""
    scheduler_interface: str | None = None
    """The scheduler's interface where it differs from the workers' (default: `interface`, else the
    address this machine reaches other hosts on; never every interface)."""
    dashboard: bool = False
    """Serve the Dask dashboard on 127.0.0.1:8787 (reach it with `ssh -L 8787:localhost:8787`)."""
    tls: bool | TLSFiles = False
    """Encrypt and authenticate scheduler, worker and client traffic: true makes a throw-away
    certificate for this run (its worker key is written, mode 600, to the project directory, which the
    compute nodes must see anyway, and removed at the end); or give `{ca_file, cert_file, key_file}`."""
    log_directory: str | None = None
    """Where batch jobs write their stdout/stderr (default: the job's working directory)."""
    local_directory: str | None = None
    """Workers' scratch directory on the compute nodes, e.g. "$TMPDIR"."""

    @property
    def threads_per_worker(self) -> int:
        """Threads per worker process: cores / processes (at least 1)."""
        return max(1, self.cores // self.processes)


class SlurmParams(_JobQueue):
    """dask_jobqueue.SLURMCluster; `gpus_per_worker` adds --gres=gpu:N unless a directive names GPUs."""

    kind: Literal["slurm"]


class PBSParams(_JobQueue):
    """dask_jobqueue.PBSCluster; request GPUs with `resource_spec` or `job_extra_directives`
    (site-specific)."""

    kind: Literal["pbs"]
    resource_spec: str | None = None
    """The -l resource line, e.g. "select=1:ncpus=8:mem=32GB:ngpus=1" (default: built from cores/memory)."""


class AddressParams(_Common):
    """An already running Dask scheduler (started by you, `dask scheduler` / `dask worker`)."""

    kind: Literal["address"]
    address: str
    """The scheduler's address, e.g. "tcp://10.0.0.5:8786" (tls://... with TLS set in your Dask config)."""

    @field_validator("address")
    @classmethod
    def _a_scheduler_address(cls, address: str) -> str:
        from distributed.comm.addressing import parse_address, parse_host_port

        try:
            protocol, location = parse_address(address, strict=True)
            host, _ = parse_host_port(location)
            if protocol not in ("tcp", "tls", "ucx") or not host or any(c.isspace() for c in host):
                raise ValueError
        except ValueError:
            raise ValueError(
                f"{address!r} is not a Dask scheduler address; write it as tcp://<host>:<port>, e.g. "
                "tcp://10.0.0.5:8786"
            ) from None
        return address

    threads_per_worker: int = Field(1, ge=1)
    """Threads each task gives torch / ONNX Runtime (match your `dask worker --nthreads`)."""


ClusterParams = Annotated[LocalParams | SlurmParams | PBSParams | AddressParams, Field(discriminator="kind")]


class _Section(StrictModel):
    cluster: ClusterParams = LocalParams()


def parse_cluster_params(data: Any) -> LocalParams | SlurmParams | PBSParams | AddressParams:
    """Validate a raw `cluster:` mapping (None or no `kind` means local), or raise ParamsError."""
    if data is None:
        data = {}
    if isinstance(data, dict) and "kind" not in data:
        data = {"kind": "local", **data}
    return validate_section(_Section, {"cluster": data}, root="").cluster


def load_cluster_params(
    path: str | Path = "params.yaml",
) -> LocalParams | SlurmParams | PBSParams | AddressParams:
    """The `cluster:` section of a params file, validated (absent: a local cluster)."""
    return parse_cluster_params(read_params_file(path).get("cluster"))


class SweepParams(StrictModel):
    """The `sweep:` section: which students `distillery sweep` (the `sweep` DVC stage) trains.

    students: "all" (every name under `students:`) or a list of names; the default, [], makes the
    stage a no-op so a plain `dvc repro`, which also runs the per-student foreach, trains nothing twice.
    """

    students: Literal["all"] | list[str] = []

    @field_validator("students")
    @classmethod
    def _safe_names(cls, students: str | list[str]) -> str | list[str]:
        for name in [] if students == "all" else students:
            check_name(name, "student")
        return students


def load_sweep_params(path: str | Path = "params.yaml") -> SweepParams:
    """The `sweep:` section of a params file, validated (absent: no students)."""
    return validate_section(SweepParams, read_params_file(path).get("sweep"), "sweep")
