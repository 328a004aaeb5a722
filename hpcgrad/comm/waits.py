"""How MPI ranks wait: yield the core when ranks outnumber the cores of their machine.

MPICH's default wait busy-polls: a rank blocked in ``MPI_Gatherv`` or ``MPI_Bcast`` spins on
its core.  With more ranks than cores (a laptop, a CI box, ``mpiexec -n 5`` on 2 cores) the
spinning ranks take the time slices the working ranks need -- the server's aggregate, the
slowest worker's encode -- and every step waits for them.  ``MPIR_CVAR_ENABLE_HEAVY_YIELD=1``
makes a waiting MPICH rank call ``sched_yield`` instead (measured: the signum-mv exchange at
d = 25.6M, 5 ranks on 2 cores, went from 64 to 18 ms; docs/benchmarks.md).

MPICH reads the variable in ``MPI_Init``, so :func:`prefer_yield` must run before
``mpi4py.MPI`` is imported; ``hpcgrad.cli`` and ``hpcgrad.torch`` call it first.  It sets
the variable only when the launcher's environment says this machine runs more ranks than
this process may use cores (``os.sched_getaffinity``), and never over a value the user set.
Other MPI libraries ignore the variable (Open MPI yields on its own when it sees
oversubscription).

The node-local rank count comes from the first of these that is set: ``MPI_LOCALNRANKS``
(MPICH's Hydra), ``OMPI_COMM_WORLD_LOCAL_SIZE`` (Open MPI), ``SLURM_STEP_TASKS_PER_NODE``
(an ``srun`` step: ``2(x3),1`` lists the tasks of each node, this node's entry picked by
``SLURM_NODEID``), ``SLURM_NTASKS_PER_NODE`` (``--ntasks-per-node``, a plain number), and
``PMI_SIZE`` (the world size: an upper bound, read as one machine's when nothing more precise
is set).
"""

from __future__ import annotations

import os
import re
import sys

#: The MPICH control variable this module sets.
VARIABLE = "MPIR_CVAR_ENABLE_HEAVY_YIELD"

#: Where the node-local rank count is read from, most precise first.
LOCAL_COUNT_VARIABLES = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE",
                         "SLURM_STEP_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE", "PMI_SIZE")


def _tasks_on_node(value: str, node: int) -> int | None:
    """Slurm's per-node task list (``2(x3),1``: 2 tasks on each of 3 nodes, then 1) at
    ``node``, or None if it does not parse or has no such node."""
    # Walked, not expanded: a list such as 1(x1000000) is read without a million-entry list.
    first, count = 0, None
    for item in value.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", item)
        if match is None:
            return None
        repeats = int(match.group(2) or 1)
        if first <= node < first + repeats:
            count = int(match.group(1))
        first += repeats
    return count

#: What :func:`prefer_yield` decided in this process (None: it has not run).
_decision: str | None = None


def local_ranks(environ=None) -> tuple[int, str] | tuple[None, None]:
    """``(count, variable)``: how many ranks the launcher runs on this machine, and the
    variable that said so; ``(None, None)`` when none is set, or none parses."""
    environ = os.environ if environ is None else environ
    for name in LOCAL_COUNT_VARIABLES:
        value = environ.get(name, "")
        if name == "SLURM_STEP_TASKS_PER_NODE":
            node = environ.get("SLURM_NODEID", "0")
            count = _tasks_on_node(value, int(node)) if value and node.isdigit() else None
        else:
            match = re.fullmatch(r"\s*(\d+)\s*", value)
            count = int(match.group(1)) if match else None
        if count:
            return count, name
    return None, None


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, as a launcher's binding sets
    it), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux: no affinity masks
        return os.cpu_count() or 1


def prefer_yield(environ=None, cores: int | None = None) -> str:
    """Set ``MPIR_CVAR_ENABLE_HEAVY_YIELD=1`` in ``environ`` (default ``os.environ``) when
    the node-local ranks outnumber ``cores`` (default :func:`usable_cores`) and the user has
    not set it; return one line saying what was done and why (also :func:`decision`).

    Call it before ``MPI_Init``: once ``mpi4py.MPI`` is imported the setting is read and
    this changes nothing (the line then says so)."""
    global _decision
    environ = os.environ if environ is None else environ
    cores = usable_cores() if cores is None else int(cores)
    count, source = local_ranks(environ)
    if VARIABLE in environ:
        _decision = f"{VARIABLE}={environ[VARIABLE]} (set by the user)"
    elif count is None or count <= cores:
        where = "no launcher rank count" if count is None else \
            f"{count} ranks on this machine ({source}), {cores} cores"
        _decision = f"MPI waits busy-poll (MPICH default): {where}"
    elif "mpi4py.MPI" in sys.modules:
        _decision = (f"{count} ranks share {cores} cores ({source}) but MPI had already "
                     f"started: {VARIABLE} not set")
    else:
        environ[VARIABLE] = "1"
        _decision = (f"{VARIABLE}=1 (set by hpcgrad: {count} ranks share {cores} cores, "
                     f"{source})")
    return _decision


def decision() -> str:
    """The line :func:`prefer_yield` returned in this process, or what the environment says
    if it did not run (a program that started MPI itself)."""
    if _decision is not None:
        return _decision
    value = os.environ.get(VARIABLE)
    return f"{VARIABLE}={value} (not chosen by hpcgrad)" if value is not None else \
        "MPI waits as the MPI library chose (hpcgrad started no MPI)"
