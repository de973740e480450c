"""A real single-node Slurm (Debian's slurmctld, slurmd and munge, Slurm 22.05) for the tests.

Everything lives in a private temp directory: the munge key and socket, slurm.conf (selected with
SLURM_CONF, so nothing in /etc is read or changed), state, spool, logs and pid files. Root is the
Slurm user; process tracking is proctrack/linuxproc and TaskPlugin=task/none, so no cgroups are
needed (and no cgroup.conf is written: 22.05 refuses keys it does not know). munged starts first;
teardown cancels the jobs and ends the daemons by their pid files.

`.ci/install-slurm` installs the packages; where they, root, or the daemons are not available,
`start_slurm` raises SlurmUnavailable with the reason and the tests skip with it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BINARIES = ("munged", "mungekey", "slurmctld", "slurmd", "sinfo", "squeue", "scancel", "sbatch")


class SlurmUnavailable(RuntimeError):
    """A single-node Slurm cannot run here; the message says why (shown as the skip reason)."""


@dataclass
class SingleNodeSlurm:
    """A started cluster: its directory and config; `env` is os.environ plus SLURM_CONF."""

    directory: Path
    conf: Path
    node: str
    partition: str = "debug"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *command: str, timeout: float = 30) -> str:
        """Run a Slurm client command against this cluster; its stdout."""
        done = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=timeout)
        if done.returncode:
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def log_tail(self, lines: int = 15) -> str:
        parts = []
        for name in ("munged.log", "slurmctld.log", "slurmd.log"):
            path = self.directory / "log" / name
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {name}\n" + "\n".join(tail))
        return "\n".join(parts)

    def stop(self) -> None:
        """Cancel every job, end slurmd, slurmctld and munged by their pid files, remove the directory."""
        try:
            ids = self.run("squeue", "-h", "-o", "%i", timeout=10).split()
            if ids:
                self.run("scancel", *ids, timeout=10)
        except Exception:  # noqa: BLE001 - best effort: the daemons go next anyway
            pass
        for name in ("slurmd.pid", "slurmctld.pid", "munged.pid"):
            _end_by_pid_file(self.directory / "run" / name)
        shutil.rmtree(self.directory, ignore_errors=True)


def _end_by_pid_file(pid_file: Path, timeout_s: float = 10.0) -> None:
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _node_resources() -> tuple[int, int]:
    """(CPUs, RealMemory MB) of this machine as `slurmd -C` reports them, memory less a margin."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=30).stdout
    cpus = int(re.search(r"CPUs=(\d+)", out).group(1)) if "CPUs=" in out else (os.cpu_count() or 1)
    memory = int(re.search(r"RealMemory=(\d+)", out).group(1)) if "RealMemory=" in out else 4096
    return cpus, max(1024, memory - 1024)


def _slurm_conf(directory: Path, node: str, cpus: int, memory_mb: int, ports: list[int]) -> str:
    return f"""\
ClusterName=distillery
SlurmctldHost={node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ports[0]}
SlurmdPort={ports[1]}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={directory}/munge/munge.sock
StateSaveLocation={directory}/state
SlurmdSpoolDir={directory}/spool
SlurmctldPidFile={directory}/run/slurmctld.pid
SlurmdPidFile={directory}/run/slurmd.pid
SlurmctldLogFile={directory}/log/slurmctld.log
SlurmdLogFile={directory}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MpiDefault=none
MailProg=/bin/true
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


def _check_available() -> None:
    missing = [name for name in BINARIES if shutil.which(name) is None]
    if missing:
        raise SlurmUnavailable(f"{', '.join(missing)} not installed (run `bash .ci/install-slurm` as root)")
    if os.geteuid() != 0:
        raise SlurmUnavailable("the single-node Slurm runs its daemons as root; these tests are not root")


def start_slurm(timeout_s: float = 30.0) -> SingleNodeSlurm:
    """Start munged, slurmctld and slurmd with a private config; return once the node is idle.

    Raises SlurmUnavailable (with the daemons' log tails) when anything is missing or does not start.
    """
    _check_available()
    directory = Path(tempfile.mkdtemp(prefix="distillery-slurm-"))
    for sub in ("munge", "state", "spool", "run", "log"):
        (directory / sub).mkdir(mode=0o700)
    node = socket.gethostname().split(".")[0]
    cpus, memory_mb = _node_resources()
    conf = directory / "slurm.conf"
    conf.write_text(_slurm_conf(directory, node, cpus, memory_mb, _free_ports(2)))
    cluster = SingleNodeSlurm(directory=directory, conf=conf, node=node)
    try:
        key = directory / "munge" / "munge.key"
        _check_call(["mungekey", "--create", f"--keyfile={key}"], "mungekey")
        key.chmod(0o600)
        _check_call(
            [
                "munged",
                "--force",
                f"--key-file={key}",
                f"--socket={directory}/munge/munge.sock",
                f"--pid-file={directory}/run/munged.pid",
                f"--log-file={directory}/log/munged.log",
                f"--seed-file={directory}/munge/munged.seed",
            ],
            "munged",
        )
        _check_call(["slurmctld", "-f", str(conf)], "slurmctld", env=cluster.env)
        _check_call(["slurmd", "-f", str(conf)], "slurmd", env=cluster.env)
        deadline = time.monotonic() + timeout_s
        state = ""
        while time.monotonic() < deadline:
            try:
                state = cluster.run("sinfo", "-h", "-o", "%T", timeout=10).strip()
            except (RuntimeError, subprocess.TimeoutExpired):
                state = ""
            if state == "idle":
                return cluster
            time.sleep(0.3)
        raise SlurmUnavailable(
            f"the node did not become idle within {timeout_s:.0f} s "
            f"(sinfo: {state or 'no answer'})\n{cluster.log_tail()}"
        )
    except SlurmUnavailable as error:
        tails = cluster.log_tail()
        cluster.stop()
        raise SlurmUnavailable(str(error) if tails in str(error) else f"{error}\n{tails}") from None
    except BaseException:
        cluster.stop()
        raise


def _check_call(command: list[str], name: str, env: dict[str, str] | None = None) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, env=env)
    if done.returncode:
        raise SlurmUnavailable(f"{name} exited {done.returncode}: {(done.stderr or done.stdout).strip()}")
