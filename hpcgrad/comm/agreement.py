"""Setup steps whose failure all ranks agree on, so that no rank waits alone.

A setup step may fail on some ranks only (a log path that rank 0 cannot
write, a file missing on one node, too little memory on one host).  A rank
that raised and left would leave the others waiting forever in their next
collective; :func:`agree` turns a failure anywhere into the same
:class:`SetupError` everywhere.  It imports nothing heavy (no torch), so the
benchmarks use it too.
"""

from __future__ import annotations

import time
import traceback

from ..errors import HpcgradError
from . import interrupts


class AgreedError(HpcgradError):
    """A failure every rank of the job learned of together (through a collective), so every
    rank raises it at the same point: rank 0 reports it once and every rank exits with
    ``status``, without ``MPI_Abort`` (no rank is left waiting).  A checkpoint that cannot be
    written is one (status 1)."""

    status = 1


class SetupError(AgreedError):
    """Setup failed on at least one rank; raised on every rank alike (status 2)."""

    status = 2


def agree(comm, action, what: str):
    """Collective: run ``action()`` on every rank of ``comm``; if it raised on any
    rank, raise :class:`SetupError` naming the first such rank on all of them."""
    result, error = None, None
    try:
        result = action()
    except (HpcgradError, OSError, ValueError) as exc:
        error = str(exc)
    failed = [(rank, msg) for rank, msg in enumerate(comm.allgather(error)) if msg is not None]
    if failed:
        rank, msg = failed[0]
        raise SetupError(f"{what} failed on rank {rank}: {msg}")
    return result


def all_started(comm, timeout: float) -> None:
    """Collective, the first after ``MPI_Init``: wait until every rank of ``comm`` has started
    MPI, for at most ``timeout`` seconds, then raise :class:`HpcgradError`.

    A rank that ends before ``MPI_Init`` (an import that fails on one node, a signal during
    Python's start-up) never joins a collective, and MPICH's launcher does not end a job for a
    rank that exits before ``MPI_Init``: without this the others would wait forever in their
    first collective.  A non-blocking barrier (``MPI_Ibarrier``) is polled, so the wait can
    end."""
    request = comm.Ibarrier()
    deadline = time.monotonic() + timeout
    while not request.Test():
        if time.monotonic() > deadline:
            raise HpcgradError(f"not all {comm.Get_size()} ranks started MPI within "
                               f"{timeout:g} s: a rank ended before MPI_Init (see its "
                               "output above), or start-up is slower than "
                               "HPCGRAD_START_TIMEOUT allows")
        time.sleep(0.01)


def abort_job(comm, rank: int, exc: BaseException) -> None:
    """After setup, a failure on one rank ends the whole job: print it, naming the rank (a
    traceback unless it is one of hpcgrad's own errors), then ``MPI_Abort`` with status 1,
    so that no other rank is left waiting in a collective.  A rank r > 0 waits
    :func:`interrupts.quiet_delay` first: a failure every rank hits is printed once."""
    if isinstance(exc, HpcgradError):
        detail = f"{type(exc).__name__}: {exc}"
    else:
        detail = "".join(traceback.format_exception(exc)).rstrip()
    interrupts.abort(1, lambda rank, size: f"hpcgrad: error on rank {rank}: {detail}\n"
                                           f"hpcgrad: aborting all {size} ranks", rank)
