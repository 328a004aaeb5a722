"""Alpha-beta(-gamma) model of one step's communication, and a least-squares fit of it.

Costs (MPICH's algorithms for long messages; ``docs/analysis.md`` and
``/work/shared/docs/targets.md``), for ``p`` MPI ranks, ``lg p = ceil(log2 p)``, ``alpha`` seconds
per message (latency), ``beta`` seconds per byte (1 / bandwidth), ``gamma`` seconds per byte
reduced::

    Gather    T = lg p * alpha + n * (p-1)/p * beta
    Bcast     T = 2 lg p * alpha + 2 n * (p-1)/p * beta
    Allreduce T = 2 lg p * alpha + 2 n * (p-1)/p * beta + n * (p-1)/p * gamma

For Gather ``n`` is the total gathered at the root counting the root's own block.  In the
parameter server rank 0 contributes an empty block and each of the ``M = p-1`` workers ``b``
bytes, so with ``n = p*b`` the bandwidth term ``n (p-1)/p beta = M b beta`` is exactly the
bytes that cross the root's link (the incast); for unequal messages it is the sum of the
workers' messages, which is what :func:`gather_time` takes.  For Bcast ``n`` is the downlink
message, for Allreduce the fp32 buffer (``4 d``).

A parameter-server step costs ``Gather(uplinks) + Bcast(downlink)`` (``aggregate`` is server
compute, not communication); an ``allreduce`` step one Allreduce.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field

import numpy as np

from .reader import LogError, RunLog

TOPOLOGIES = ("ps", "allreduce")
#: How to read "communication time per step" out of a log's phase times; see comm_times().
TIMINGS = ("worker-min", "worker-median", "exchange", "server")
DEFAULT_TIMING = "worker-min"
DEFAULT_SKIP = 5
STATISTICS = ("mean", "median")
DEFAULT_STATISTIC = "mean"


def lg(p: int) -> int:
    """Rounds of a binomial tree over ``p`` ranks: ``ceil(log2 p)`` (0 for one rank)."""
    return max(0, math.ceil(math.log2(p))) if p > 1 else 0


@dataclass(frozen=True)
class CostModel:
    alpha: float            # s per message
    beta: float             # s per byte
    gamma: float = 0.0      # s per byte reduced (Allreduce only)

    @property
    def bandwidth(self) -> float:
        """Bytes per second (1 / beta)."""
        return 1.0 / self.beta if self.beta > 0 else math.inf


def gather_time(p: int, gathered_bytes: float, m: CostModel) -> float:
    """Binomial Gather to one root; ``gathered_bytes`` = what crosses the root's link
    (the sum of the other ranks' messages, i.e. ``n (p-1)/p`` for ``n`` = all blocks)."""
    return lg(p) * m.alpha + gathered_bytes * m.beta


def bcast_time(p: int, n: float, m: CostModel) -> float:
    """Long-message Bcast (scatter + allgather) of ``n`` bytes."""
    return 2 * lg(p) * m.alpha + 2 * n * (p - 1) / p * m.beta


def allreduce_time(p: int, n: float, m: CostModel) -> float:
    """Rabenseifner Allreduce (reduce-scatter + allgather) of ``n`` bytes."""
    return 2 * lg(p) * m.alpha + 2 * n * (p - 1) / p * m.beta + n * (p - 1) / p * m.gamma


def _terms(topology: str, p: int, up: float, down: float) -> np.ndarray:
    """Coefficients of (alpha, beta, gamma) in one step's time: the design-matrix row."""
    if topology == "ps":
        workers = p - 1
        return np.array([3 * lg(p), workers * up + 2 * down * (p - 1) / p, 0.0])
    if topology == "allreduce":
        f = (p - 1) / p
        return np.array([2 * lg(p), 2 * up * f, up * f])
    raise ValueError(f"unknown topology {topology!r} (choose from {', '.join(TOPOLOGIES)})")


def step_time(topology: str, p: int, up: float, down: float, m: CostModel) -> dict:
    """Predicted seconds per step at ``p`` ranks, by collective.

    ``up``: bytes of one worker's uplink message (mean over workers and steps); ``down``: the
    downlink message.  For ``allreduce`` ``up`` is the Allreduce buffer and ``down`` unused.
    """
    if topology == "ps":
        g = gather_time(p, (p - 1) * up, m)
        b = bcast_time(p, down, m)
        return {"gather": g, "bcast": b, "total": g + b}
    if topology == "allreduce":
        a = allreduce_time(p, up, m)
        return {"allreduce": a, "total": a}
    raise ValueError(f"unknown topology {topology!r} (choose from {', '.join(TOPOLOGIES)})")


# ---------------------------------------------------------------------- measured times


def comm_times(log: RunLog, timing: str = DEFAULT_TIMING) -> np.ndarray:
    """Measured communication seconds of each logged step (``(n,)``), read as ``timing``.

    The server's gather time includes waiting for the slowest worker's compute, and a worker's
    gather + bcast includes waiting for the other workers and for the server's vote, so no
    single rank's phase time is the communication alone.  The readings:

    ``worker-min`` (default): per step, the minimum over workers of ``gather + bcast`` minus
        rank 0's ``aggregate`` (which every worker waits through inside its bcast).  The
        minimum is the worker that arrived last: nobody kept it waiting, so what it measured
        is the exchange itself.  For ``allreduce`` (``aggregate`` and ``bcast`` are 0) it is the
        last rank's Allreduce, which likewise waited for nobody.
    ``worker-median``: the same, median over workers (includes some waiting for late workers).
    ``exchange``: rank 0's ``gather + bcast`` minus its estimated wait for the last worker,
        assuming every rank leaves the step's last collective at the same moment: rank ``r``
        reaches the next exchange ``a_r`` seconds later (``decode + update`` of the previous
        step, ``compute + encode`` of this one), and rank 0 waited ``max_w a_w - a_0``.  The
        assumption is rough (ranks leave a Bcast or Allreduce at different times).
    ``server``: rank 0's ``gather + bcast``, waiting included (an upper bound; it grows with
        compute imbalance, not with the network).
    """
    if timing not in TIMINGS:
        raise ValueError(f"unknown timing {timing!r} (choose from {', '.join(TIMINGS)})")
    log.require_steps()
    t = {p: log.phase_array(p) for p in log.phases}
    zero = np.zeros_like(t["gather"])
    get = lambda p: t.get(p, zero)  # noqa: E731
    gather, bcast, agg = get("gather"), get("bcast"), get("aggregate")
    if timing == "server":
        return gather[:, 0] + bcast[:, 0]
    if timing.startswith("worker"):
        w = gather[:, 1:] + bcast[:, 1:] - agg[:, :1]
        w = np.clip(w, 0.0, None)
        return np.median(w, axis=1) if timing == "worker-median" else w.min(axis=1)
    # exchange: arrival offsets after the previous step's end
    before = get("compute") + get("encode")
    after = get("decode") + get("update")
    arrive = before.copy()
    arrive[1:] += after[:-1]
    wait = np.clip(arrive[:, 1:].max(axis=1) - arrive[:, 0], 0.0, None)
    return np.clip(gather[:, 0] - wait, 0.0, None) + bcast[:, 0]


def mean_comm_time(log: RunLog, timing: str = DEFAULT_TIMING, skip: int = DEFAULT_SKIP,
                   statistic: str = DEFAULT_STATISTIC) -> float:
    """Measured communication seconds per step, over the steps after the first ``skip``
    (start-up: first-touch page faults, MPI connection set-up) when the log has more:
    their ``mean`` or ``median`` (robust to steps slowed by other load on a shared machine)."""
    if statistic not in STATISTICS:
        raise ValueError(f"unknown statistic {statistic!r} (choose from {', '.join(STATISTICS)})")
    times = comm_times(log, timing)
    if len(times) > skip:
        times = times[skip:]
    return float(np.median(times) if statistic == "median" else times.mean())


def message_sizes(log: RunLog) -> tuple[float, float]:
    """(mean bytes of one worker's uplink, mean downlink bytes) per step, from the per-step
    datasets (sizes may vary step to step)."""
    log.require_steps()
    return float(log.array("bytes_up").mean()), float(log.array("bytes_down").mean())


# ---------------------------------------------------------------------- fitting


@dataclass
class FitResult:
    model: CostModel
    fitted: tuple                 # names of the parameters that were free, e.g. ("alpha", "beta")
    rows: list = field(default_factory=list)   # (name, topology, p, measured, predicted)
    note: str = ""


def _nnls(a: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative least squares for a handful of columns: best over active sets."""
    k = a.shape[1]
    best, best_res = np.zeros(k), float(np.sum(y ** 2))
    for size in range(1, k + 1):
        for cols in itertools.combinations(range(k), size):
            sub = a[:, cols]
            if np.linalg.matrix_rank(sub) < size:
                continue
            x, *_ = np.linalg.lstsq(sub, y, rcond=None)
            if np.any(x < 0):
                continue
            res = float(np.sum((sub @ x - y) ** 2))
            if res < best_res - 1e-30:
                best_res, best = res, np.zeros(k)
                best[list(cols)] = x
    return best


def fit(points, fix_alpha: float | None = None) -> FitResult:
    """Fit (alpha, beta[, gamma]) >= 0 to measured step times by least squares.

    ``points``: iterable of ``(name, topology, p, up_bytes, down_bytes, measured_seconds)``.
    Each point is weighted by 1/measured (relative errors count equally at every size).
    gamma is fitted only when it is separable from beta: Allreduce points of a single message
    size give gamma and 2 beta the same coefficient, and then gamma is fixed at 0 (absorbed
    into beta), which the note says.
    """
    points = list(points)
    if len(points) < 2:
        raise ValueError("the fit needs runs at two world sizes at least")
    a = np.array([_terms(t, p, up, down) for _, t, p, up, down, _ in points], dtype=float)
    y = np.array([pt[5] for pt in points], dtype=float)
    if np.any(y <= 0):
        raise ValueError("a run has no measured communication time (all zero)")
    names = ["alpha", "beta", "gamma"]
    free = [0, 1]
    note = ""
    if np.any(a[:, 2] > 0):
        full = a / y[:, None]
        if np.linalg.matrix_rank(full[:, [1, 2]]) == 2:
            free.append(2)
        else:
            note = ("gamma not separable from beta (Allreduce runs of one message size): "
                    "fitted with gamma = 0, so beta includes the reduction cost")
    if fix_alpha is not None:
        y = y - a[:, 0] * fix_alpha
        free.remove(0)
    w = 1.0 / np.array([pt[5] for pt in points])
    x = _nnls(a[:, free] * w[:, None], y * w)
    params = {"alpha": fix_alpha or 0.0, "beta": 0.0, "gamma": 0.0}
    for col, value in zip(free, x):
        params[names[col]] = float(value)
    model = CostModel(**params)
    rows = [(name, t, p, meas, step_time(t, p, up, down, model)["total"])
            for name, t, p, up, down, meas in points]
    return FitResult(model, tuple(names[c] for c in free), rows, note)


def point(log: RunLog, timing: str = DEFAULT_TIMING, skip: int = DEFAULT_SKIP,
          statistic: str = DEFAULT_STATISTIC) -> tuple:
    """The fit point of one log: (name, topology, world size, up, down, measured s/step)."""
    up, down = message_sizes(log)
    return (log.name, log.topology, log.world_size, up, down,
            mean_comm_time(log, timing, skip, statistic))


# ---------------------------------------------------------------------- units

_PREFIX = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_LAT_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_bandwidth(text: str) -> float:
    """'100Gb/s', '100Gbit', '100Gbps', '12.5GB/s', '100' (Gb/s) -> bytes per second.

    A lower-case ``b`` is bits, an upper-case ``B`` bytes; prefixes k, M, G, T are decimal."""
    s = str(text).strip().replace(" ", "")
    m = re.fullmatch(r"([0-9.eE+-]+)([A-Za-z/]*)", s)
    unit = m.group(2).replace("bit", "b").replace("ps", "/s") if m else ""
    if unit and not unit.endswith("/s"):
        unit += "/s"
    u = re.fullmatch(r"([kKmMgGtT]?)([bB])/s", unit) if unit else None
    if not m or (unit and not u):
        raise ValueError(f"bad bandwidth {text!r}: use e.g. 100Gb/s (bits), 12.5GB/s (bytes) "
                         "or a bare number (Gb/s)")
    try:
        value = float(m.group(1))
    except ValueError:
        raise ValueError(f"bad bandwidth {text!r}: not a number") from None
    scale = _PREFIX[u.group(1).lower()] * (1 if u.group(2) == "B" else 1 / 8) if u else 1e9 / 8
    if value <= 0:
        raise ValueError(f"bad bandwidth {text!r}: must be positive")
    return value * scale


def parse_latency(text: str) -> float:
    """'2us', '1.5 ms', '2' (microseconds) -> seconds."""
    s = str(text).strip().replace(" ", "")
    m = re.fullmatch(r"([0-9.eE+-]+)([a-zµ]*)", s)
    if not m or (m.group(2) and m.group(2) not in _LAT_UNITS):
        raise ValueError(f"bad latency {text!r}: use e.g. 2us, 0.5ms or 2 (microseconds)")
    try:
        value = float(m.group(1))
    except ValueError:
        raise ValueError(f"bad latency {text!r}: not a number") from None
    if value < 0:
        raise ValueError(f"bad latency {text!r}: must not be negative")
    return value * _LAT_UNITS[m.group(2) or "us"]


def check_topology(topology: str) -> str:
    if topology not in TOPOLOGIES:
        raise ValueError(f"unknown topology {topology!r} (choose from {', '.join(TOPOLOGIES)})")
    return topology


__all__ = ["CostModel", "FitResult", "LogError", "TIMINGS", "TOPOLOGIES", "allreduce_time",
           "bcast_time", "comm_times", "fit", "gather_time", "lg", "mean_comm_time",
           "message_sizes", "parse_bandwidth", "parse_latency", "point", "step_time"]
