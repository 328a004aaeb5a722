"""The step context and the shared uplink loops (``hpcgrad.algorithms.step``)."""

import numpy as np
import pytest

from hpcgrad.algorithms.step import Shard, StepContext, decode_into_rows, decode_into_sum
from hpcgrad.comm.transport import Uplinks
from hpcgrad.errors import WireFormatError
from hpcgrad.wire import HEADER_SIZE, Header, MessageBuffer, read_header
from hpcgrad.wire.codecs import FP32, SPARSE_VALUES, encode_sparse_values


def test_the_whole_shard_names_its_tensors():
    shard = Shard.whole([3, 5, 2])
    assert (shard.start, shard.stop, shard.count) == (0, 10, 10)
    assert shard.segments == (3, 5, 2)
    np.testing.assert_array_equal(shard.offsets, [0, 3, 8, 10])
    with pytest.raises(ValueError, match="at least one tensor"):
        Shard.whole([])


def test_context_roles():
    shard = Shard.whole([4])
    server, worker = StepContext(0, 3, shard), StepContext(2, 3, shard, lr=0.1, step=7)
    assert server.is_server and server.worker is None
    assert not worker.is_server and worker.worker == 1 and worker.step == 7
    assert worker.lr == np.float32(0.1) and worker.lr.dtype == np.float32
    with pytest.raises(ValueError, match="rank 4 is not in 0..3"):
        StepContext(4, 3, shard)


def _uplinks(bodies, step=3):
    """Real receive buffer holding fp32 bodies, headers accepted as the transport does."""
    d = len(bodies[0])
    up = Uplinks(len(bodies) + 1, HEADER_SIZE + SPARSE_VALUES.max_body_length(d))
    for rank, values in enumerate(bodies, start=1):
        msg = MessageBuffer(Header(FP32.id, d, 4 * d, step, rank))
        FP32.encode(np.asarray(values, np.float32), msg.padded_body)
        up.raw[rank * up.slot: rank * up.slot + msg.length] = msg.wire
        up.accept(rank, read_header(msg.wire))
    return up


def _decode_fp32(padded_body, header, out, *, accumulate, what):
    values = padded_body[: header.body_length].view("<f4")
    if accumulate:
        out += values
    else:
        out[...] = values


def test_decode_into_sum_writes_then_adds_in_worker_order():
    up = _uplinks([[1, 2], [10, 20], [100, 200]])
    out = np.full(2, np.nan, np.float32)  # the first worker overwrites, whatever was there
    seen = []
    decode_into_sum(up, _decode_fp32, out, each=lambda w, h: seen.append((w, h.sender)))
    np.testing.assert_array_equal(out, [111, 222])
    assert seen == [(0, 1), (1, 2), (2, 3)]
    assert len(up) == 3 and [h.sender for h, _ in up] == [1, 2, 3]


def test_decode_into_rows_counts_entries_and_names_the_sender():
    d = 50
    up = Uplinks(3, HEADER_SIZE + SPARSE_VALUES.max_body_length(d))
    for rank, nnz in ((1, 2), (2, 3)):
        msg = MessageBuffer(Header(SPARSE_VALUES.id, d, SPARSE_VALUES.max_body_length(d), 4,
                                   rank), variable=True)
        positions = np.arange(nnz, dtype=np.int64) * 7
        msg.write(*encode_sparse_values(positions, np.ones(nnz, np.float32), nnz, d,
                                        msg.padded_body))
        up.raw[rank * up.slot: rank * up.slot + msg.length] = msg.wire
        up.accept(rank, msg.header)
    pos, val = np.zeros((2, 8), np.int64), np.zeros((2, 8), np.float32)

    def decode(body, header, positions, values, what):
        return SPARSE_VALUES.decode_into(body, d, header.flags, positions, values, what=what)

    counts = decode_into_rows(up, decode, (pos, val), np.zeros(2, np.int64))
    assert counts.tolist() == [2, 3]
    np.testing.assert_array_equal(pos[1, :3], [0, 7, 14])
    assert up.what(1) == "uplink message from rank 2 at step 4"
    up.rows[0, 0] = 0xFF  # a corrupt body: the error names rank 1 and the step
    with pytest.raises(WireFormatError, match="uplink message from rank 1 at step 4"):
        decode_into_rows(up, decode, (pos, val), np.zeros(2, np.int64))


def test_an_uplink_not_received_is_named():
    up = Uplinks(3, 64)
    with pytest.raises(WireFormatError, match="no uplink from rank 2 has been received"):
        up.header(1)
