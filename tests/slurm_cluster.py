"""A private single-node Slurm cluster for tests: Debian's slurmctld + slurmd, started as root.

    cluster = SlurmCluster(workdir)      # writes workdir/slurm.conf, state, spool, logs
    cluster.start()                      # slurmctld -D and slurmd -D; waits for the node
    job = cluster.sbatch(["slurm/train.sbatch"], env=..., cwd=...)
    info = cluster.wait([job], timeout=90)[job]   # {"JobState": "COMPLETED", "ExitCode": "0:0"}
    cluster.stop()                       # cancels its jobs, stops exactly the two daemons

From a shell (a cluster to try the batch scripts on by hand):

    python tests/slurm_cluster.py up /tmp/slurm      # prints the SLURM_CONF to export
    python tests/slurm_cluster.py down /tmp/slurm

The configuration (see :func:`slurm_conf`): loopback only, free ports chosen at start, no
accounting, no cgroups (``proctrack/linuxproc``, ``task/none``), ``AuthType=auth/none`` and
``CredType=cred/none`` (no munge daemon), ``SlurmdParameters=config_overrides`` so the node can
advertise more CPUs than the machine has, ``MpiDefault=pmi2`` (what the PyPI ``mpich`` wheel
speaks), ``FirstJobId`` random (job ids unique across restarts, see :func:`slurm_conf`), and
``MinJobAge`` long enough that ``scontrol show job`` still reports finished jobs (there is no
``sacct`` without accounting). Commands see the cluster through ``SLURM_CONF``.

:func:`ensure_installed` installs the Debian packages with apt-get when the binaries are missing
and returns a reason string when that is impossible (not root, no apt-get, no network), which
tests turn into a skip.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
BINARIES = ("slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "scancel", "sinfo")
PARTITION = "test"
FINISHED_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                   "PREEMPTED", "BOOT_FAIL", "DEADLINE"}


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None]


def ensure_installed(timeout: float = 400) -> str | None:
    """Install Slurm from Debian packages if needed; None when ready, else why it is not."""
    if not missing_binaries():
        return None
    if os.geteuid() != 0:
        return (f"Slurm is not installed ({', '.join(missing_binaries())} missing) and the tests "
                f"are not root, so they cannot apt-get install {' '.join(PACKAGES)}")
    if shutil.which("apt-get") is None:
        return "Slurm is not installed and there is no apt-get to install it with"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-q",
               "-o", "DPkg::Lock::Timeout=120", *PACKAGES]
    deadline = time.monotonic() + timeout
    output = ""
    for attempt in ("install", "update", "install"):
        cmd = install if attempt == "install" else ["apt-get", "update", "-q"]
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            result = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                                    text=True, timeout=left)
        except subprocess.TimeoutExpired:
            output = f"{' '.join(cmd)} ran past {timeout:g} s"
            break
        output = (result.stdout + result.stderr)[-1500:]
        if attempt == "install" and result.returncode == 0 and not missing_binaries():
            return None
    return (f"could not install Slurm ({' '.join(PACKAGES)}) with apt-get; last output:\n"
            f"{output}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slurm_conf(workdir: Path, node: str, cpus: int, ctld_port: int, slurmd_port: int,
               first_job_id: int) -> str:
    return f"""\
# Private single-node test cluster written by tests/slurm_cluster.py
ClusterName=hpcgradtest
# Job ids unique across restarts: MPICH under srun --mpi=pmi2 names its /dev/shm segments after
# the job and step id, and a killed job's stale segment crashes (or hangs) a later job with the
# same id in MPI_Init ("Invalid GenQ flag").
FirstJobId={first_job_id}
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/none
CredType=cred/none
StateSaveLocation={workdir}/state
SlurmdSpoolDir={workdir}/spool
SlurmctldPidFile={workdir}/slurmctld.pid
SlurmdPidFile={workdir}/slurmd.pid
SlurmctldLogFile={workdir}/slurmctld.log
SlurmdLogFile={workdir}/slurmd.log
PlugStackConfig={workdir}/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
SlurmdParameters=config_overrides
MpiDefault=pmi2
ReturnToService=2
MinJobAge=3600
KillWait=5
InactiveLimit=0
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=4000 State=UNKNOWN
PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


def _die_with_parent() -> None:  # between fork and exec: SIGTERM the daemon if pytest dies
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class SlurmCluster:
    def __init__(self, workdir, cpus: int = 16):
        self.workdir = Path(workdir).resolve()
        self.cpus = cpus
        self.node = socket.gethostname().split(".")[0]
        self.conf = self.workdir / "slurm.conf"
        self.procs: dict[str, subprocess.Popen] = {}

    @property
    def env(self) -> dict[str, str]:
        """os.environ with SLURM_CONF set and any enclosing job's SLURM_* variables removed."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        env["SLURM_CONF"] = str(self.conf)
        return env

    def start(self, timeout: float = 60, *, detach: bool = False) -> None:
        for sub in ("state", "spool"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        (self.workdir / "plugstack.conf").write_text("")
        self.conf.write_text(slurm_conf(self.workdir, self.node, self.cpus, _free_port(),
                                        _free_port(), random.randint(1_000_000, 60_000_000)))
        for name, cmd in (("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)]),
                          ("slurmd", ["slurmd", "-D", "-f", str(self.conf)])):
            out = open(self.workdir / f"{name}.out", "wb")
            self.procs[name] = subprocess.Popen(
                cmd, env=self.env, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                start_new_session=True, preexec_fn=None if detach else _die_with_parent)
            out.close()
            (self.workdir / f"{name}.started-pid").write_text(str(self.procs[name].pid))
        deadline = time.monotonic() + timeout
        while True:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"{name} exited with status {proc.returncode} at start; "
                                       f"see {self.workdir}/{name}.log and {name}.out:\n"
                                       + self._log_tail(name))
            state = self.run(["sinfo", "-h", "-N", "-o", "%t"], check=False).stdout.strip()
            if state in ("idle", "mix", "alloc"):
                return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the test node did not become idle within {timeout:g} s "
                                   f"(sinfo says {state!r}); see {self.workdir}/slurmd.log:\n"
                                   + self._log_tail("slurmd"))
            time.sleep(0.3)

    def _log_tail(self, name: str) -> str:
        text = ""
        for suffix in (".log", ".out"):
            path = self.workdir / f"{name}{suffix}"
            if path.exists():
                text += path.read_text(errors="replace")[-1500:]
        return text

    def run(self, cmd, *, check: bool = True, timeout: float = 30, env=None, cwd=None):
        full_env = self.env
        if env:
            full_env.update(env)
        result = subprocess.run(cmd, env=full_env, cwd=cwd, stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(map(str, cmd))} exited {result.returncode}:\n"
                               f"{result.stdout}{result.stderr}")
        return result

    def sbatch(self, args, *, env=None, cwd=None) -> str:
        """Submit; returns the job id (for an array, the array's job id)."""
        result = self.run(["sbatch", "--parsable", *map(str, args)], env=env, cwd=cwd)
        return result.stdout.strip().split(";")[0]

    def job_records(self, job_id: str) -> list[dict[str, str]]:
        """``scontrol show job`` for a job (one record per array task), as dictionaries."""
        result = self.run(["scontrol", "show", "job", "-o", str(job_id)], check=False)
        records = []
        for line in result.stdout.splitlines():
            record = {}
            for field in line.split():
                key, _, value = field.partition("=")
                record.setdefault(key, value)
            if record.get("JobId"):
                records.append(record)
        return records

    def wait(self, job_ids, timeout: float = 120, tasks: dict | None = None) -> dict:
        """Wait until every job (every task of an array) has finished.

        Returns ``{job_id: [record, ...]}``. ``tasks`` gives, per array job id, how many tasks to
        expect (a pending array shows as one record until its tasks start). Raises
        ``AssertionError`` with the queue's state on timeout.
        """
        tasks = tasks or {}
        deadline = time.monotonic() + timeout
        while True:
            done, records = True, {}
            for job in job_ids:
                recs = self.job_records(job)
                records[job] = recs
                finished = [r for r in recs if r.get("JobState") in FINISHED_STATES]
                if not recs or len(finished) < len(recs) or len(recs) < tasks.get(job, 1):
                    done = False
            if done:
                return records
            if time.monotonic() > deadline:
                queue = self.run(["squeue", "-o", "%i %T %r %M"], check=False).stdout
                raise AssertionError(f"Slurm jobs {job_ids} did not finish within {timeout:g} "
                                     f"s; queue:\n{queue}")
            time.sleep(0.5)

    def stop(self, timeout: float = 30) -> None:
        """Cancel this cluster's jobs, then stop exactly the daemons this object started."""
        if not self.procs:
            return
        if all(p.poll() is None for p in self.procs.values()):
            try:
                self.run(["scancel", "--full", "--user", "root"], check=False, timeout=10)
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline:
                    if not self.run(["squeue", "-h", "-t", "R,CG"], check=False,
                                    timeout=10).stdout.strip():
                        break
                    time.sleep(0.3)
            except (subprocess.SubprocessError, OSError):
                pass
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self.procs.clear()


def _stop_detached(workdir: Path) -> None:
    """Stop the daemons a detached ``up`` started (their pids were recorded at start)."""
    cluster = SlurmCluster(workdir)
    cluster.run(["scancel", "--full", "--user", "root"], check=False, timeout=10)
    for name in ("slurmctld", "slurmd"):
        path = workdir / f"{name}.started-pid"
        if not path.exists():
            continue
        pid = int(path.read_text())
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if name.encode() not in f.read():
                    continue  # the pid was reused by something else
            os.kill(pid, signal.SIGTERM)
        except (FileNotFoundError, ProcessLookupError):
            continue
        for _ in range(150):
            if not os.path.exists(f"/proc/{pid}"):
                break
            time.sleep(0.1)
        path.unlink()


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] not in ("up", "down"):
        print("usage: python tests/slurm_cluster.py up|down WORKDIR", file=sys.stderr)
        return 2
    workdir = Path(argv[1]).resolve()
    if argv[0] == "down":
        _stop_detached(workdir)
        return 0
    reason = ensure_installed()
    if reason:
        print(f"slurm_cluster: {reason}", file=sys.stderr)
        return 1
    workdir.mkdir(parents=True, exist_ok=True)
    SlurmCluster(workdir).start(detach=True)
    print(f"export SLURM_CONF={workdir / 'slurm.conf'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
