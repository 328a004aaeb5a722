"""One parameter-server step without MPI, for algorithm tests: worker messages are built in
real message buffers and copied into a real receive buffer (``transport.Uplinks``), as
``Gatherv`` would place them; the server then aggregates.  The MPI transport itself is
tested under mpiexec (tests/comm/test_transport.py)."""

import numpy as np

from hpcgrad.comm.transport import Uplinks
from hpcgrad.wire import HEADER_SIZE, Header, MessageBuffer


def _capacity(codecs, d):
    return max(c.max_body_length(d) for c in codecs)


def uplink_buffer(alg, sender):
    d = alg.num_params
    return MessageBuffer(Header(alg.uplink.id, d, _capacity(alg.uplink_codecs(), d), 0, sender))


def downlink_buffer(alg):
    d = alg.num_params
    return MessageBuffer(Header(alg.downlink.id, d, _capacity(alg.downlink_codecs(), d), 0, 0))


def exchange(workers, server, grads, step=0, tamper=None):
    """Worker steps on ``grads`` (one per worker), then the server step; returns the
    receive buffer and the downlink.  ``tamper(rank, message)`` may corrupt an uplink."""
    d = server.num_params
    up = Uplinks(len(grads) + 1, HEADER_SIZE + _capacity(server.uplink_codecs(), d))
    for rank, (alg, grad) in enumerate(zip(workers, grads), start=1):
        msg = uplink_buffer(alg, rank)
        msg.stamp(step)
        alg.worker_step(np.asarray(grad, dtype=np.float32), msg, step)
        if tamper:
            tamper(rank, msg)
        start = rank * up.slot
        up.raw[start:start + msg.length] = msg.wire
        up.lengths[rank] = msg.length
    down = downlink_buffer(server)
    down.stamp(step)
    server.server_step(up, down, step)
    return up, down
