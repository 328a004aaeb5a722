"""Alpha-beta(-gamma) model of one step's communication, and a least-squares fit of it.

Costs (MPICH's algorithms for long messages; ``docs/analysis.md`` and
``/work/shared/docs/targets.md``), for ``p`` MPI ranks, ``lg p = ceil(log2 p)``, ``alpha`` seconds
per message (latency), ``beta`` seconds per byte (1 / bandwidth), ``gamma`` seconds per byte
reduced::

    Gather     T = lg p * alpha + n * (p-1)/p * beta
    Bcast      T = 2 lg p * alpha + 2 n * (p-1)/p * beta
    Allreduce  T = 2 lg p * alpha + 2 n * (p-1)/p * beta + n * (p-1)/p * gamma
    Alltoallv  T = (p-1) * alpha + n * beta          (n = what one rank sends; "scattered")
    Allgatherv T = (p-1) * alpha + n * (p-1)/p * beta (ring; lg p rounds for short messages)

For Gather ``n`` is the total gathered at the root counting the root's own block.  In the
parameter server rank 0 contributes an empty block and each of the ``M = p-1`` workers ``b``
bytes, so with ``n = p*b`` the bandwidth term ``n (p-1)/p beta = M b beta`` is exactly the
bytes that cross the root's link (the incast); for unequal messages it is the sum of the
workers' messages, which is what :func:`gather_time` takes.  For Bcast ``n`` is the downlink
message, for Allreduce the fp32 buffer (``4 d``).

A parameter-server step costs ``Gather(uplinks) + Bcast(downlink)`` (``aggregate`` is server
compute, not communication); an ``allreduce`` step one Allreduce.  These single-link functions
(:func:`step_time`, ``topology`` ``ps`` / ``allreduce``) are the model of one machine.

The second half prices the exchanges of issue 18 on **two link classes** (:class:`Network`:
intra-node alpha/beta, inter-node alpha/beta): ``flat`` (one server), ``sharded`` (S servers),
``serverless`` (``--servers all``: Alltoallv + Allgatherv) and ``hierarchical`` (node leaders
forward or combine), plus the fp32 ``allreduce`` reference, for a :class:`Layout` of M workers on
n nodes; :func:`exchange_stages` lists who sends what on which link, :func:`exchange_time` sums
it, :func:`recommend` ranks the topologies.  docs/analysis.md has the equations.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from typing import NamedTuple

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


# ---------------------------------------------------------------------- two link classes

#: Bytes of the fixed message header (``hpcgrad/wire/header.py``): every shard's message has one.
HEADER_BYTES = 32
#: The exchanges :func:`exchange_stages` prices; ``allreduce`` is the fp32 reference.
EXCHANGES = ("flat", "sharded", "serverless", "hierarchical", "allreduce")
#: The model's parameters, in the order of a cost row (:func:`exchange_row`).
PARAMETERS = ("alpha", "beta", "alpha_inter", "beta_inter", "gamma")
INTRA, INTER = "intra", "inter"


@dataclass(frozen=True)
class Network:
    """Two link classes: ``intra`` (within a node: shared memory, NVLink) and ``inter``
    (a node's network interface, shared by the node's ranks).  ``gamma``: seconds per byte
    reduced (the Allreduce reference only)."""
    intra: CostModel
    inter: CostModel
    gamma: float = 0.0

    @classmethod
    def uniform(cls, model: CostModel) -> "Network":
        """One machine: every link is the same (the single-link model of :func:`step_time`)."""
        return cls(model, model, model.gamma)

    @property
    def vector(self) -> np.ndarray:
        """The parameters in :data:`PARAMETERS` order (the dot product with a cost row)."""
        return np.array([self.intra.alpha, self.intra.beta, self.inter.alpha, self.inter.beta,
                         self.gamma])


@dataclass(frozen=True)
class Layout:
    """Where the ranks of one exchange sit.

    ``workers`` M ranks compute gradients, block-placed on ``nodes`` n nodes (``per_node`` =
    ceil(M/n) on the fullest).  ``hosts``: physical machines (default ``nodes``); a run that
    emulates nodes on one machine (``--ranks-per-node``) has ``nodes`` > 1 but ``hosts`` = 1,
    and every link of it is intra-node.  Servers (flat: 1, sharded: ``servers``) sit on hosts
    of their own, each with its own link.  ``combine``: hierarchical leaders send vote counts
    (``params`` d coordinates, ceil(log2(m+1)) bits each) instead of forwarding the messages.
    """
    kind: str
    workers: int
    nodes: int = 1
    servers: int = 1
    combine: bool = False
    params: int = 0
    hosts: int | None = None

    def __post_init__(self):
        if self.kind not in EXCHANGES:
            raise ValueError(f"unknown exchange {self.kind!r} (choose from {', '.join(EXCHANGES)})")
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if not 1 <= self.nodes <= self.workers:
            raise ValueError(f"nodes must be between 1 and the {self.workers} workers (every "
                             f"node holds a worker), got {self.nodes}")
        if self.servers < 1:
            raise ValueError(f"servers must be at least 1, got {self.servers}")
        if self.combine and (self.kind != "hierarchical" or self.params < 1):
            raise ValueError("combining vote counts needs the hierarchical exchange and the "
                             "number of parameters d")

    @property
    def per_node(self) -> int:
        return math.ceil(self.workers / self.nodes)

    @property
    def multi_host(self) -> bool:
        return (self.nodes if self.hosts is None else self.hosts) > 1

    @property
    def label(self) -> str:
        if self.kind == "sharded":
            return f"sharded S={self.servers}"
        if self.kind == "hierarchical":
            return f"hierarchical {'combining' if self.combine else 'forwarding'}"
        if self.kind == "allreduce":
            return "fp32 allreduce"
        return self.kind


def shard_bytes(message: float, shards: int) -> float:
    """One of ``shards`` pieces of a message that covers every coordinate: its body split
    evenly, plus a header of its own."""
    return (message - HEADER_BYTES) / shards + HEADER_BYTES


def vote_count_bits(per_node: int) -> int:
    """Bits per coordinate of a node's exact count of +1 votes among ``per_node`` workers
    (0..m): ceil(log2(m+1))."""
    return max(1, math.ceil(math.log2(per_node + 1)))


def vote_count_bytes(params: int, per_node: int) -> float:
    """A node leader's combined message: bit-planes of the vote counts, plus a header."""
    return HEADER_BYTES + math.ceil(vote_count_bits(per_node) * params / 8)


def _cost(link: str, rounds: float = 0.0, nbytes: float = 0.0, reduced: float = 0.0):
    """A cost row: ``rounds`` latencies and ``nbytes`` on one link class, ``reduced`` bytes."""
    row = np.zeros(len(PARAMETERS))
    row[0 if link == INTRA else 2] = rounds
    row[1 if link == INTRA else 3] = nbytes
    row[4] = reduced
    return row


def _allgatherv_rounds(p: int, total: float) -> int:
    """Latency rounds of MPICH's Allgatherv (``MPIR_Allgatherv_intra_auto``): recursive doubling
    (power-of-two p) below MPIR_CVAR_ALLGATHER_LONG_MSG_SIZE = 512 KiB gathered, Bruck below
    MPIR_CVAR_ALLGATHER_SHORT_MSG_SIZE = 80 KiB (both lg p rounds), else the ring (p - 1)."""
    power_of_two = p & (p - 1) == 0
    if total < 80 * 1024 or (power_of_two and total < 512 * 1024):
        return lg(p)
    return p - 1


def exchange_stages(layout: Layout, up: float, down: float) -> list:
    """``[(stage, cost row)]`` of one step's exchange, in order; the stages run one after the
    other, so the step's time is the sum (:func:`exchange_time`).

    ``up``, ``down``: bytes of one worker's uplink and of the downlink as one server sends them
    (each covers all d coordinates, one header).  ``allreduce``: ``up`` is the buffer (4d).
    Within a stage, transfers on different links run at once and the busiest link sets the
    bandwidth term: a node's interface carries what all its ranks send off the node; the model
    assumes an inter-node link is no faster than an intra-node one, so where both carry a
    stage's bytes the inter-node bytes are the ones priced.
    """
    M, n, m = layout.workers, layout.nodes, layout.per_node
    link = INTER if layout.multi_host else INTRA
    kind = layout.kind
    if kind == "flat":
        # MPI_Gatherv to the server (all M uplinks cross its link), MPI_Bcast back.
        p = M + 1
        return [("gather", _cost(link, lg(p), M * up)),
                ("bcast", _cost(link, 2 * lg(p), 2 * down * (p - 1) / p))]
    if kind == "sharded":
        # S concurrent Gatherv, each of M pieces to its server; S concurrent Bcast of the
        # downlink pieces to all M + S ranks.  A worker takes part in S of each: one extra
        # message (alpha) per extra shard.  Its node's link sends the node's S pieces each.
        S = layout.servers
        u, v = shard_bytes(up, S), shard_bytes(down, S)
        p, q = M + 1, M + S
        node_out = (m if layout.multi_host else 1) * S * u
        return [("gather", _cost(link, lg(p) + S - 1, max(M * u, node_out))),
                ("bcast", _cost(link, 2 * lg(q) + S - 1, 2 * S * v * (q - 1) / q))]
    if kind == "serverless":
        # Reduce-scatter as MPI_Alltoallv: every rank sends N-1 of its N shards (one header
        # each), then MPI_Allgatherv of the N aggregated shards.
        N = M
        if N == 1:
            return [("alltoallv", _cost(INTRA)), ("allgatherv", _cost(INTRA))]
        u, v = shard_bytes(up, N), shard_bytes(down, N)
        rounds = _allgatherv_rounds(N, N * v)
        if not layout.multi_host:
            return [("alltoallv", _cost(INTRA, N - 1, (N - 1) * u)),
                    ("allgatherv", _cost(INTRA, rounds, (N - 1) * v))]
        # Off the node: each of the m ranks sends N - m pieces through the node's link.  The
        # ring passes one block per step across each node boundary, both directions.
        a2a = _cost(INTRA, m - 1) + _cost(INTER, N - m, m * (N - m) * u)
        return [("alltoallv", a2a), ("allgatherv", _cost(INTER, rounds, (N - 1) * v))]
    if kind == "hierarchical":
        # Workers -> node leader (MPI_Gatherv on the node), leaders -> server (MPI_Gatherv),
        # server -> leaders (MPI_Bcast), leader -> node (MPI_Bcast).  A leader forwards its
        # node's m uplinks, or combines them into vote counts.
        leader_up = vote_count_bytes(layout.params, m) if layout.combine else m * up
        p = n + 1
        return [("node gather", _cost(INTRA, lg(m), (m - 1) * up)),
                ("leader gather", _cost(link, lg(p), n * leader_up)),
                ("leader bcast", _cost(link, 2 * lg(p), 2 * down * (p - 1) / p)),
                ("node bcast", _cost(INTRA, 2 * lg(m), 2 * down * (m - 1) / m))]
    # allreduce: Rabenseifner on one node; across nodes the SMP-aware form (reduce-scatter on
    # the node, Allreduce of the node's 1/m pieces across nodes -- the node's link carries
    # 2 n_bytes (n-1)/n --, allgather on the node), as NCCL's and MPICH's node-aware ones.
    size = up
    if not layout.multi_host:
        f = (M - 1) / M
        return [("allreduce", _cost(INTRA, 2 * lg(M), 2 * size * f, size * f))]
    fm, fn = (m - 1) / m, (n - 1) / n
    return [("node reduce-scatter", _cost(INTRA, lg(m), size * fm, size * fm)),
            ("inter-node allreduce", _cost(INTER, 2 * lg(n), 2 * size * fn, size * fn / m)),
            ("node allgather", _cost(INTRA, lg(m), size * fm))]


def exchange_row(layout: Layout, up: float, down: float) -> np.ndarray:
    """Coefficients of :data:`PARAMETERS` in one step's time: the fit's design-matrix row."""
    return sum((row for _, row in exchange_stages(layout, up, down)), np.zeros(len(PARAMETERS)))


def exchange_time(layout: Layout, up: float, down: float, net: Network) -> dict:
    """Predicted seconds of one step's exchange: ``{stage: s, ..., "total": s}``."""
    out = {name: float(row @ net.vector) for name, row in exchange_stages(layout, up, down)}
    out["total"] = float(sum(out.values()))
    return out


def link_bytes(layout: Layout, up: float, down: float) -> dict:
    """Bytes per step on the busiest intra-node and the busiest inter-node link, summed over
    the stages (the beta coefficients): for ``flat`` the server's incast plus the Bcast's."""
    row = exchange_row(layout, up, down)
    return {INTRA: float(row[1]), INTER: float(row[3])}


# ---------------------------------------------------------------------- message sizes

#: Algorithms whose message sizes :func:`algorithm_bytes` models from d (and M).
SIZED_ALGORITHMS = ("signum-mv", "s3gd-mv", "fp32-ps", "fp16-ps")
#: Extra bits per coded position over the gap entropy (Golomb-Rice codes, targets.md).
_CODING_OVERHEAD = 0.05


def _entropy(q: float) -> float:
    """Binary entropy in bits."""
    if q <= 0 or q >= 1:
        return 0.0
    return -(q * math.log2(q) + (1 - q) * math.log2(1 - q))


def _coded_entry_bits(density: float) -> float:
    """Bits per sent entry at ``density``: its position as a gap code, at the gaps' entropy
    but at least 1 bit (a Golomb-Rice code spends a bit per gap), plus a sign bit."""
    return max(_entropy(density) / density, 1.0) + _CODING_OVERHEAD + 1


def algorithm_bytes(algorithm: str, params: int, workers: int,
                    sparsity: float = 0.01) -> tuple[float, float]:
    """(uplink, downlink) bytes per step of one message covering ``params`` coordinates.

    Exact for the fixed-size codecs (one header + ceil(d/8) bytes of signs, 4d fp32, 2d fp16).
    ``s3gd-mv`` is an estimate: K = sparsity*d entries, positions coded at their gap entropy
    (at least 1 bit, +0.05 bit) plus a sign bit; the downlink is the ternary vote over the
    union of the M supports, taken as independent (d(1 - (1 - sparsity)^M) coordinates),
    coded the cheapest of positions + signs, 1.6 bits per coordinate (base 3) and 2 bits per
    coordinate.  Real supports overlap more, so the downlink estimate is an upper bound.  At
    d = 25.6M, M = 4 it gives 292 kB up and 899 kB down; docs/benchmarks.md measured 291,528
    and 891,277.
    """
    d = int(params)
    if d < 1:
        raise ValueError(f"the number of parameters must be at least 1, got {params}")
    if algorithm == "signum-mv":
        size = HEADER_BYTES + math.ceil(d / 8)
        return float(size), float(size)
    if algorithm == "fp32-ps":
        return float(HEADER_BYTES + 4 * d), float(HEADER_BYTES + 4 * d)
    if algorithm == "fp16-ps":
        return float(HEADER_BYTES + 2 * d), float(HEADER_BYTES + 2 * d)
    if algorithm == "s3gd-mv":
        if not 0 < sparsity <= 1:
            raise ValueError(f"sparsity must be in (0, 1], got {sparsity}")
        k = math.ceil(sparsity * d)
        up = HEADER_BYTES + math.ceil(k * _coded_entry_bits(k / d) / 8)
        union = d * (1 - (1 - k / d) ** workers)
        coded = union * _coded_entry_bits(union / d)
        down = HEADER_BYTES + math.ceil(min(coded, 1.6 * d, 2.0 * d) / 8)
        return float(up), float(down)
    raise ValueError(f"no message-size model for algorithm {algorithm!r} (modelled: "
                     f"{', '.join(SIZED_ALGORITHMS)}); give --uplink-bytes and --downlink-bytes")


# ---------------------------------------------------------------------- recommending

def candidate_layouts(workers: int, nodes: int, servers=(2, 4, 8), combine: bool = False,
                      params: int = 0) -> list[Layout]:
    """Every exchange worth pricing for M workers on n nodes: flat, sharded at each S of
    ``servers`` (1 < S <= M, shards of 64 coordinates at least), serverless (M >= 2),
    hierarchical forwarding (n >= 2 nodes, more than one worker on a node) and combining
    (``combine``, with d)."""
    out = [Layout("flat", workers, nodes)]
    out += [Layout("sharded", workers, nodes, servers=s) for s in sorted(set(servers))
            if 1 < s <= workers and (params == 0 or params // s >= 64)]
    if workers >= 2:
        out.append(Layout("serverless", workers, nodes))
    if nodes > 1 and math.ceil(workers / nodes) > 1:
        out.append(Layout("hierarchical", workers, nodes))
        if combine:
            out.append(Layout("hierarchical", workers, nodes, combine=True, params=params))
    return out


def recommend(layouts, up, down, net: Network, reference: float | None = None) -> dict:
    """Price every layout; ``up``/``down`` are numbers or callables of the worker count (for
    sizes that grow with M).  Returns ``{"rows": [...], "best": label, "runner_up": label,
    "margin": runner-up time / best time}``; ``reference`` (bytes of the fp32 Allreduce
    buffer) adds that row, which is shown but not ranked (it sends uncompressed gradients)."""
    rows = []
    for layout in layouts:
        u = up(layout.workers) if callable(up) else up
        v = down(layout.workers) if callable(down) else down
        t = exchange_time(layout, u, v, net)
        rows.append({"topology": layout.label, "kind": layout.kind, "servers": layout.servers,
                     "workers": layout.workers, "nodes": layout.nodes,
                     "uplink_bytes": u, "downlink_bytes": v,
                     "stages": {k: t[k] for k in t if k != "total"}, "seconds": t["total"],
                     "link_bytes": link_bytes(layout, u, v), "ranked": True})
    ranked = sorted(rows, key=lambda r: r["seconds"])
    if reference:
        ar = Layout("allreduce", layouts[0].workers, layouts[0].nodes)
        t = exchange_time(ar, reference, reference, net)
        rows.append({"topology": ar.label, "kind": "allreduce", "servers": 0,
                     "workers": ar.workers, "nodes": ar.nodes, "uplink_bytes": reference,
                     "downlink_bytes": reference, "stages": {k: t[k] for k in t if k != "total"},
                     "seconds": t["total"], "link_bytes": link_bytes(ar, reference, 0),
                     "ranked": False})
    best = ranked[0]
    second = ranked[1] if len(ranked) > 1 else None
    return {"rows": rows, "best": best["topology"],
            "runner_up": second["topology"] if second else None,
            "margin": second["seconds"] / best["seconds"] if second and best["seconds"] > 0
            else None}


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

    Sharded runs (``servers`` S > 1): ranks 0..S-1 are the servers, workers wait for the
    slowest server's ``aggregate``, ``server`` is the slowest server's time.  Serverless runs
    (``servers`` = ``all``): every rank is a worker and subtracts its own ``aggregate``;
    ``exchange`` reads rank 0 as one of them.
    """
    if timing not in TIMINGS:
        raise ValueError(f"unknown timing {timing!r} (choose from {', '.join(TIMINGS)})")
    log.require_steps()
    t = {p: log.phase_array(p) for p in log.phases}
    zero = np.zeros_like(t["gather"])
    get = lambda p: t.get(p, zero)  # noqa: E731
    gather, bcast, agg = get("gather"), get("bcast"), get("aggregate")
    servers = log_servers(log)
    if servers == "all":
        # Every rank is a worker and aggregates a shard: each waits through its own aggregate.
        first_worker, servers, waited = 0, 1, agg
    else:
        # A worker waits for the slowest server's aggregate inside its bcast.
        first_worker = servers
        waited = np.broadcast_to(agg[:, :servers].max(axis=1, keepdims=True), agg.shape)
    if timing == "server":
        return gather[:, :servers].max(axis=1) + bcast[:, :servers].max(axis=1)
    if timing.startswith("worker"):
        w = gather[:, first_worker:] + bcast[:, first_worker:] - waited[:, first_worker:]
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
    datasets (sizes may vary step to step).  For a sharded or serverless log, whose
    ``bytes_up`` / ``bytes_down`` count a worker's S pieces together (one header each), the
    sizes of the one whole message that :func:`exchange_stages` takes: S - 1 headers fewer."""
    log.require_steps()
    up, down = float(log.array("bytes_up").mean()), float(log.array("bytes_down").mean())
    layout = log_layout(log)
    pieces = layout.servers if layout.kind == "sharded" else \
        layout.workers if layout.kind == "serverless" else 1
    extra = (pieces - 1) * HEADER_BYTES
    return up - extra, down - extra


def log_servers(log: RunLog):
    """The log's ``servers`` attribute: an int S (1 when absent: logs before issue 18), or
    ``"all"`` for the serverless exchange."""
    value = log.meta.get("servers", 1)
    if isinstance(value, str) and value.strip().lower() == "all":
        return "all"
    try:
        servers = int(value)
    except (TypeError, ValueError):
        raise LogError(log.path, f"attribute servers = {value!r} is neither a number nor "
                                 "'all'") from None
    if servers < 1:
        raise LogError(log.path, f"attribute servers = {servers} is not a number of servers")
    return servers


def _setting(log: RunLog, key: str, default):
    """A run setting: the root attribute, else the ``config`` attribute's entry."""
    if key in log.meta:
        return log.meta[key]
    config = log.meta.get("config")
    return config.get(key, default) if isinstance(config, dict) else default


def log_layout(log: RunLog) -> Layout:
    """The exchange a log records, from its attributes ``algorithm``, ``servers``,
    ``hierarchy`` (``flat`` / ``node``; ``hierarchy_mode`` ``combining`` for vote counts),
    ``ranks_per_node`` (an attribute or an entry of ``config``) and ``hostnames``; a log without
    them (written before issue 18) is the flat single server.  Emulated nodes
    (``--ranks-per-node K`` on one host) are blocks of K consecutive ranks, rank 0 (the
    server) in the first, and every link of them is intra-node."""
    hosts = len(set(log.meta.get("hostnames") or ["?"]))
    workers, d = log.num_workers, log.num_params
    if log.topology == "allreduce":
        ranks = max(1, log.world_size)
        return Layout("allreduce", ranks, min(hosts, ranks), hosts=hosts, params=d)
    servers = log_servers(log)
    if servers == "all":
        return Layout("serverless", max(1, log.world_size), min(hosts, log.world_size),
                      hosts=hosts)
    if str(_setting(log, "hierarchy", "flat")) == "node":
        per_node = int(_setting(log, "ranks_per_node", 0) or 0)
        nodes = math.ceil(log.world_size / per_node) if per_node > 0 else hosts
        nodes = max(1, min(nodes, workers))
        combine = str(log.meta.get("hierarchy_mode", "")) == "combining"
        return Layout("hierarchical", workers, nodes, combine=combine, params=d, hosts=hosts)
    # Workers spread over the hosts (the servers' own share of a host is not modelled).
    nodes = max(1, min(hosts, workers))
    if servers > 1:
        return Layout("sharded", workers, nodes, servers=servers, hosts=hosts)
    return Layout("flat", workers, nodes, hosts=hosts)


# ---------------------------------------------------------------------- fitting


class Point(NamedTuple):
    """One run's fit point: its exchange (``layout``), message sizes and measured time."""
    name: str
    topology: str          # the layout's label ("flat", "sharded S=2", ...), or "ps"/"allreduce"
    p: int                 # world size
    up: float              # bytes of one worker's whole uplink (message_sizes)
    down: float
    measured: float        # seconds of communication per step
    layout: Layout | None = None


def as_point(pt) -> Point:
    """A :class:`Point`, or a ``(name, topology, p, up, down, measured)`` tuple with
    ``topology`` ``ps`` (p - 1 workers and a server on one machine) or ``allreduce`` (p ranks)."""
    if isinstance(pt, Point) and pt.layout is not None:
        return pt
    name, topology, p, up, down, measured = tuple(pt)[:6]
    if topology == "ps":
        layout = Layout("flat", max(1, int(p) - 1))
    elif topology == "allreduce":
        layout = Layout("allreduce", int(p))
    else:
        raise ValueError(f"unknown topology {topology!r} (choose from {', '.join(TOPOLOGIES)})")
    return Point(name, topology, int(p), float(up), float(down), float(measured), layout)


def predict(pt, net: Network) -> float:
    """The model's seconds per step for a fit point's exchange and message sizes."""
    pt = as_point(pt)
    return exchange_time(pt.layout, pt.up, pt.down, net)["total"]


@dataclass
class FitResult:
    model: CostModel              # the intra-node (on one machine: the only) link, and gamma
    fitted: tuple                 # names of the parameters that were free, e.g. ("alpha", "beta")
    rows: list = field(default_factory=list)   # (name, topology, p, measured, predicted)
    note: str = ""
    network: Network | None = None  # both link classes; inter = intra unless runs spanned hosts


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
    """Fit the model's parameters (:data:`PARAMETERS`) >= 0 to measured step times by least
    squares.

    ``points``: :class:`Point` objects (:func:`point` of a log, any exchange) or
    ``(name, topology, p, up_bytes, down_bytes, measured_seconds)`` tuples of the single-link
    topologies ``ps`` / ``allreduce``.  Each point is weighted by 1/measured (relative errors
    count equally at every size).  Only parameters the runs exercise are fitted: runs on one
    machine have only intra-node links, so ``alpha_inter`` / ``beta_inter`` are fitted only
    from runs spanning hosts (the result's ``network`` copies the intra-node link otherwise).
    gamma is fitted only when it is separable from beta: Allreduce points of a single message
    size give gamma and 2 beta the same coefficient, and then gamma is fixed at 0 (absorbed
    into beta), which the note says.
    """
    points = [as_point(pt) for pt in points]
    if len(points) < 2:
        raise ValueError("the fit needs runs at two world sizes at least")
    a = np.array([exchange_row(pt.layout, pt.up, pt.down) for pt in points], dtype=float)
    y = np.array([pt.measured for pt in points], dtype=float)
    if np.any(y <= 0):
        raise ValueError("a run has no measured communication time (all zero)")
    free = [c for c in range(4) if np.any(a[:, c] > 0)]
    notes = []
    if np.any(a[:, 4] > 0):
        full = a / y[:, None]
        betas = [c for c in (1, 3) if c in free]
        if np.linalg.matrix_rank(full[:, betas + [4]]) == len(betas) + 1:
            free.append(4)
        else:
            notes.append("gamma not separable from beta (Allreduce runs of one message size): "
                         "fitted with gamma = 0, so beta includes the reduction cost")
    if 2 in free and np.linalg.matrix_rank(a[:, free]) < len(free):
        notes.append("the runs do not separate every parameter (too few sizes or layouts): "
                     "some are left at 0")
    if fix_alpha is not None:
        y = y - a[:, 0] * fix_alpha
        free = [c for c in free if c != 0]
    w = 1.0 / np.array([pt.measured for pt in points])
    x = _nnls(a[:, free] * w[:, None], y * w)
    values = dict.fromkeys(PARAMETERS, 0.0)
    values["alpha"] = fix_alpha or 0.0
    for col, value in zip(free, x):
        values[PARAMETERS[col]] = float(value)
    model = CostModel(values["alpha"], values["beta"], values["gamma"])
    spans_hosts = any(c in free for c in (2, 3))
    inter = CostModel(values["alpha_inter"], values["beta_inter"]) if spans_hosts else model
    net = Network(model, inter, values["gamma"])
    rows = [(pt.name, pt.topology, pt.p, pt.measured, predict(pt, net)) for pt in points]
    return FitResult(model, tuple(PARAMETERS[c] for c in free), rows, "; ".join(notes), net)


def point(log: RunLog, timing: str = DEFAULT_TIMING, skip: int = DEFAULT_SKIP,
          statistic: str = DEFAULT_STATISTIC) -> Point:
    """The fit point of one log: (name, topology, world size, up, down, measured s/step,
    layout); the exchange is read from the log's attributes (:func:`log_layout`)."""
    up, down = message_sizes(log)
    layout = log_layout(log)
    label = "ps" if layout.kind == "flat" else layout.label
    if layout.kind == "allreduce":
        label = "allreduce"
    return Point(log.name, label, log.world_size, up, down,
                 mean_comm_time(log, timing, skip, statistic), layout)


# ---------------------------------------------------------------------- benchmark results

#: Phases of ``hpcgrad bench exchange`` that are computation, not communication.
BENCH_COMPUTE_PHASES = ("encode", "aggregate", "decode", "update")


def bench_points(path) -> list[Point]:
    """Fit points of a ``hpcgrad bench exchange --json`` file: one per algorithm in it.

    Measured communication per step: the benchmark's exchange time (``total_s``: per step the
    slowest rank's phases summed, steps started after a barrier, median) minus the medians of
    its computation phases (encode, aggregate, decode, update; slowest rank).  The fp32
    Allreduce is a point of topology ``allreduce`` (its ``allreduce_s``, 4d bytes).  The
    exchange is read from the file's ``servers``, ``hierarchy`` and ``ranks_per_node`` keys when
    present (flat, one server, when not), as :func:`log_layout` reads a log's attributes.
    """
    import json
    from pathlib import Path

    path = Path(path)
    try:
        doc = json.loads(path.read_text())
        d, size = int(doc["params"]), int(doc["world_size"])
        algorithms = dict(doc["algorithms"])
        hosts = len(set(doc.get("hostnames") or ["?"]))
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a 'hpcgrad bench exchange --json' result ({exc})") \
            from None
    servers = doc.get("servers", 1)
    out = []
    for name, r in algorithms.items():
        label = f"{path.stem}:{name}"
        if name == "allreduce":
            layout = Layout("allreduce", size, min(hosts, size), hosts=hosts)
            out.append(Point(label, "allreduce", size, 4.0 * d, 4.0 * d,
                             float(doc.get("allreduce_s", r.get("allreduce_s"))), layout))
            continue
        if str(servers).lower() == "all":
            layout = Layout("serverless", size, min(hosts, size), hosts=hosts)
        elif doc.get("hierarchy") == "node":
            k = int(doc.get("ranks_per_node") or 0)
            workers = int(doc["workers"])
            nodes = max(1, min(workers, math.ceil(size / k) if k else hosts))
            layout = Layout("hierarchical", workers, nodes, params=d, hosts=hosts,
                            combine=doc.get("hierarchy_mode") == "combining" and name ==
                            "signum-mv")
        elif int(servers) > 1:
            workers = int(doc["workers"])
            layout = Layout("sharded", workers, min(hosts, workers), servers=int(servers),
                            hosts=hosts)
        else:
            workers = int(doc["workers"])
            layout = Layout("flat", workers, min(hosts, workers), hosts=hosts)
        phases = r["phases_s"]
        measured = float(r["total_s"]) - sum(float(phases.get(p, 0.0))
                                             for p in BENCH_COMPUTE_PHASES)
        pieces = layout.servers if layout.kind == "sharded" else \
            layout.workers if layout.kind == "serverless" else 1
        extra = (pieces - 1) * HEADER_BYTES
        up = float(r["bytes_up_per_worker"]) - extra
        down = float(r["bytes_down"]) - extra
        label_kind = "ps" if layout.kind == "flat" else layout.label
        out.append(Point(label, label_kind, size, up, down, max(measured, 1e-9), layout))
    return out


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


def parse_count(text: str, what: str = "count") -> float:
    """'25.6M', '3.2e6', '400k', '1G' -> a number (decimal prefixes k, M, G, T)."""
    s = str(text).strip().replace(" ", "").replace("_", "").replace(",", "")
    m = re.fullmatch(r"([0-9.eE+-]+)([kKmMgGtT]?)", s)
    try:
        value = float(m.group(1)) * _PREFIX[m.group(2).lower()] if m else None
    except ValueError:
        value = None
    if value is None or not math.isfinite(value):
        raise ValueError(f"bad {what} {text!r}: use e.g. 25.6M, 3.2e6 or 400k")
    return value


def parse_bytes(text: str) -> float:
    """'3.2MB', '3200000', '400kB', '1.5 GB' -> bytes (decimal prefixes; a trailing B is
    optional)."""
    s = str(text).strip()
    value = parse_count(s[:-1] if s.endswith("B") else s, "byte count")
    if value < 1:
        raise ValueError(f"bad byte count {text!r}: must be at least 1 byte")
    return value


def check_topology(topology: str) -> str:
    if topology not in TOPOLOGIES:
        raise ValueError(f"unknown topology {topology!r} (choose from {', '.join(TOPOLOGIES)})")
    return topology


__all__ = ["CostModel", "EXCHANGES", "FitResult", "Layout", "LogError", "Network", "Point",
           "TIMINGS", "TOPOLOGIES", "algorithm_bytes", "allreduce_time", "bcast_time",
           "bench_points",
           "candidate_layouts", "comm_times", "exchange_stages", "exchange_time", "fit",
           "gather_time", "lg", "log_layout", "mean_comm_time", "message_sizes",
           "parse_bandwidth", "parse_bytes", "parse_latency", "point", "predict", "recommend",
           "step_time"]
