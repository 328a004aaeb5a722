"""MPI transport: the parameter-server exchange and the Allreduce baseline.

Only mpi4py's buffer methods are used (``Gatherv``, ``Bcast``, ``Allreduce``):
no pickling on the hot path.  All buffers are allocated once.

Parameter-server exchange, one step::

    workers (ranks 1..M)                    server (rank 0)
    ------------------------                ---------------------------------
    Gatherv(uplink message)      ------->   receive M messages, one per slot
                                            (checks headers, aggregates)
    Bcast(downlink message)      <-------   Bcast(downlink message)

The uplink uses ``Gatherv`` even for fixed-size messages so that rank 0 can
place each worker's message at an 8-byte-aligned displacement: the server's
kernels then read every body as 64-bit words, in place.
"""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from .wire import HEADER_SIZE, Header, MessageBuffer, expect_header, round_up

SERVER = 0


class Uplinks:
    """Rank 0's receive buffer: one 8-byte-aligned slot per rank (slot 0 unused)."""

    def __init__(self, world_size: int, message_length: int):
        self.message_length = message_length
        self.slot = round_up(message_length)
        self.raw = np.zeros(world_size * self.slot, dtype=np.uint8)
        slots = self.raw.reshape(world_size, self.slot)
        #: Worker bodies and their zero padding, one row per worker (M x padded body).
        self.rows = slots[1:, HEADER_SIZE:]
        self.counts = np.array([0] + [message_length] * (world_size - 1), dtype=np.int64)
        self.displacements = np.arange(world_size, dtype=np.int64) * self.slot

    def message(self, rank: int) -> np.ndarray:
        """The whole message (header + body) received from ``rank``."""
        start = rank * self.slot
        return self.raw[start:start + self.message_length]

    def values(self, dtype, count: int) -> np.ndarray:
        """The bodies as an (M x count) array of ``dtype``, a view."""
        dtype = np.dtype(dtype)
        return self.rows[:, : count * dtype.itemsize].view(dtype)


class ParameterServer:
    """Uplink ``Gatherv`` to rank 0 and downlink ``Bcast`` from rank 0."""

    def __init__(self, comm: MPI.Comm, uplink: Header, downlink: Header, zeros=np.zeros):
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.is_server = self.rank == SERVER
        self.uplink_header = uplink
        self.downlink = MessageBuffer(downlink, zeros)
        if self.is_server:
            self.uplinks = Uplinks(self.size, HEADER_SIZE + uplink.body_length)
            self._empty = np.zeros(0, dtype=np.uint8)
        else:
            self.uplink = MessageBuffer(Header(uplink.codec, uplink.count, uplink.body_length,
                                               0, self.rank, uplink.flags), zeros)

    def gather(self) -> None:
        """Collective: every worker's ``self.uplink`` lands in rank 0's ``self.uplinks``."""
        if self.is_server:
            up = self.uplinks
            self.comm.Gatherv([self._empty, MPI.BYTE],
                              [up.raw, (up.counts, up.displacements), MPI.BYTE], root=SERVER)
        else:
            self.comm.Gatherv([self.uplink.wire, MPI.BYTE], None, root=SERVER)

    def check_uplinks(self, step: int) -> None:
        """Rank 0: every received header matches what this step expects."""
        h = self.uplink_header
        for rank in range(1, self.size):
            expected = Header(h.codec, h.count, h.body_length, step, rank, h.flags)
            expect_header(self.uplinks.message(rank), expected,
                          what=f"uplink message from rank {rank} at step {step}")

    def broadcast(self) -> None:
        """Collective: rank 0's ``self.downlink`` replaces every worker's."""
        self.comm.Bcast([self.downlink.wire, MPI.BYTE], root=SERVER)

    def check_downlink(self, step: int) -> None:
        h = self.downlink.header
        expected = Header(h.codec, h.count, h.body_length, step, SERVER, h.flags)
        expect_header(self.downlink.wire, expected,
                      what=f"downlink message from rank 0 at step {step}")


class Allreduce:
    """fp32 ``Allreduce`` (sum) over every rank, for the data-parallel baseline."""

    def __init__(self, comm: MPI.Comm, count: int, zeros=np.zeros):
        self.comm = comm
        self.send = zeros(count, dtype=np.float32)
        self.recv = zeros(count, dtype=np.float32)

    def allreduce(self) -> None:
        self.comm.Allreduce([self.send, MPI.FLOAT], [self.recv, MPI.FLOAT], op=MPI.SUM)
