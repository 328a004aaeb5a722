"""Setup steps whose failure all ranks agree on, so that no rank waits alone.

A setup step may fail on some ranks only (a log path that rank 0 cannot
write, a file missing on one node, too little memory on one host).  A rank
that raised and left would leave the others waiting forever in their next
collective; :func:`agree` turns a failure anywhere into the same
:class:`SetupError` everywhere.  It imports nothing heavy (no torch), so the
benchmarks use it too.
"""

from __future__ import annotations

import traceback

from ..errors import HpcgradError
from . import interrupts


class SetupError(HpcgradError):
    """Setup failed on at least one rank; raised on every rank alike."""


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
