"""The stop protocol: before every exchange, each rank says what it is about to do.

A wrapped run has no ``--iterations`` everyone knows in advance: each worker's loop decides
when it ends, and a worker whose loop ends one step early would leave the server waiting
forever in a Gatherv.  So every exchange is preceded by a small *report* from every rank
(an ``allgather`` of a few numbers: MPI semantics, every rank receives every report), and
every rank computes the same *verdict* from the same reports:

* every worker reports ``step``, in agreement -> ``go``: run the exchange;
* every worker reports ``done`` (``DistributedOptimizer.finish()``, or the interpreter exiting)
  -> ``stop``: the server's loop returns, the run is closed;
* anything else is an error raised on every rank alike (:class:`AgreedError`), naming the
  rank and the parameter: some workers done and others not (``step()`` called a different
  number of times), a gradient ``None`` on one worker and not on another, a NaN or Inf in a
  gradient, learning rates that differ between workers.

Reports have a fixed size (``pack``: a few int64 and one learning rate per parameter group), so
the per-step cost is one small ``Allgather``.

With ``nonfinite="skip"`` (mixed precision with a loss scaler), a step where any worker
found a NaN or Inf is skipped on every rank instead: no exchange, no update, not counted.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

import numpy as np

from ..errors import NonFiniteError
from .context import AgreedError

STEP, DONE, SERVER = "step", "done", "server"


class StepMismatchError(AgreedError):
    """Workers disagree about the step: how many, which gradients, which learning rate."""


class NonFiniteGradientError(AgreedError, NonFiniteError):
    """A worker's gradient holds a NaN or an Inf."""


@dataclass(frozen=True)
class Report:
    """What one rank is about to do.  ``steps``: exchanges it completed; ``missing``: indices
    of parameters whose ``.grad`` is None; ``nonfinite``: the first parameter with a NaN/Inf
    gradient (or None) and the policy (``"error"`` or ``"skip"``); ``lrs``: the learning rate
    of each of its optimizer's parameter groups; ``buffers``: broadcast buffers after it."""

    kind: str
    steps: int = 0
    missing: tuple = ()
    nonfinite: int | None = None
    policy: str = "error"
    lrs: tuple = ()
    buffers: bool = False


@dataclass(frozen=True)
class Verdict:
    action: str  # "go", "skip" or "stop"
    lrs: tuple = ()
    buffers: bool = False


def _ranks(ranks) -> str:
    ranks = list(ranks)
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(map(str, ranks))


def decide(reports: list, names: list) -> Verdict:
    """The verdict on the reports of every rank (index = rank; rank 0 the server's), or an
    :class:`AgreedError` naming what is wrong.  A pure function: every rank computes it."""
    workers = {rank: r for rank, r in enumerate(reports) if rank > 0}
    done = [rank for rank, r in workers.items() if r.kind == DONE]
    stepping = [rank for rank, r in workers.items() if r.kind == STEP]
    if len(done) == len(workers):
        return Verdict("stop")
    if done:
        n = workers[done[0]].steps
        raise StepMismatchError(
            f"{_ranks(done)} finished after {n} optimizer steps while {_ranks(stepping)} "
            f"called step() for step {workers[stepping[0]].steps + 1}: every worker must call "
            "step() the same number of times (give each the same number of batches, e.g. "
            "hpcgrad.torch.WorkerSampler and a DataLoader with drop_last=True)")
    first = workers[stepping[0]]
    for rank, r in workers.items():
        if r.steps != first.steps:
            raise StepMismatchError(f"rank {rank} is at step {r.steps}, rank {stepping[0]} at "
                                    f"step {first.steps}")
    for rank, r in workers.items():
        if r.missing != first.missing:
            differ = sorted(set(r.missing) ^ set(first.missing))[0]
            none_on, set_on = (rank, stepping[0]) if differ in r.missing else (stepping[0], rank)
            raise StepMismatchError(
                f"step {first.steps}: the gradient of parameter {names[differ]} is None on "
                f"rank {none_on} but not on rank {set_on}: every worker must compute a "
                "gradient for the same parameters (an unused branch must be unused on all)")
    bad = [(rank, r) for rank, r in workers.items() if r.nonfinite is not None]
    if any(r.policy == "error" for _, r in bad):
        rank, r = next((rank, r) for rank, r in bad if r.policy == "error")
        raise NonFiniteGradientError(
            f"rank {rank}: non-finite gradient (NaN or Inf) in parameter {names[r.nonfinite]} "
            f"at step {r.steps}" + (f" (also on {_ranks(q for q, _ in bad[1:])})"
                                    if len(bad) > 1 else ""))
    for rank, r in workers.items():
        if r.lrs != first.lrs:
            raise StepMismatchError(
                f"step {first.steps}: rank {rank}'s optimizer has learning rates "
                f"{list(r.lrs)}, rank {stepping[0]}'s {list(first.lrs)}: every worker must "
                "follow the same schedule")
    if bad:
        return Verdict("skip", first.lrs)
    return Verdict("go", first.lrs, workers[1].buffers)


KINDS = (STEP, DONE, SERVER)
POLICIES = ("error", "skip")
#: kind, steps, number of None gradients, their digest, first non-finite (-1: none), policy,
#: buffers; then one learning rate per parameter group (float64 bits).
_FIXED = 7


def _digest(missing: tuple) -> int:
    """56 bits of a hash of the indices of None gradients (fits an int64)."""
    return int.from_bytes(hashlib.blake2b(repr(tuple(missing)).encode(), digest_size=7).digest(),
                          "little")


def pack(report: Report, groups: int) -> np.ndarray:
    """A report as ``_FIXED + groups`` int64: the same length on every rank, so one
    ``Allgather`` of fixed size carries every rank's (no pickling on the per-step path)."""
    row = np.zeros(_FIXED + groups, dtype=np.int64)
    row[:_FIXED] = (KINDS.index(report.kind), report.steps, len(report.missing),
                    _digest(report.missing), -1 if report.nonfinite is None else report.nonfinite,
                    POLICIES.index(report.policy), int(report.buffers))
    if report.lrs:
        row[_FIXED:] = np.asarray(report.lrs, dtype=np.float64).view(np.int64)
    return row


def unpack(row: np.ndarray) -> Report:
    """The report of a packed row; ``missing`` is a key (count, digest) until the indices are
    needed."""
    kind, steps, count, digest, nonfinite, policy, buffers = (int(v) for v in row[:_FIXED])
    return Report(KINDS[kind], steps, ("key", count, digest), None if nonfinite < 0 else nonfinite,
                  POLICIES[policy], tuple(float(v) for v in row[_FIXED:].view(np.float64)),
                  bool(buffers))


def exchange_reports(comm, report: Report, names: list, groups: int) -> Verdict:
    """Collective: every rank's report to every rank (``Allgather`` of ``pack``), and the
    verdict on them.  Only when the workers' sets of None gradients differ do all ranks
    exchange the sets themselves (a second, pickled ``allgather``) to name the parameter."""
    send = pack(report, groups)
    rows = np.empty((comm.Get_size(), send.size), dtype=np.int64)
    comm.Allgather(send, rows)
    reports = [unpack(row) for row in rows]
    if len({r.missing for r in reports[1:]}) > 1:  # the same test on every rank: same rows
        sets = comm.allgather(tuple(report.missing))
        reports = [dataclasses.replace(r, missing=m) for r, m in zip(reports, sets)]
    return decide(reports, names)
