"""A real single-node SLURM cluster for the tests: munged, slurmctld and slurmd from Debian's ``munge`` and
``slurm-wlm``, configured in a temporary directory and stopped when the context ends.

Everything the cluster needs lives under one directory: the munge key and socket, ``slurm.conf`` (found by the
clients through ``SLURM_CONF``), the controller's state, the node's spool and the daemons' logs. The controller
and node listen on free ports, so the cluster does not clash with another one on the same machine.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sacct", "scontrol", "scancel", "sinfo", "srun")


def missing_binaries() -> list[str]:
    """The cluster's programs that are not on PATH (``apt-get install slurm-wlm munge`` provides them)."""
    return [name for name in BINARIES if shutil.which(name) is None]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _memory_mib() -> int:
    with open("/proc/meminfo", encoding="utf-8") as meminfo:
        total_kib = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal:"))
    return total_kib // 1024 // 2  # half for the jobs: slurmd refuses a node that claims more than it has


def slurm_conf(root: Path, cpus: int, memory_mib: int, ports: tuple[int, int]) -> str:
    """A minimal ``slurm.conf`` for one node called localhost with ``cpus`` CPUs, state and spool under ``root``.
    Job credentials live 10 s (``cred_expire``, 120 s by default), which is also how long a requeued job waits."""
    return f"""\
ClusterName=sslbench
SlurmctldHost=localhost
SlurmctldPort={ports[0]}
SlurmdPort={ports[1]}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root / 'munge.socket'},cred_expire=10
StateSaveLocation={root / 'state'}
SlurmdSpoolDir={root / 'spool'}
SlurmctldPidFile={root / 'slurmctld.pid'}
SlurmdPidFile={root / 'slurmd.pid'}
SlurmctldLogFile={root / 'slurmctld.log'}
SlurmdLogFile={root / 'slurmd.log'}
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
JobRequeue=1
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
MinJobAge=600
KillWait=5
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
NodeName=localhost CPUs={cpus} RealMemory={memory_mib} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


def _wait(predicate, timeout: float, what: str, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    tails = "\n".join(f"--- {log}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:])
                      for log in logs if log.is_file())
    raise RuntimeError(f"{what} within {timeout:g} s\n{tails}")


@contextmanager
def slurm_cluster(root: Path, timeout: float = 30) -> Iterator[dict[str, str]]:
    """Start munged, slurmctld and slurmd configured under ``root``; yield the environment that points the SLURM
    clients at this cluster (``SLURM_CONF``); stop all three at exit. Raises ``RuntimeError`` with the daemons'
    log tails when the node is not idle within ``timeout`` seconds."""
    root.mkdir(parents=True, exist_ok=True)
    for sub in ("state", "spool"):
        (root / sub).mkdir(exist_ok=True)
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    conf = root / "slurm.conf"
    conf.write_text(slurm_conf(root, os.cpu_count() or 1, _memory_mib(), (_free_port(), _free_port())),
                    encoding="utf-8")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    daemons: list[subprocess.Popen] = []
    logs = [root / "munged.log", root / "slurmctld.log", root / "slurmd.log"]
    try:
        # -F: foreground, so that the daemons are our children and stop with us; --force: root may run munged
        daemons.append(subprocess.Popen(
            ["munged", "-F", "--force", f"--key-file={key}", f"--socket={root / 'munge.socket'}",
             f"--pid-file={root / 'munged.pid'}", f"--log-file={logs[0]}", f"--seed-file={root / 'munged.seed'}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        _wait(lambda: (root / "munge.socket").exists(), timeout, "munged did not open its socket", logs)
        daemons.append(subprocess.Popen(["slurmctld", "-D", "-i", "-f", str(conf)], env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        daemons.append(subprocess.Popen(["slurmd", "-D", "-N", "localhost", "-f", str(conf)], env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))

        def idle() -> bool:
            for daemon in daemons:
                if daemon.poll() is not None:
                    raise RuntimeError(f"{daemon.args[0]} exited with {daemon.returncode}; see the logs in {root}")
            state = subprocess.run(["sinfo", "-h", "-n", "localhost", "-o", "%t"], env=env, capture_output=True,
                                   text=True, check=False).stdout.strip()
            return state == "idle"

        _wait(idle, timeout, "the SLURM node did not become idle", logs)
        yield {"SLURM_CONF": str(conf)}
    finally:
        # jobs first, so that no job step (slurmstepd and its processes) outlives the daemons
        if len(daemons) == 3 and all(daemon.poll() is None for daemon in daemons):
            user = pwd.getpwuid(os.getuid()).pw_name
            subprocess.run(["scancel", "--user", user], env=env, capture_output=True, check=False)
            try:
                _wait(lambda: not subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True,
                                                 check=False).stdout.strip(), 20, "jobs still running", [])
            except RuntimeError:
                pass  # the daemons stop anyway
        for daemon in reversed(daemons):
            daemon.terminate()
        for daemon in reversed(daemons):
            try:
                daemon.wait(timeout=10)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
