"""hpcgrad/comm/transport.py under a real mpiexec (pytest-mpi): the parameter server's uplink
``Gatherv`` and downlink ``Bcast`` (fixed- and variable-length), the receiver's header checks,
the fp32 ``Allreduce`` and the workers' mean (``WorkerMean``).

Every test runs on every rank of COMM_WORLD and must pass at any world size >= 3 (the test
suite runs it at 3 and 5: odd sizes catch padding bugs that 2 and 4 hide).

Run with: mpiexec -n N python -m mpi4py -m pytest --with-mpi -m mpi tests/comm
"""

import re
import struct

import numpy as np
import pytest
from mpi4py import MPI

from hpcgrad.comm.transport import SERVER, Allreduce, ParameterServer, WorkerMean
from hpcgrad.errors import WireFormatError
from hpcgrad.wire import HEADER_SIZE, Header

pytestmark = pytest.mark.mpi(min_size=3)


def expected_body(rank, length):
    """What worker ``rank`` sends: bytes that differ from rank to rank and from byte to byte,
    never zero (so a zero seen by the receiver is padding, not data)."""
    return ((np.arange(length) * 7 + 13 * rank) % 251 + 1).astype(np.uint8)


# ------------------------------------------------------------------ fixed-length exchange


@pytest.mark.parametrize("body", [13, 16, 1])  # not a multiple of 8, a multiple, the smallest
def test_gatherv_lands_each_worker_in_an_aligned_slot_and_bcast_reaches_all(comm, body):
    rank, size = comm.Get_rank(), comm.Get_size()
    ps = ParameterServer(comm, Header(3, 100, body, 0, 0), Header(3, 100, body, 0, 0))
    if rank:
        assert ps.uplink.length == HEADER_SIZE + body
        ps.uplink.stamp(5)
        ps.uplink.body[:] = expected_body(rank, body)
    ps.gather(5)
    if rank == SERVER:
        up = ps.uplinks
        assert up.slot % 8 == 0 and up.slot >= HEADER_SIZE + body
        assert up.raw.size == size * up.slot
        np.testing.assert_array_equal(up.displacements, np.arange(size) * up.slot)
        assert up.lengths[0] == 0 and (up.lengths[1:] == HEADER_SIZE + body).all()
        assert not up.raw[: up.slot].any()  # slot 0 (the server's own) receives nothing
        for worker in range(1, size):
            header = up.header(worker - 1)
            assert (header.sender, header.step, header.body_length) == (worker, 5, body)
            np.testing.assert_array_equal(up.rows[worker - 1, :body], expected_body(worker, body))
            assert not up.rows[worker - 1, body:].any()  # padding to the next slot stays zero
            assert up.message(worker).size == HEADER_SIZE + body
        ps.downlink.stamp(5)
        ps.downlink.body[:] = expected_body(0, body)
    ps.broadcast(5)
    np.testing.assert_array_equal(ps.downlink.body, expected_body(0, body))
    assert ps.downlink.header == Header(3, 100, body, 5, SERVER)


def test_uplink_bodies_read_as_one_array_of_values(comm):
    """``Uplinks.values``: the bodies as an (M x count) view, row m - 1 from rank m."""
    rank, size = comm.Get_rank(), comm.Get_size()
    count = 5  # 20-byte fp32 bodies: slots of 56 bytes, so rows are strided
    header = Header(1, count, 4 * count, 0, 0)
    ps = ParameterServer(comm, header, header)
    if rank:
        ps.uplink.stamp(0)
        ps.uplink.body.view("<f4")[:] = rank + np.arange(count, dtype=np.float32) / 8
    ps.gather(0)
    if rank == SERVER:
        values = ps.uplinks.values(np.float32, count)
        assert values.shape == (size - 1, count)
        expected = np.arange(1, size, dtype=np.float32)[:, None] + np.arange(count) / 8
        np.testing.assert_array_equal(values, expected.astype(np.float32))
        values[0, 0] = -1  # a view of the receive buffer, not a copy
        assert ps.uplinks.message(1)[HEADER_SIZE:HEADER_SIZE + 4].view("<f4")[0] == -1
    ps.broadcast(0)


# --------------------------------------------------------------- variable-length exchange


def test_variable_length_messages_move_exactly_their_announced_bytes(comm):
    """Headers first, then bodies of the announced lengths, into aligned slots."""
    rank, size = comm.Get_rank(), comm.Get_size()
    capacity = 37
    ps = ParameterServer(comm, Header(5, 100, capacity, 0, 0), Header(5, 100, capacity, 0, 0),
                         variable=True, uplink_codecs=(5,), downlink_codecs=(5, 6))
    if rank:
        n = 2 * rank + 1  # 3, 5, 7, ... bytes
        ps.uplink.stamp(3)
        ps.uplink.write(5, rank, n)
        ps.uplink.body[:] = expected_body(rank, n)
        ps.uplink.raw[HEADER_SIZE + n:] = 0xEE  # past the announced length: must not travel
        ps.downlink.raw[HEADER_SIZE:] = 0x77  # what the downlink must leave past its length
    ps.gather(3)
    if rank == SERVER:
        up = ps.uplinks
        for worker in range(1, size):
            n = 2 * worker + 1
            assert up.lengths[worker] == HEADER_SIZE + n
            assert up.body_counts[worker] == n
            assert up.header(worker - 1) == Header(5, 100, n, 3, worker, flags=worker)
            np.testing.assert_array_equal(up.rows[worker - 1, :n], expected_body(worker, n))
            assert not up.rows[worker - 1, n:].any()  # nothing past the announced length
        ps.downlink.stamp(3)
        ps.downlink.write(6, 0, 11)
        ps.downlink.raw[HEADER_SIZE:] = 0xEE
        ps.downlink.body[:] = expected_body(0, 11)
    ps.broadcast(3)
    assert ps.downlink.length == HEADER_SIZE + 11
    np.testing.assert_array_equal(ps.downlink.body, expected_body(0, 11))
    assert ps.downlink.header == Header(6, 100, 11, 3, SERVER)
    if rank:
        # Exactly 11 bytes arrived (none of the server's 0xEE past them); the receiver cleared
        # what a longer body could have left up to the old length, beyond it nothing changed.
        tail = ps.downlink.raw[HEADER_SIZE + 11:]
        assert not tail[: capacity - 11].any()
        assert (tail[capacity - 11:] == 0x77).all() and tail[capacity - 11:].size > 0


def test_a_shorter_variable_length_uplink_leaves_no_stale_bytes_in_its_slot(comm):
    """``Uplinks.rows`` holds "worker bodies and their zero padding": after a long body, a
    shorter one at the next step must not leave the long one's tail in the slot, where a
    64-bit word kernel would read it as this step's padding."""
    rank, size = comm.Get_rank(), comm.Get_size()
    ps = ParameterServer(comm, Header(5, 100, 40, 0, 0), Header(5, 100, 40, 0, 0),
                         variable=True)
    for step, n in ((0, 40), (1, 3)):
        if rank:
            ps.uplink.stamp(step)
            ps.uplink.write(5, 0, n)
            ps.uplink.body[:] = expected_body(rank, n)
        ps.gather(step)
    stale = None
    if rank == SERVER:
        for worker in range(1, size):
            np.testing.assert_array_equal(ps.uplinks.rows[worker - 1, :3],
                                          expected_body(worker, 3))
        stale = [int(np.count_nonzero(ps.uplinks.rows[w, 3:])) for w in range(size - 1)]
    stale = comm.bcast(stale, root=SERVER)  # every rank fails alike (strict xfail)
    assert stale == [0] * (size - 1), (f"bytes of the previous step's longer body left past "
                                       f"this step's length, per worker: {stale}")


# ----------------------------------------------------------------------- header checks

# Byte offsets of the header fields (hpcgrad/wire/header.py, docs/wire-format.md).
FIELDS = {"magic": (0, "4s"), "version": (4, "B"), "codec": (5, "B"), "flags": (6, "H"),
          "count": (8, "Q"), "body_length": (16, "Q"), "step": (24, "I"), "sender": (28, "H"),
          "reserved": (30, "H")}


def overwrite(raw, field, value):
    offset, fmt = FIELDS[field]
    struct.pack_into("<" + fmt, raw, offset, value)


# field, value written, what rank 0 says (after "... from rank R at step S: ")
FIXED_MISMATCHES = [
    ("magic", b"HPCX", "bad magic b'HPCX'"),
    ("version", 2, "wire format version 2, this hpcgrad reads version 1"),
    ("codec", 4, "header codec is 4, expected 3"),
    ("flags", 1, "header flags is 1, expected 0"),
    ("count", 99, "header count is 99, expected 100"),
    ("body_length", 17, "header body_length is 17, expected 16"),
    ("step", 7, "header step is 7, expected 8"),
    ("sender", 0, "header sender is 0, expected {rank}"),
    ("reserved", 1, "reserved header field is 1, must be 0"),
]


@pytest.mark.parametrize("field, value, message", FIXED_MISMATCHES,
                         ids=[m[0] for m in FIXED_MISMATCHES])
def test_a_wrong_uplink_header_field_is_named_with_its_rank_and_step(comm, field, value,
                                                                      message):
    rank, size = comm.Get_rank(), comm.Get_size()
    bad = size - 1  # the last worker: the ones before it pass the check
    ps = ParameterServer(comm, Header(3, 100, 16, 0, 0), Header(3, 100, 16, 0, 0))
    if rank:
        ps.uplink.stamp(8)
        if rank == bad:
            overwrite(ps.uplink.raw, field, value)
    if rank == SERVER:
        expected = f"uplink message from rank {bad} at step 8: " + message.format(rank=bad)
        with pytest.raises(WireFormatError, match="^" + re.escape(expected)):
            ps.gather(8)
    else:
        ps.gather(8)  # one Gatherv: it completes on every rank before rank 0 checks


@pytest.mark.parametrize("field, value, message", [
    ("magic", b"\0\0\0\0", "bad magic"),
    ("codec", 4, "header codec is 4, expected 3"),
    ("count", 101, "header count is 101, expected 100"),
    ("step", 9, "header step is 9, expected 8"),
    ("sender", 1, "header sender is 1, expected 0"),
], ids=["magic", "codec", "count", "step", "sender"])
def test_a_wrong_downlink_header_field_is_named_on_every_worker(comm, field, value, message):
    rank = comm.Get_rank()
    ps = ParameterServer(comm, Header(3, 100, 16, 0, 0), Header(3, 100, 16, 0, 0))
    if rank == SERVER:
        ps.downlink.stamp(8)
        overwrite(ps.downlink.raw, field, value)
        ps.broadcast(8)  # one Bcast: the server sends and returns; workers check
    else:
        with pytest.raises(WireFormatError,
                           match="^" + re.escape(f"downlink message from rank 0 at step 8: "
                                               f"{message}")):
            ps.broadcast(8)


VARIABLE_MISMATCHES = [
    ("magic", b"HPCX", "bad magic b'HPCX'"),
    ("version", 0, "wire format version 0, this hpcgrad reads version 1"),
    ("codec", 6, "header codec is 6, expected one of [5, 8]"),
    ("count", 99, "header count is 99, expected 100"),
    ("step", 2, "header step is 2, expected 3"),
    ("sender", 0, "header sender is 0, expected {rank}"),
    ("body_length", 17, "header body_length is 17, more than the largest body this run can "
                        "send (16 bytes)"),
]


@pytest.mark.parametrize("field, value, message", VARIABLE_MISMATCHES,
                         ids=[m[0] for m in VARIABLE_MISMATCHES])
def test_a_wrong_variable_length_uplink_header_is_refused_before_its_body(comm, field, value,
                                                                          message):
    rank, size = comm.Get_rank(), comm.Get_size()
    bad = size - 1
    ps = ParameterServer(comm, Header(5, 100, 16, 0, 0), Header(5, 100, 16, 0, 0),
                         variable=True, uplink_codecs=(5, 8))
    if rank:
        ps.uplink.stamp(3)
        ps.uplink.write(8, 0, 16)
        if rank == bad:  # after write, which refuses a body over capacity itself
            overwrite(ps.uplink.raw, field, value)
    if rank == SERVER:
        expected = f"uplink message from rank {bad} at step 3: " + message.format(rank=bad)
        with pytest.raises(WireFormatError, match="^" + re.escape(expected)):
            ps.gather(3)
    else:
        # The header phase only: rank 0 raises before the bodies' Gatherv, which workers
        # calling ps.gather would then wait in forever (in a run, the error aborts the job).
        comm.Gatherv([ps.uplink.wire[:HEADER_SIZE], MPI.BYTE], None, root=SERVER)


def test_a_variable_length_downlink_of_an_unlisted_codec_is_refused(comm):
    rank = comm.Get_rank()
    ps = ParameterServer(comm, Header(5, 100, 16, 0, 0), Header(5, 100, 16, 0, 0),
                         variable=True, downlink_codecs=(5, 6))
    if rank == SERVER:
        ps.downlink.stamp(4)
        ps.downlink.write(7, 0, 8)
        comm.Bcast([ps.downlink.raw[:HEADER_SIZE], MPI.BYTE], root=SERVER)  # header phase only
    else:
        with pytest.raises(WireFormatError, match="^" + re.escape(
                "downlink message from rank 0 at step 4: header codec is 7, expected one of "
                "[5, 6]")):
            ps.broadcast(4)


def test_a_message_body_over_capacity_is_refused_by_its_sender(comm):
    rank = comm.Get_rank()
    ps = ParameterServer(comm, Header(5, 100, 16, 0, 0), Header(5, 100, 16, 0, 0),
                         variable=True)
    message = ps.downlink if rank == SERVER else ps.uplink
    with pytest.raises(WireFormatError, match="body of 17 bytes exceeds the message's "
                                              "capacity of 16"):
        message.write(5, 0, 17)
    assert message.length == HEADER_SIZE + 16  # unchanged


# ----------------------------------------------------------------------------- Allreduce


def contribution(rank, count, exact):
    """A rank's float32 summand. ``exact``: small integers, whose float32 sum is exact in any
    order, so MPI's sum can be compared with NumPy's bit for bit."""
    rng = np.random.default_rng([11, rank])
    if exact:
        return rng.integers(-1000, 1000, count).astype(np.float32)
    return rng.standard_normal(count).astype(np.float32)


@pytest.mark.parametrize("count", [1, 7, 1000])
def test_allreduce_sums_every_ranks_contribution(comm, count):
    rank, size = comm.Get_rank(), comm.Get_size()
    ar = Allreduce(comm, count)
    assert ar.send.dtype == ar.recv.dtype == np.float32 and ar.send.size == count
    for exact in (True, False):
        ar.send[...] = contribution(rank, count, exact)
        ar.allreduce()
        every = np.stack([contribution(r, count, exact) for r in range(size)])
        np.testing.assert_array_equal(ar.send, every[rank])  # the send buffer is not touched
        if exact:
            np.testing.assert_array_equal(ar.recv, every.sum(axis=0))
        else:  # float32 sums in MPI's order and in NumPy's: equal up to rounding
            np.testing.assert_allclose(ar.recv, every.astype(np.float64).sum(axis=0),
                                       rtol=1e-5, atol=1e-5)
        # every rank holds the same bits, whatever order MPI added in
        assert len(set(comm.allgather(ar.recv.tobytes()))) == 1


# ---------------------------------------------------------------------------- WorkerMean


def test_worker_mean_is_the_mean_over_the_workers_only(comm):
    rank, size = comm.Get_rank(), comm.Get_size()
    mean = WorkerMean(comm)  # collective: every rank constructs it
    if rank == SERVER:
        assert mean.workers == MPI.COMM_NULL and mean.count == 0
    else:
        assert mean.workers.Get_size() == size - 1 == mean.count
        # key = world rank: the workers' communicator lists them in world-rank order
        assert mean.workers.Get_rank() == rank - 1
    array = contribution(rank, 257, exact=True) * np.float32(size - 1)  # exact mean
    before = array.copy()
    if rank != SERVER:
        mean.replace_by_mean(array)
    if rank == SERVER:
        np.testing.assert_array_equal(array, before)  # rank 0 takes no part
    else:
        workers = np.stack([contribution(r, 257, True) * np.float32(size - 1)
                            for r in range(1, size)])
        np.testing.assert_array_equal(array, workers.sum(axis=0) / np.float32(size - 1))
    comm.Barrier()
    if rank:
        mean.workers.Free()


def test_worker_mean_leaves_the_workers_bit_identical(comm):
    """Inexact float32 values: the workers' arrays end up equal bit for bit (their residuals
    must not drift apart), and close to the mean NumPy computes in float64."""
    rank, size = comm.Get_rank(), comm.Get_size()
    mean = WorkerMean(comm)
    array = contribution(rank, 1001, exact=False)
    if rank != SERVER:
        mean.replace_by_mean(array)
    results = comm.allgather(array.tobytes())
    assert results[0] == contribution(0, 1001, exact=False).tobytes()
    assert len(set(results[1:])) == 1
    workers = np.stack([contribution(r, 1001, False) for r in range(1, size)])
    np.testing.assert_allclose(array if rank else np.frombuffer(results[1], np.float32),
                               workers.astype(np.float64).mean(axis=0), rtol=1e-5, atol=1e-6)
    if rank:
        mean.workers.Free()
