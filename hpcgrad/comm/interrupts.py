"""What a signal does to an MPI job: end it at once, or stop it at an agreed step.

``hpcgrad train`` installs this policy (:func:`install`) before MPI starts:

* **SIGINT** (Ctrl-C) on any rank, at any time: the job is aborted, status 130
  (:data:`EXIT_INTERRUPTED`), with one line ``hpcgrad: interrupted (SIGINT) on rank N; aborting
  all S ranks``.
* **SIGTERM**, and the signal of ``--preempt-signal`` (e.g. SIGUSR1 for ``sbatch --signal``):
  once the training loop runs (:func:`allow_stop`), a *stop request*: the loop reads
  :func:`stop_requested` and the ranks agree on the step to stop at (``runtime.py``), save a
  checkpoint, close the log and exit with status 143 (:data:`EXIT_PREEMPTED`).  Before the
  loop there is nothing to save: the job is aborted with status 143 at once.

MPI semantics that shape this module:

* A rank blocked in a collective (say the setup ``MPI_Allgather``, waiting for a rank that
  will never come) runs no Python code, so a Python signal handler would run only when the
  collective returns -- never.  Python's C-level handler does run at once, and writes the
  signal number to the wakeup file descriptor (:func:`signal.set_wakeup_fd`); a thread reading
  it wakes while the main thread stays blocked (mpi4py releases the GIL in blocking MPI calls)
  and acts for it.  The main thread's own handler does nothing, so no rank dies of an
  uncaught ``KeyboardInterrupt`` (Python then re-raises SIGINT on itself, and Hydra, which
  ORs the ranks' statuses, reported SIGKILL | SIGINT = 9 | 2 as "Segmentation fault (signal
  11)", exit status 11).
* ``MPI_Init`` holds the GIL: a rank whose peer ended before ``MPI_Init`` waits there with no
  Python code able to run, so :func:`start_mpi` bounds it with SIGALRM's default action.
* ``MPI_Abort(MPI_COMM_WORLD, status)`` from any one rank ends every rank of the job
  (MPICH's Hydra and Slurm's srun kill the others; ``mpiexec`` exits with ``status``), and
  prints one line of its own.  Before ``MPI_Init`` (or after ``MPI_Finalize``) it cannot be
  called: a signal that comes before it waits (up to 10 s) for the main thread to start MPI,
  a signal after it (or a process that never starts MPI: :func:`mpi_not_coming`) makes the
  rank exit with the status, and the launcher ends the rest.
* Hydra (``mpiexec``) forwards SIGINT and SIGTERM to every rank, Slurm signals every task,
  ``kill`` may reach one rank only.  To print one line, not one per rank, rank 0 acts at once
  and rank r > 0 waits :func:`quiet_delay` first: if rank 0 (or a lower rank) saw the same
  signal or failure, its ``MPI_Abort`` ends this rank before it prints.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time

#: Exit status of a job aborted by SIGINT (128 + 2, the shell's convention).
EXIT_INTERRUPTED = 128 + signal.SIGINT
#: Exit status of a job stopped by SIGTERM or ``--preempt-signal`` (128 + 15).
EXIT_PREEMPTED = 128 + signal.SIGTERM

#: ``--preempt-signal`` choices: signals a batch system sends ahead of a time limit.
PREEMPT_SIGNALS = ("USR1", "USR2", "HUP")

#: Seconds between printing the job-ending line and ``MPI_Abort`` (see :func:`abort`).
LINGER_S = 0.5

_state = {"installed": False, "stoppable": False, "stop": None, "aborting": False,
          "mpi_done": False}
_lock = threading.Lock()


def launcher_rank() -> int | None:
    """This process's rank as the launcher told it (Hydra, PMIx, Open MPI, srun), read from
    the environment, so it is known before ``MPI_Init``; None outside a launch."""
    for name in ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID"):
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return None


def quiet_delay(rank: int) -> float:
    """Seconds rank ``rank`` waits before it prints a job-ending message and aborts: 0 on
    rank 0; on rank r > 0, :data:`LINGER_S` (a lower rank's pause between its line and its
    ``MPI_Abort``) plus 0.5 s per rank up to 2 s, so that usually the lowest rank that saw
    the fault speaks and its ``MPI_Abort`` silences the others."""
    return LINGER_S + 0.5 * min(rank, 4) if rank > 0 else 0.0


def _mpi():
    """mpi4py's MPI module if MPI is running in this process (initialised, not finalised);
    else None.  Never imports it: importing it would start MPI."""
    mpi = sys.modules.get("mpi4py.MPI")
    try:
        if mpi is None or not mpi.Is_initialized() or mpi.Is_finalized():
            return None
    except AttributeError:  # the module is being imported: MPI_Init is under way
        return None
    return mpi


def _wait_for_mpi(timeout: float):
    """MPI as soon as it runs, for up to ``timeout`` seconds (the main thread goes on towards
    ``MPI_Init`` while the watcher waits: an abort through MPI ends every rank cleanly, where
    a rank that just exits leaves the launcher to kill the others, with a banner)."""
    deadline = time.monotonic() + timeout
    while True:
        mpi = _mpi()
        if mpi is not None or time.monotonic() > deadline or _state["mpi_done"]:
            return mpi
        time.sleep(0.05)


def abort(status: int, message, rank: int | None = None) -> None:
    """End the whole job: after :func:`quiet_delay`, print ``message(rank, size)`` and call
    ``MPI_Abort`` on the world with ``status``; before MPI runs (or after it finished), exit
    this process with ``status``.  Never returns; the first caller in a process wins (the
    watcher thread and the main thread may both get here)."""
    with _lock:
        first = not _state["aborting"]
        _state["aborting"] = True
    if not first:
        while True:  # the other caller is ending the job, and this process with it
            time.sleep(60)
    mpi = _wait_for_mpi(10.0) if _state["installed"] else _mpi()
    if rank is None:
        rank = mpi.COMM_WORLD.Get_rank() if mpi is not None else (launcher_rank() or 0)
    size = mpi.COMM_WORLD.Get_size() if mpi is not None else os.environ.get("PMI_SIZE", "all")
    time.sleep(quiet_delay(rank))
    try:
        print(message(rank, size), file=sys.stderr, flush=True)
    except (OSError, ValueError):  # stderr closed: ending the job matters more
        pass
    # The line is in the pipe to the launcher's proxy, not yet on the user's terminal: MPI_Abort
    # at once lets the launcher kill the proxies before they forward it (seen under load: an
    # aborted job with an empty stderr).
    time.sleep(LINGER_S)
    if mpi is not None and _mpi() is not None:
        mpi.COMM_WORLD.Abort(status)
    os._exit(status)


def _act(signum: int) -> None:
    """The watcher thread's response to one signal (module docstring)."""
    name = signal.Signals(signum).name
    if signum == signal.SIGINT:
        abort(EXIT_INTERRUPTED, lambda rank, size: f"hpcgrad: interrupted ({name}) on rank "
                                                   f"{rank}; aborting all {size} ranks")
    if _state["stoppable"]:
        if _state["stop"] is None:
            _state["stop"] = name
        return
    abort(EXIT_PREEMPTED, lambda rank, size: f"hpcgrad: terminated ({name}) on rank {rank} "
                                             "before training started, nothing to save; "
                                             f"aborting all {size} ranks")


def _watch(read_fd: int) -> None:
    while True:
        try:
            data = os.read(read_fd, 64)
        except InterruptedError:
            continue
        except OSError:
            return
        for signum in data:
            _act(signum)


def _ignore(signum, frame) -> None:
    """The main thread's handler: the watcher thread already acted on the signal."""


def install(extra_stop_signals=()) -> None:
    """Install the policy in this process (main thread only; once, before ``import
    mpi4py.MPI``, so that no signal falls between MPI starting and the policy): SIGINT
    aborts, SIGTERM and ``extra_stop_signals`` (names such as ``"USR1"``) stop or abort.
    Calling it again adds signals."""
    signals = [signal.SIGINT, signal.SIGTERM,
               *(signal.Signals[f"SIG{name}"] for name in extra_stop_signals)]
    if not _state["installed"]:
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)  # the C handler must never block
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        threading.Thread(target=_watch, args=(read_fd,), name="hpcgrad-signals",
                         daemon=True).start()
        _state["installed"] = True
    for signum in signals:
        signal.signal(signum, _ignore)


def start_timeout() -> float:
    """Seconds every rank has to start MPI: ``$HPCGRAD_START_TIMEOUT``, default 60."""
    return float(os.environ.get("HPCGRAD_START_TIMEOUT", "60"))


def start_mpi():
    """``import mpi4py.MPI`` (``MPI_Init``), ended by SIGALRM if it has not returned within
    :func:`start_timeout`.  A rank that ended before ``MPI_Init`` leaves the others waiting in
    theirs, holding Python's GIL, so neither a Python handler nor the watcher thread can run:
    only the signal's default action ends the process (the launcher then ends the job)."""
    previous = signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.alarm(max(1, math.ceil(start_timeout())))
    try:
        from mpi4py import MPI
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return MPI


def mpi_not_coming() -> None:
    """MPI will not run (again) in this process (it cannot start, or it was finalised): a
    signal then ends the process at once instead of waiting for ``MPI_Init``."""
    _state["mpi_done"] = True


def allow_stop() -> None:
    """From now on SIGTERM and the ``--preempt-signal`` request a stop at a step instead of
    aborting (the training loop calls it as it starts; it stays so until the process ends,
    so that a run finishing its last steps completes normally)."""
    _state["stoppable"] = True


def stop_requested() -> str | None:
    """The name of the signal that asked this rank to stop (``"SIGTERM"``), or None.  Local
    to the rank: the ranks agree on it in the training loop."""
    return _state["stop"]


class Stopped(Exception):
    """Raised on every rank alike when the ranks agreed to stop on a signal, after the state
    was saved: ``step`` steps are done; ``checkpoint`` is the directory written, or None."""

    def __init__(self, signal_name: str, step: int, iterations: int, checkpoint=None):
        self.signal_name, self.step, self.iterations = signal_name, step, iterations
        self.checkpoint = checkpoint
        saved = (f"checkpoint {checkpoint}; continue with --resume "
                 f"{os.path.dirname(checkpoint)}"
                 if checkpoint else "no checkpoint (no --checkpoint-dir)")
        super().__init__(f"stopped by {signal_name} after step {step} of {iterations}; "
                         f"{saved}")


class StopVote:
    """Collective: do the ranks of ``comm`` stop after this step?  A rank's stop request
    counts once every rank has seen it, so that all stop after the same step.

    Each call (every rank, every step, in the same order as the step's other collectives)
    waits for the vote started by the previous call and starts a new one: an
    ``MPI_Iallreduce`` (MAX) of one int, which completes in the background of the next step
    (its Gatherv and Bcast drive MPI's progress), so it adds no synchronisation of its own.
    A request seen at step t therefore stops the job after step t + 1."""

    def __init__(self, comm):
        import numpy as np
        from mpi4py import MPI

        self.comm, self._max = comm, MPI.MAX
        self._send = np.zeros(1, np.int32)
        self._result = np.zeros(1, np.int32)
        self._request = None

    def step(self, requested: bool) -> bool:
        """This rank's request (True: stop); returns, alike on every rank, whether any rank
        had requested a stop at the previous call."""
        agreed = self.close()
        self._send[0] = int(requested)
        self._request = self.comm.Iallreduce(self._send, self._result, op=self._max)
        return agreed

    def close(self) -> bool:
        """Finish the vote in flight (collective); returns its outcome."""
        if self._request is None:
            return False
        self._request.Wait()
        self._request = None
        return bool(self._result[0])
