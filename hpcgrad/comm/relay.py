"""Two-level uplink transports for ``--hierarchy node``: through each node's leader.

Both classes are a :class:`~hpcgrad.comm.transport.ParameterServer` whose uplink goes
worker -> node leader -> server instead of worker -> server; the downlink is the same
``MPI_Bcast`` from rank 0 over the world (MPICH's broadcast already picks its own tree, and a
second level would add a step of latency for no fewer bytes on any link).

:class:`NodeRelay` -- **forwarding**, for every algorithm.  Per step, two collectives per
direction as in the flat exchange, but on smaller communicators:

1. ``MPI_Gather(v)`` on each node's communicator, rooted at the leader: the node's whole
   messages (header and body) land back to back in the leader's ``node_messages``;
2. ``MPI_Gatherv`` on the leaders' communicator, rooted at the server: each leader sends its
   node's messages as one block.

Rank 0 then holds exactly the ``Uplinks`` the flat transport gives it (every worker's
message in its rank's slot, headers checked there by the same code), so the algorithm's
``server_step`` runs unchanged and the run is bit-identical to the flat one.  A fixed-length
message lands in its slot directly: the server's receive type is one message resized to the
slot's extent, so leader ``i``'s block of ``m_i`` messages fills ``m_i`` consecutive slots
(possible when the nodes hold consecutive ranks, :meth:`Topology.consecutive`).  Otherwise,
and always for variable-length messages (their bodies have different lengths), the server
receives the blocks packed and copies each message into its slot: one extra copy of the
bytes received.  A variable-length exchange sends the 32-byte headers first on both levels,
then the bodies of exactly the announced lengths, so every link carries header + body.

The leader checks each header of its node's variable-length messages (codec, count, step,
sender, length within the capacity) before it sizes the body collective by it; the server
checks every header again, as in the flat exchange.

:class:`CountRelay` -- **combining** (``hpcgrad.algorithms.node_vote``): the leader gathers
its node's messages as in step 1, the exchange combines them into one message (the node's
vote counts), and step 2 gathers one such message per node into the server's
``node_messages``, one 8-byte-aligned slot per node.
"""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from ..wire import HEADER_SIZE, Header, MessageBuffer, expect_header, read_header, round_up
from .topology import NodeComms, Topology
from .transport import ParameterServer, _check_variable

SERVER = 0


class _NodeGather:
    """Step 1 on a node: the workers' whole messages to the leader, in rank order.

    Fixed length: each message lands in its own 8-byte-aligned slot of ``messages`` (so the
    bodies can be read as 64-bit words); the leader forwards them with ``slot_type``, one
    message resized to the slot's extent, so only the messages' bytes travel.  Variable
    length: headers into ``headers``, bodies packed back to back into ``messages``."""

    def __init__(self, comms: NodeComms, rank: int, message_capacity: int, variable: bool):
        self.node = comms.node
        self.size = comms.node.Get_size()
        self.is_leader = comms.is_leader
        self.variable = variable
        self.group = comms.topology.groups[comms.node_index]
        self.rank = rank
        self.slot = round_up(message_capacity)
        self.slot_type = None
        if self.is_leader:
            self.messages = np.zeros(self.size * self.slot, dtype=np.uint8)
            self.headers = np.zeros(self.size * HEADER_SIZE, dtype=np.uint8)
            self.body_counts = np.zeros(self.size, dtype=np.int64)
            self.body_displacements = np.zeros(self.size, dtype=np.int64)
            self.length = 0  # bytes of this step's node messages (the forwarded block)
            if not variable:
                self.counts = np.full(self.size, message_capacity, dtype=np.int64)
                self.displacements = np.arange(self.size, dtype=np.int64) * self.slot
                self.slot_type = MPI.BYTE.Create_contiguous(message_capacity).Create_resized(
                    0, self.slot)
                self.slot_type.Commit()

    def gather_fixed(self, wire) -> None:
        if self.is_leader:
            self.node.Gatherv([wire, MPI.BYTE],
                              [self.messages, (self.counts, self.displacements), MPI.BYTE],
                              root=0)
            self.length = self.size * wire.size
        else:
            self.node.Gatherv([wire, MPI.BYTE], None, root=0)

    def rows(self) -> np.ndarray:
        """Leader, fixed length: the node's padded bodies, one 8-byte-aligned row each."""
        return self.messages.reshape(self.size, self.slot)[:, HEADER_SIZE:]

    def message(self, index: int, capacity: int) -> np.ndarray:
        start = index * self.slot
        return self.messages[start:start + capacity]

    def gather_variable(self, wire, check) -> list:
        """Headers, then bodies packed back to back; ``check(headers, index, rank)`` returns
        the checked :class:`Header` of ``rank``'s message, the ``index``-th of ``headers``.
        Leader: returns the headers, in rank order."""
        if not self.is_leader:
            self.node.Gather([wire[:HEADER_SIZE], MPI.BYTE], None, root=0)
            self.node.Gatherv([wire[HEADER_SIZE:], MPI.BYTE], None, root=0)
            return []
        self.node.Gather([wire[:HEADER_SIZE], MPI.BYTE], [self.headers, MPI.BYTE], root=0)
        headers = [check(self.headers, i, rank) for i, rank in enumerate(self.group)]
        self.body_counts[:] = [h.body_length for h in headers]
        self.body_displacements[1:] = np.cumsum(self.body_counts)[:-1]
        self.node.Gatherv([wire[HEADER_SIZE:], MPI.BYTE],
                          [self.messages, (self.body_counts, self.body_displacements), MPI.BYTE],
                          root=0)
        self.length = self.size * HEADER_SIZE + int(self.body_counts.sum())
        return headers


class NodeRelay(ParameterServer):
    """Forwarding: a :class:`ParameterServer` whose gather goes through the node leaders.

    Construct on every rank of ``comm`` with the same arguments as ``ParameterServer`` plus
    the :class:`NodeComms` of the run."""

    def __init__(self, comm: MPI.Comm, comms: NodeComms, uplink: Header, downlink: Header,
                 zeros=np.zeros, **kwargs):
        super().__init__(comm, uplink, downlink, zeros, **kwargs)
        self.comms = comms
        topology: Topology = comms.topology
        self.topology = topology
        capacity = HEADER_SIZE + uplink.body_length
        self.node_gather = (None if self.is_server else
                            _NodeGather(comms, self.rank, capacity, self.variable))
        sizes = np.array([0] + [len(g) for g in topology.groups], dtype=np.int64)
        #: Server: the leaders' block lengths this step (index 0: the server's own, 0).
        self.block_counts = np.zeros(len(sizes), dtype=np.int64)
        self.block_displacements = np.zeros(len(sizes), dtype=np.int64)
        self._direct = None
        if self.is_server:
            self._empty = np.zeros(0, dtype=np.uint8)
            if not self.variable and topology.consecutive():
                # One message resized to the slot's extent: leader i's m_i messages fill the
                # m_i slots from its first worker's on, with no copy.
                slot_type = MPI.BYTE.Create_contiguous(capacity).Create_resized(
                    0, self.uplinks.slot)
                slot_type.Commit()
                self._direct = slot_type
                self.block_counts[:] = sizes
                self.block_displacements[1:] = [g[0] for g in topology.groups]
            else:
                self.staging = np.zeros(topology.workers * capacity, dtype=np.uint8)
                self.header_staging = np.zeros(topology.workers * HEADER_SIZE, dtype=np.uint8)
                self.header_counts = sizes * HEADER_SIZE
                self.header_displacements = np.concatenate(([0], np.cumsum(
                    self.header_counts)[:-1]))

    def free(self) -> None:
        if self._direct is not None:
            self._direct.Free()
            self._direct = None

    # -- the uplink ----------------------------------------------------------------------

    def gather(self, step: int) -> None:
        """Collective over the world (through the node and leaders' communicators): every
        worker's ``self.uplink`` lands in rank 0's ``self.uplinks``, its header checked there
        as :meth:`ParameterServer.gather` checks it."""
        if self.variable:
            self._gather_variable(step)
        else:
            self._gather_fixed(step)

    def _gather_fixed(self, step: int) -> None:
        leaders = self.comms.leaders
        if not self.is_server:
            self.node_gather.gather_fixed(self.uplink.wire)
            if self.node_gather.is_leader:
                ng = self.node_gather
                leaders.Gatherv([ng.messages, ng.size, ng.slot_type], None, root=SERVER)
            return
        length = self.uplinks.capacity
        if self._direct is not None:
            leaders.Gatherv([self._empty, MPI.BYTE],
                            [self.uplinks.raw, (self.block_counts, self.block_displacements),
                             self._direct], root=SERVER)
        else:
            counts = np.array([0] + [len(g) * length for g in self.topology.groups])
            displacements = np.concatenate(([0], np.cumsum(counts)[:-1]))
            leaders.Gatherv([self._empty, MPI.BYTE],
                            [self.staging, (counts, displacements), MPI.BYTE], root=SERVER)
            at = 0
            for rank in self._ranks():
                start = rank * self.uplinks.slot
                self.uplinks.raw[start:start + length] = self.staging[at:at + length]
                at += length
        self._check_uplinks(step)

    def _ranks(self):
        return [rank for group in self.topology.groups for rank in group]

    def _check_at_leader(self, step):
        h = self.uplink_header

        def check(headers, index, rank):
            what = f"uplink message from rank {rank} at step {step} (at its node leader)"
            got = read_header(headers, index * HEADER_SIZE, what=what)
            _check_variable(got, self.uplink_codecs, h.count, h.body_length, step, rank, what)
            return got
        return check

    def _gather_variable(self, step: int) -> None:
        leaders = self.comms.leaders
        if not self.is_server:
            ng = self.node_gather
            headers = ng.gather_variable(self.uplink.wire, self._check_at_leader(step))
            if ng.is_leader:
                leaders.Gatherv([ng.headers[:ng.size * HEADER_SIZE], MPI.BYTE], None,
                                root=SERVER)
                body_bytes = sum(h.body_length for h in headers)
                leaders.Gatherv([ng.messages[:body_bytes], MPI.BYTE], None, root=SERVER)
            return
        up = self.uplinks
        leaders.Gatherv([self._empty, MPI.BYTE],
                        [self.header_staging, (self.header_counts, self.header_displacements),
                         MPI.BYTE], root=SERVER)
        ranks = self._ranks()
        for i, rank in enumerate(ranks):
            start = rank * up.slot
            up.raw[start:start + HEADER_SIZE] = self.header_staging[i * HEADER_SIZE:
                                                                    (i + 1) * HEADER_SIZE]
        self._check_uplinks(step)  # sets up.body_counts from the checked headers
        counts = np.zeros(len(self.topology.groups) + 1, dtype=np.int64)
        for i, group in enumerate(self.topology.groups):
            counts[i + 1] = sum(int(up.body_counts[r]) for r in group)
        displacements = np.concatenate(([0], np.cumsum(counts)[:-1]))
        leaders.Gatherv([self._empty, MPI.BYTE], [self.staging, (counts, displacements),
                                                  MPI.BYTE], root=SERVER)
        at = 0
        for rank in ranks:
            n = int(up.body_counts[rank])
            up.rows[rank - 1, :n] = self.staging[at:at + n]
            at += n


class CountRelay(ParameterServer):
    """Combining: the node's messages to the leader (as :class:`NodeRelay`), then one
    message per node, with the header ``node_headers[i]`` for node ``i``, to the server.

    On the server, ``node_messages`` holds one 8-byte-aligned slot per node (node ``i`` at
    ``i * node_slot``); ``node_lengths[i]`` is its message length this step.  The flat
    uplink slots of :class:`ParameterServer` are allocated by ``np.zeros`` and never
    touched here, so the operating system never backs them with memory."""

    def __init__(self, comm: MPI.Comm, comms: NodeComms, uplink: Header, downlink: Header,
                 node_headers, zeros=np.zeros):
        super().__init__(comm, uplink, downlink, zeros)
        self.comms = comms
        self.topology = comms.topology
        capacity = HEADER_SIZE + uplink.body_length
        self.node_gather = None if self.is_server else _NodeGather(comms, self.rank, capacity,
                                                                    False)
        nodes = len(self.topology.groups)
        #: What node i's message header must say (step filled in per step).
        self.node_headers = list(node_headers)
        node_capacity = max(h.body_length for h in self.node_headers)
        self.node_slot = round_up(HEADER_SIZE + node_capacity)
        if self.is_server:
            self.node_messages = np.zeros(nodes * self.node_slot, dtype=np.uint8)
            self.node_lengths = np.array([0] + [HEADER_SIZE + h.body_length
                                                for h in self.node_headers],
                                         dtype=np.int64)
            self.node_displacements = np.arange(-1, nodes, dtype=np.int64) * self.node_slot
            self.node_displacements[0] = 0
            self._empty = np.zeros(0, dtype=np.uint8)
        elif self.comms.is_leader:
            self.combined = MessageBuffer(self.node_headers[comms.node_index], zeros)

    def gather_node(self, step: int):
        """Step 1, on workers: the node's messages to its leader, headers checked there.
        Leader: returns the node's bodies as rows (m x padded body, 8-byte aligned); others
        None."""
        ng = self.node_gather
        ng.gather_fixed(self.uplink.wire)
        if not ng.is_leader:
            return None
        h = self.uplink_header
        length = HEADER_SIZE + h.body_length
        for i, rank in enumerate(ng.group):
            expect_header(ng.message(i, length),
                          Header(h.codec, h.count, h.body_length, step, rank, h.flags),
                          what=f"uplink message from rank {rank} at step {step} (at its node "
                               "leader)")
        return ng.rows()

    def gather_leaders(self) -> None:
        """Step 2: each leader's ``combined`` message to the server's ``node_messages``, one
        ``MPI_Gatherv`` of exactly ``node_lengths`` bytes (known to every rank: a node's
        message length follows from its worker count)."""
        leaders = self.comms.leaders
        if self.is_server:
            leaders.Gatherv([self._empty, MPI.BYTE],
                            [self.node_messages, (self.node_lengths, self.node_displacements),
                             MPI.BYTE], root=SERVER)
        elif self.comms.is_leader:
            leaders.Gatherv([self.combined.wire, MPI.BYTE], None, root=SERVER)

    def check_nodes(self, step: int) -> None:
        """Server: every node message's header is the one expected at ``step``."""
        for node, h in enumerate(self.node_headers):
            expect_header(self.node_message(node), Header(h.codec, h.count, h.body_length,
                                                          step, h.sender, h.flags),
                          what=f"node message from rank {h.sender} at step {step}")

    def node_message(self, node: int) -> np.ndarray:
        """Server: node ``node``'s whole message this step."""
        start = node * self.node_slot
        return self.node_messages[start:start + self.node_lengths[node + 1]]

    def node_rows(self) -> np.ndarray:
        """Server: the node messages' padded bodies, one row per node (8-byte aligned)."""
        nodes = len(self.node_headers)
        return self.node_messages.reshape(nodes, self.node_slot)[:, HEADER_SIZE:]
