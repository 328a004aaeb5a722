"""Start ``mpiexec -n N python -m hpcgrad train ...`` in the background and signal it, or one
of its ranks, from a test (tests/training/test_interrupts.py, tests/scripts/interrupt_stress.py).

The ranks are found through /proc: every launch gets its own ``HPCGRAD_TEST_LAUNCH`` tag in
the environment (Hydra passes the environment on), and a rank is the process with that tag and
``PMI_RANK=r``.  Every wait is bounded: a launch still running past its ``timeout`` is stopped
(SIGTERM, then SIGKILL, to its process group) and reported as a hang.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from mpirun import _die_with_parent, _PRCTL, _stop_group, mpi_env, mpiexec_path


@dataclass
class Ended:
    returncode: int | None  # None: it hung and was killed
    stdout: str
    stderr: str
    seconds: float  # from start to end

    @property
    def hung(self) -> bool:
        return self.returncode is None


class Launch:
    """``mpiexec -n n python -m hpcgrad <args>`` running in the background."""

    def __init__(self, n: int, args, env=None, cwd=None):
        self.tag = uuid.uuid4().hex
        self.n = n
        cmd = [mpiexec_path(), "-n", str(n), sys.executable, "-m", "hpcgrad", *map(str, args)]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=mpi_env({**(env or {}), "HPCGRAD_TEST_LAUNCH": self.tag}), cwd=cwd,
            start_new_session=True, preexec_fn=_die_with_parent if _PRCTL is not None else None)

    def rank_pid(self, rank: int, timeout: float = 30) -> int:
        """The pid of rank ``rank``, waiting until it exists."""
        wanted = {f"HPCGRAD_TEST_LAUNCH={self.tag}".encode(), f"PMI_RANK={rank}".encode()}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                try:
                    environ = set((entry / "environ").read_bytes().split(b"\0"))
                    cmdline = (entry / "cmdline").read_bytes()
                except OSError:
                    continue
                if wanted <= environ and b"hpcgrad" in cmdline:
                    return int(entry.name)
            time.sleep(0.05)
        raise AssertionError(f"rank {rank} of the launch did not appear within {timeout} s")

    def signal(self, sig, rank: int | None = None) -> None:
        """Send ``sig`` to ``mpiexec`` (which forwards SIGINT and SIGTERM to every rank), or to
        rank ``rank`` only."""
        os.kill(self.proc.pid if rank is None else self.rank_pid(rank), sig)

    def wait(self, timeout: float) -> Ended:
        try:
            out, err = self.proc.communicate(timeout=timeout)
            code = self.proc.returncode
        except subprocess.TimeoutExpired:
            out, err = _stop_group(self.proc)
            code = None
        return Ended(code, out, err, time.monotonic() - self.started)

    def stop(self) -> None:
        if self.proc.poll() is None:
            _stop_group(self.proc, grace=2.0)


def signal_at(n, args, sig, after_s: float, rank=None, timeout=60, env=None, cwd=None):
    """Start a launch, send ``sig`` ``after_s`` seconds later (to mpiexec, or to ``rank``), and
    wait at most ``timeout`` seconds more; returns (Ended, seconds from the signal to the end)."""
    launch = Launch(n, args, env=env, cwd=cwd)
    try:
        pid = launch.rank_pid(rank) if rank is not None else launch.proc.pid
        time.sleep(max(0.0, after_s - (time.monotonic() - launch.started)))
        sent = time.monotonic()
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass  # it already ended
        ended = launch.wait(timeout)
        return ended, time.monotonic() - sent
    finally:
        launch.stop()


def interrupted_cleanly(ended: Ended) -> list[str]:
    """What is wrong with how a job ended on SIGINT (empty: nothing)."""
    problems = []
    if ended.hung:
        problems.append("it hung")
    text = ended.stdout + ended.stderr
    if "Segmentation fault" in text or ended.returncode in (11, 139, -11):
        problems.append("a segmentation fault")
    if ended.returncode == 0:
        problems.append("exit status 0")
    return problems


__all__ = ["Ended", "Launch", "interrupted_cleanly", "signal_at"]
