"""The node-aware exchange, ``--hierarchy node``: workers -> node leader -> server.

:class:`HierarchicalExchange` has the interface of
:class:`~hpcgrad.training.exchange.ParameterServerExchange` (``begin``, ``step``,
``bytes_up``, ``bytes_down``, ``messages``).  :func:`create` is what the runtime, the torch
API and the exchange benchmark call: this exchange when ``config.hierarchy == "node"``, else
``exchange.create``'s (which refuses ``node``, so no caller can run flat by mistake; the
selection lives here because this module is built on ``exchange.py``).  The nodes, leaders and communicators are
:mod:`hpcgrad.comm.topology`'s; the two-level collectives are :mod:`hpcgrad.comm.relay`'s.
It runs in one of two modes, chosen by the algorithm:

* **combining** (``signum-mv``, every tie rule): each leader turns its node's ``m`` sign
  messages into the exact per-coordinate vote counts (``vote-counts`` bodies,
  :mod:`hpcgrad.algorithms.node_vote`), the server adds the nodes' counts and takes the
  majority with the flat vote's rule, so the downlink is byte-identical to the flat run's;
* **forwarding** (every other algorithm): the leader forwards its node's messages unchanged,
  the server sees the same M uplinks as the flat exchange and runs the algorithm's own
  ``server_step``: bit-identical to the flat run by construction.  Means (fp32-ps, ...) are
  forwarded too: summing them on the node in fp32 would reorder the additions, and hpcgrad
  keeps every run's parameters independent of how its ranks sit on nodes.

The downlink is the flat exchange's ``MPI_Bcast`` over the world in both modes.

Per step the log gets the bytes on each class of link (:attr:`step_fields`, added to the
algorithm's ``step_fields``, which the runtime logs):
``bytes_intra_node`` (a worker's message to its leader; 0 for a leader, whose message stays
in its memory) and ``bytes_inter_node`` (a leader's message to the server: its node's
messages, or its node's counts; 0 for the other workers); ``bytes_up`` stays each worker's own
uplink message and ``bytes_down`` the downlink, as in the flat exchange.  A phase-by-phase
data path: ``docs/hierarchy.md``.
"""

from __future__ import annotations

import numpy as np

from ..algorithms import node_vote
from ..comm.relay import CountRelay, NodeRelay
from ..comm.topology import NodeComms, check, discover
from ..wire import HEADER_SIZE
from . import exchange
from .exchange import (AGGREGATE, GATHER, ParameterServerExchange, StagedMessage, WorkerMean,
                       _capacity_header, _Exchange)

FORWARDING, COMBINING = "forwarding", "combining"


def create(comm, alg, where, params, zeros=np.zeros):
    """The exchange of ``alg`` on this rank (collective with ``--hierarchy node``: the node
    split); ``params`` is the flat parameter vector the updates go to (on ``where``)."""
    if getattr(alg.config, "hierarchy", "flat") == "node":
        return HierarchicalExchange(comm, alg, where, params, zeros)
    return exchange.create(comm, alg, where, params, zeros)


def mode_of(alg) -> str:
    """Which mode ``alg`` runs in under ``--hierarchy node``."""
    return COMBINING if node_vote.supports(alg) else FORWARDING


class HierarchicalExchange(ParameterServerExchange):
    """The node-aware parameter-server exchange of one algorithm on one rank (construct on
    every rank: the node split is collective)."""

    #: Per-step log columns of this exchange (docs/log-format.md): one per worker.
    step_fields = {"bytes_intra_node": (True, np.int64), "bytes_inter_node": (True, np.int64)}

    def __init__(self, comm, alg, where, params, zeros=np.zeros):
        # not ParameterServerExchange's constructor: the transport is a relay through leaders
        _Exchange.__init__(self, comm, alg, where, params)
        config = alg.config
        self.topology = discover(comm, getattr(config, "ranks_per_node", 0))
        check(self.topology)
        self.comms = NodeComms(comm, self.topology)
        self.mode = mode_of(alg)
        d = alg.num_params
        up, down = alg.uplink_codecs(), alg.downlink_codecs()
        headers = (_capacity_header(up, d), _capacity_header(down, d))
        if self.mode == COMBINING:
            self.combiner = node_vote.NodeVote(alg)
            node_headers = [self.combiner.node_header(len(g), leader)
                            for g, leader in zip(self.topology.groups, self.topology.leaders)]
            self.combiner.set_nodes(node_headers)
            self.transport = CountRelay(comm, self.comms, *headers, node_headers, zeros)
        else:
            self.transport = NodeRelay(
                comm, self.comms, *headers, zeros, variable=alg.variable_length,
                uplink_codecs=[c.id for c in up], downlink_codecs=[c.id for c in down])
        ps = self.transport
        self.up = None if self.is_server else StagedMessage(
            ps.uplink, where.empty_like_host(ps.uplink.padded_body))
        self.down = StagedMessage(ps.downlink, where.empty_like_host(ps.downlink.padded_body))
        self.averaging = WorkerMean(comm) if alg.average_every else None
        # The runtime logs the algorithm's per-step fields; the links' go with them.
        alg.step_fields = {**alg.step_fields, **self.step_fields}
        self._workers = self.topology.workers
        self._uplink_bytes = HEADER_SIZE + alg.uplink.body_length(d) \
            if self.mode == COMBINING else None

    def metadata(self) -> dict:
        """Run attributes for the log (docs/log-format.md)."""
        return {"hierarchy": "node", "hierarchy_mode": self.mode,
                "hierarchy_nodes": repr([list(g) for g in self.topology.groups]),
                "hierarchy_source": self.topology.source}

    def describe(self) -> str:
        """For the summary line: the topology and the mode."""
        return f"--hierarchy node, {self.mode}: {self.topology.describe()}"

    def step(self, grads, clock) -> None:
        """The flat exchange's step (``ParameterServerExchange.step``: encode, an adversary
        corrupting before any combine, ..., update, average) with the uplinks going through
        the node leaders; then rank 0 records the bytes on each link class."""
        super().step(grads, clock)
        self._record_links()

    def _uplinks_to_downlink(self, step, clock) -> None:
        if self.mode == COMBINING:
            self._combine_and_vote(step, clock)
        else:  # forwarding: rank 0 holds the flat exchange's M uplinks, the same server_step
            super()._uplinks_to_downlink(step, clock)

    def _combine_and_vote(self, step, clock) -> None:
        ps, ctx = self.transport, self.context
        if not self.is_server:
            rows = ps.gather_node(step)
            if rows is not None:  # the leader: its node's counts
                self.combiner.combine(rows, ps.combined)
                ps.combined.stamp(step)
        if self.is_server or self.comms.is_leader:
            ps.gather_leaders()
        clock.lap(GATHER)
        if self.is_server:
            ps.check_nodes(step)
            self.down.begin(step)
            self.combiner.server_step(ctx, ps.node_rows(), self.down)
            clock.lap(AGGREGATE)

    # -- bytes per link class, for the log -----------------------------------------------

    def _record_links(self) -> None:
        """Rank 0 learns what each worker sent on each link this step.  Fixed-length runs and
        the combining mode know it without asking; forwarded variable-length messages are
        in the server's slots."""
        if not self.is_server:
            return
        up = self.bytes_up()
        intra = np.array(up, dtype=np.int64)
        inter = np.zeros(self._workers, dtype=np.int64)
        for i, group in enumerate(self.topology.groups):
            leader = group[0]
            intra[leader - 1] = 0
            if self.mode == COMBINING:
                inter[leader - 1] = self.transport.node_lengths[i + 1]
            else:
                inter[leader - 1] = sum(int(up[r - 1]) for r in group)
        self.alg.step_stats.update(bytes_intra_node=intra, bytes_inter_node=inter)

    def bytes_up(self):
        """Rank 0: this step's uplink message length of every worker (what it sent to its
        leader, or, for a leader, the message it combined or forwarded)."""
        if self.mode == COMBINING:
            return np.full(self._workers, self._uplink_bytes, dtype=np.int64)
        return self.transport.uplinks.lengths[1:]

    def bytes_down(self) -> int:
        return self.transport.downlink.length

    def messages(self):
        """Rank 0: the uplinks it received (worker order) and the downlink.  Combining: the
        server never sees a worker's message, so a leader's entry is its node's message
        (``vote-counts``) and the other workers' entries are empty."""
        ps = self.transport
        if self.mode == COMBINING:
            received = [np.zeros(0, dtype=np.uint8)] * self._workers
            for i, leader in enumerate(self.topology.leaders):
                received[leader - 1] = ps.node_message(i)
            return received, ps.downlink.wire
        return [ps.uplinks.message(r) for r in range(1, ps.size)], ps.downlink.wire
