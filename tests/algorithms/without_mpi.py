"""One exchange without MPI, for algorithm tests: worker messages are built in real message
buffers and copied into a real receive buffer (``transport.Uplinks``), as ``Gatherv`` would
place them, with their headers accepted as the transport does after its checks; the server
then aggregates.  :func:`iteration` runs a whole step on every rank of either topology
(parameter server or allreduce).  The MPI transport itself is tested under mpiexec
(tests/comm/test_transport.py)."""

import numpy as np

from hpcgrad.algorithms.step import StepContext
from hpcgrad.comm.transport import Uplinks
from hpcgrad.wire import HEADER_SIZE, Header, MessageBuffer, read_header


def _capacity(codecs, d):
    return max(c.max_body_length(d) for c in codecs)


def context(alg, rank, step=0, params=None):
    """The step context the exchange would hand ``alg`` on ``rank`` (0: the server)."""
    return StepContext(rank, alg.num_workers, alg.shard, params, "cpu", alg.config.lr, step)


def uplink_buffer(alg, sender):
    d = alg.num_params
    return MessageBuffer(Header(alg.uplink.id, d, _capacity(alg.uplink_codecs(), d), 0, sender),
                         variable=alg.variable_length)


def downlink_buffer(alg):
    d = alg.num_params
    return MessageBuffer(Header(alg.downlink.id, d, _capacity(alg.downlink_codecs(), d), 0, 0),
                         variable=alg.variable_length)


def receive(up, rank, msg):
    """Place ``msg`` in ``up``'s slot of ``rank`` and accept its header, as the transport does."""
    start = rank * up.slot
    up.raw[start:start + msg.length] = msg.wire
    up.accept(rank, read_header(msg.wire))


def exchange(workers, server, grads, step=0, tamper=None, params=None):
    """Worker steps on ``grads`` (one per worker), then the server step; returns the
    receive buffer and the downlink.  ``tamper(rank, message)`` may corrupt an uplink;
    ``params`` (one per worker) are the workers' ``ctx.params``."""
    d = server.num_params
    up = Uplinks(len(grads) + 1, HEADER_SIZE + _capacity(server.uplink_codecs(), d))
    for rank, (alg, grad) in enumerate(zip(workers, grads), start=1):
        msg = uplink_buffer(alg, rank)
        msg.begin(step)
        alg.worker_step(context(alg, rank, step, None if params is None else params[rank - 1]),
                        np.asarray(grad, dtype=np.float32), msg)
        if tamper:
            tamper(rank, msg)
        receive(up, rank, msg)
    down = downlink_buffer(server)
    down.begin(step)
    server.server_step(context(server, 0, step), up, down)
    return up, down


def apply(alg, rank, params, down, step=0):
    """Every rank's end of the step: decode the downlink ``down``, update ``params``."""
    ctx = context(alg, rank, step, params)
    alg.apply(ctx, alg.decode(ctx, down))


def iteration(ranks, params, grads, step=0):
    """One whole step on every rank: ``ranks[r]`` is rank r's algorithm object (rank 0 the
    server), ``params[r]`` its flat parameters (updated in place), ``grads`` one gradient per
    worker.  Returns what went over the wire:

    * parameter server: ``(uplinks, downlink)`` as :func:`exchange` returns them;
    * allreduce: ``(sends, total)``, every rank's send buffer (rank 0's zeros) and their
      float32 sum, added in rank order (one order MPI may use; MPI does not fix it).
    """
    if ranks[0].topology == "allreduce":
        d = ranks[0].num_params
        sends = [np.zeros(d, np.float32)]
        for rank, (alg, grad) in enumerate(zip(ranks[1:], grads), start=1):
            sends.append(np.zeros(d, np.float32))
            alg.worker_step(context(alg, rank, step, params[rank]),
                            np.asarray(grad, dtype=np.float32), sends[rank])
        total = sends[0].copy()
        for send in sends[1:]:
            total += send
        for rank, (alg, p) in enumerate(zip(ranks, params)):
            ctx = context(alg, rank, step, p)
            alg.apply(ctx, alg.decode(ctx, total.copy()))  # each rank owns its receive buffer
        return sends, total
    up, down = exchange(ranks[1:], ranks[0], grads, step, params=params[1:])
    for rank, (alg, p) in enumerate(zip(ranks, params)):
        apply(alg, rank, p, down, step)
    return up, down
