"""MPI transport: the parameter-server exchange and the Allreduce baseline.

Only mpi4py's buffer methods are used (``Gatherv``, ``Bcast``, ``Allreduce``):
no pickling on the hot path.  All buffers are allocated once.

Parameter-server exchange, one step: :meth:`ParameterServer.gather` is a collective over
every rank of the communicator, an ``MPI_Gatherv`` rooted at rank 0 that puts each worker's
whole uplink message (header and body) into its own slot of rank 0's receive buffer
(:class:`Uplinks`), where rank 0 checks every header.  :meth:`ParameterServer.broadcast` is
an ``MPI_Bcast`` from rank 0 of the downlink message, whose header the workers check.  A
variable-length exchange takes two collectives per direction: the 32-byte headers first,
then the bodies of exactly the lengths the headers announce.  Where this sits in a training
step: ``docs/architecture.md`` ("One iteration's data path").

The uplink uses ``Gatherv`` even for fixed-size messages so that rank 0 can
place each worker's message at an 8-byte-aligned displacement: the server's
kernels then read every body as 64-bit words, in place.

Sharded servers (``--servers S``, :func:`shard_communicators`): one :class:`ParameterServer`
per shard.  Its uplink communicator holds server s (rank 0 there) and the M workers (ranks
1..M there, in job order), so the ``Gatherv`` is exactly a one-server job's, and only server
s receives shard s.  Its downlink is an ``MPI_Bcast`` rooted at server s on the **job's**
communicator: the workers need every shard's downlink and so do the other servers (each
keeps a whole replica), and one ``Bcast`` over all N ranks gives it to all of them in one
collective (MPICH's binomial tree or scatter-allgather), where a ``Bcast`` on the shard's
communicator followed by an ``Allgatherv`` among the servers would take two.  A rank
outside a shard's uplink communicator (another server) holds only that shard's downlink.
Every rank calls the S gathers and the S broadcasts in shard order; a server calls only its
own shard's gather.
"""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from ..errors import WireFormatError
from ..wire import HEADER_SIZE, Header, MessageBuffer, expect_header, read_header, round_up

SERVER = 0


class Uplinks:
    """Rank 0's receive buffer: one 8-byte-aligned slot per rank (slot 0 unused).

    Each slot holds one whole message (header then body) of at most
    ``capacity`` bytes; ``lengths[rank]`` is the length received this step.

    What the server's algorithm reads is indexed by **worker** ``w = rank - 1``
    (``0 .. workers - 1``): :meth:`header` (parsed once, when the transport checked
    it on receipt), :meth:`body` (exactly the announced bytes), :meth:`padded_body`
    (the body and its slot's zero padding, for kernels that read 64-bit words) and
    ``rows`` (every worker's padded body, one row each).
    """

    def __init__(self, world_size: int, capacity: int, job_ranks=None):
        self.capacity = capacity
        #: How messages name the sender of slot r: its rank in the job (``--servers``: the
        #: shard's communicator numbers the workers 1..M, the job S..N-1).
        self.job_ranks = list(job_ranks) if job_ranks is not None else list(range(world_size))
        self.workers = world_size - 1
        self.slot = round_up(capacity)
        self.raw = np.zeros(world_size * self.slot, dtype=np.uint8)
        slots = self.raw.reshape(world_size, self.slot)
        #: Worker bodies and their zero padding, one row per worker (M x padded body).
        self.rows = slots[1:, HEADER_SIZE:]
        self.lengths = np.array([0] + [capacity] * (world_size - 1), dtype=np.int64)
        self.displacements = np.arange(world_size, dtype=np.int64) * self.slot
        # Variable-length exchange: headers first, then bodies of the announced lengths.
        self.header_counts = np.array([0] + [HEADER_SIZE] * (world_size - 1), dtype=np.int64)
        self.body_counts = np.zeros(world_size, dtype=np.int64)
        self.body_displacements = self.displacements + HEADER_SIZE
        self._headers = [None] * self.workers

    def accept(self, rank: int, header: Header) -> None:
        """Record the checked header of ``rank``'s message this step (the transport's job;
        a test that places messages by hand calls it as the transport would)."""
        self._headers[rank - 1] = header
        self.lengths[rank] = HEADER_SIZE + header.body_length

    def message(self, rank: int) -> np.ndarray:
        """The whole message (header + body) received from ``rank``."""
        start = rank * self.slot
        return self.raw[start:start + self.lengths[rank]]

    def header(self, worker: int) -> Header:
        """The header of worker ``worker``'s uplink this step (rank ``worker + 1``)."""
        header = self._headers[worker]
        if header is None:
            raise WireFormatError(f"no uplink from rank {self.job_ranks[worker + 1]} has been "
                                  "received")
        return header

    def body(self, worker: int) -> np.ndarray:
        """Exactly the body worker ``worker`` sent this step."""
        return self.rows[worker, : self.header(worker).body_length]

    def padded_body(self, worker: int) -> np.ndarray:
        """Worker ``worker``'s body followed by the rest of its slot (zero padding)."""
        return self.rows[worker]

    def what(self, worker: int) -> str:
        """How error messages name worker ``worker``'s uplink of this step."""
        return (f"uplink message from rank {self.job_ranks[worker + 1]} at step "
                f"{self.header(worker).step}")

    def __len__(self) -> int:
        return self.workers

    def __iter__(self):
        """``(header, body)`` of each worker's uplink, in worker order."""
        return ((self.header(w), self.body(w)) for w in range(self.workers))

    def values(self, dtype, count: int) -> np.ndarray:
        """The bodies as an (M x count) array of ``dtype``, a view."""
        dtype = np.dtype(dtype)
        return self.rows[:, : count * dtype.itemsize].view(dtype)


class ParameterServer:
    """Uplink ``Gatherv`` to rank 0 and downlink ``Bcast`` from rank 0.

    ``uplink`` and ``downlink`` are the headers the receiver expects (step and
    sender filled in per message).  With ``variable=True`` their body_length is
    a capacity, and codec and flags may be any of ``uplink_codecs`` /
    ``downlink_codecs``: each direction then takes two collectives, the 32-byte
    headers first and then the bodies of exactly the announced lengths, so the
    bytes on the wire are exactly header + body.
    """

    def __init__(self, comm: MPI.Comm, uplink: Header, downlink: Header, zeros=np.zeros, *,
                 variable: bool = False, uplink_codecs=None, downlink_codecs=None,
                 downlink_comm: MPI.Comm | None = None, downlink_root: int = SERVER,
                 job_ranks=None):
        self.comm = comm
        #: False on a rank outside ``comm`` (``MPI.COMM_NULL``: another shard's server), which
        #: takes no part in the gather and only receives the downlink on ``downlink_comm``.
        self.member = comm != MPI.COMM_NULL
        self.rank, self.size = ((comm.Get_rank(), comm.Get_size()) if self.member
                                else (None, 0))
        self.is_server = self.rank == SERVER
        #: The downlink's ``Bcast``: from ``downlink_root`` of ``downlink_comm`` (default:
        #: rank 0 of ``comm``, which must then be the same process as ``comm``'s rank 0).
        self.down_comm = comm if downlink_comm is None else downlink_comm
        self.down_root = downlink_root
        self.variable = variable
        self.uplink_header = uplink
        self.uplink_codecs = frozenset(uplink_codecs or (uplink.codec,))
        self.downlink_codecs = frozenset(downlink_codecs or (downlink.codec,))
        self.downlink = MessageBuffer(downlink, zeros, variable=variable)
        self.downlink_capacity = downlink.body_length
        if self.is_server:
            self.uplinks = Uplinks(self.size, HEADER_SIZE + uplink.body_length, job_ranks)
            self._empty = np.zeros(0, dtype=np.uint8)
        elif self.member:
            self.uplink = MessageBuffer(Header(uplink.codec, uplink.count, uplink.body_length,
                                               0, self.rank, uplink.flags), zeros,
                                        variable=variable)

    def gather(self, step: int) -> None:
        """Collective: every worker's ``self.uplink`` lands in rank 0's ``self.uplinks``.

        Rank 0 checks every header against what step ``step`` expects and raises
        :class:`WireFormatError` naming the sender on a mismatch; the checked headers
        are what ``uplinks.header(w)`` then returns (each parsed once).  A rank outside
        ``comm`` returns at once.
        """
        if not self.member:
            return
        if not self.variable:
            if self.is_server:
                up = self.uplinks
                self.comm.Gatherv([self._empty, MPI.BYTE],
                                  [up.raw, (up.lengths, up.displacements), MPI.BYTE], root=SERVER)
                self._check_uplinks(step)
            else:
                self.comm.Gatherv([self.uplink.wire, MPI.BYTE], None, root=SERVER)
            return
        if self.is_server:
            up = self.uplinks
            self.comm.Gatherv([self._empty, MPI.BYTE],
                              [up.raw, (up.header_counts, up.displacements), MPI.BYTE],
                              root=SERVER)
            self._check_uplinks(step)
            self.comm.Gatherv([self._empty, MPI.BYTE],
                              [up.raw, (up.body_counts, up.body_displacements), MPI.BYTE],
                              root=SERVER)
        else:
            wire = self.uplink.wire
            self.comm.Gatherv([wire[:HEADER_SIZE], MPI.BYTE], None, root=SERVER)
            self.comm.Gatherv([wire[HEADER_SIZE:], MPI.BYTE], None, root=SERVER)

    def _check_uplinks(self, step: int) -> None:
        h = self.uplink_header
        up = self.uplinks
        for rank in range(1, self.size):
            what = f"uplink message from rank {up.job_ranks[rank]} at step {step}"
            if not self.variable:
                expected = Header(h.codec, h.count, h.body_length, step, rank, h.flags)
                up.accept(rank, expect_header(up.message(rank), expected, what=what))
                continue
            got = read_header(up.raw, rank * up.slot, what=what)
            _check_variable(got, self.uplink_codecs, h.count, h.body_length, step, rank, what)
            # A shorter body than last step's: clear the old tail, so that past the body
            # the slot is zero padding again (word kernels read padded_body).
            before = int(up.body_counts[rank])
            if got.body_length < before:
                up.rows[rank - 1, got.body_length:before] = 0
            up.body_counts[rank] = got.body_length
            up.accept(rank, got)

    def broadcast(self, step: int) -> None:
        """Collective: rank 0's ``self.downlink`` replaces every worker's.

        Workers check the header against what step ``step`` expects; ``downlink.header``
        is then the header received (on rank 0: the one sent).
        """
        down, comm, root = self.downlink, self.down_comm, self.down_root
        if not self.variable:
            comm.Bcast([down.wire, MPI.BYTE], root=root)
            if not self.is_server:
                h = down.header
                down.receive(expect_header(
                    down.wire, Header(h.codec, h.count, h.body_length, step, SERVER, h.flags),
                    what=f"downlink message from rank {root} at step {step}"))
            return
        comm.Bcast([down.raw[:HEADER_SIZE], MPI.BYTE], root=root)
        if not self.is_server:
            what = f"downlink message from rank {root} at step {step}"
            got = read_header(down.raw, what=what)
            _check_variable(got, self.downlink_codecs, down.header.count,
                            self.downlink_capacity, step, SERVER, what)
            down.receive(got)
        comm.Bcast([down.body, MPI.BYTE], root=root)


def _check_variable(got: Header, codecs, count, capacity, step, sender, what) -> None:
    if got.codec not in codecs:
        raise WireFormatError(f"{what}: header codec is {got.codec}, expected one of "
                              f"{sorted(codecs)}")
    for field, want in (("count", count), ("step", step), ("sender", sender)):
        if getattr(got, field) != want:
            raise WireFormatError(f"{what}: header {field} is {getattr(got, field)}, "
                                  f"expected {want}")
    if got.body_length > capacity:
        raise WireFormatError(f"{what}: header body_length is {got.body_length}, more than "
                              f"the largest body this run can send ({capacity} bytes)")


def shard_communicators(comm: MPI.Comm, servers: int) -> list:
    """Collective over ``comm``: for each shard s of ``servers``, the communicator of server s
    (rank s of ``comm``, rank 0 in it) and the workers (ranks S..N-1, ranks 1..M in it, in
    order); ``MPI.COMM_NULL`` on the other servers.  One ``MPI_Comm_split`` per shard, every
    rank calling them in shard order."""
    rank = comm.Get_rank()
    found = []
    for s in range(servers):
        member = rank == s or rank >= servers
        # key 0 puts the server first; the workers keep their order behind it.
        found.append(comm.Split(0 if member else MPI.UNDEFINED, 0 if rank == s else rank))
    return found


class Allreduce:
    """fp32 ``Allreduce`` (sum) over every rank, for the data-parallel baseline."""

    def __init__(self, comm: MPI.Comm, count: int, zeros=np.zeros):
        self.comm = comm
        self.send = zeros(count, dtype=np.float32)
        self.recv = zeros(count, dtype=np.float32)

    def allreduce(self) -> None:
        self.comm.Allreduce([self.send, MPI.FLOAT], [self.recv, MPI.FLOAT], op=MPI.SUM)


class WorkerMean:
    """Replace an array by its mean over the workers (ranks S..N-1, S = ``servers``, 1 by
    default); the servers take no part.

    Construct it on every rank of ``comm``: ``MPI_Comm_split`` is collective.  The sum is
    one ``MPI_Allreduce`` of float32 on the workers' communicator, which gives every
    member the same result, so the workers' arrays end up equal (error averaging).
    """

    def __init__(self, comm: MPI.Comm, servers: int = 1):
        rank = comm.Get_rank()
        server = rank < servers
        self.workers = comm.Split(MPI.UNDEFINED if server else 0, rank)
        self.count = 0 if server else self.workers.Get_size()
        self._host = None  # a GPU array's host copy (MPICH from PyPI reads no GPU memory)

    def replace_by_mean(self, array) -> None:
        """In place; a GPU (CuPy) array is staged through a host buffer allocated once, and
        divided there, so its bits are a host array's."""
        host = array
        if not isinstance(array, np.ndarray):
            if self._host is None:
                self._host = np.empty(array.size, dtype=np.float32)
            host = self._host
            array.get(out=host)
        self.workers.Allreduce(MPI.IN_PLACE, [host, MPI.FLOAT], op=MPI.SUM)
        host /= np.float32(self.count)
        if host is not array:
            array.set(host)
