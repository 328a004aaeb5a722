"""One iteration's gradient exchange, phase by phase, for any algorithm.

The training loop (``runtime.py``) and the exchange benchmark (``bench/``) both
drive this code, so what the benchmark times is what training runs::

    worker (rank m >= 1)                         server (rank 0)
    alg.worker_step -> uplink body      encode
    ParameterServer.gather  ------------------>  gather (headers checked)
                                                 alg.server_step   aggregate
    ParameterServer.broadcast <----------------  bcast (header checked on workers)
    (decode is fused into apply)        decode
    alg.apply(params, downlink)         update   alg.apply(params, downlink)

``allreduce`` replaces gather/aggregate/bcast by one ``Allreduce`` (timed as
``gather``).  Error averaging (``alg.residual_to_average``) follows the update:
an fp32 ``Allreduce`` on a communicator of the workers only (phase ``average``).
Every buffer is allocated in the constructor (or by an algorithm on its first
step); a steady-state step allocates no large arrays, only small Python objects
such as parsed headers (``tests/bench/test_steady_state.py``).
"""

from __future__ import annotations

import time

import numpy as np

from .phases import PHASES
from ..comm.transport import Allreduce, ParameterServer, WorkerMean
from ..wire import Header

COMPUTE, ENCODE, GATHER, AGGREGATE, BCAST, DECODE, UPDATE, AVERAGE = range(len(PHASES))


class PhaseClock:
    """Seconds spent in each phase of each step, kept until the next flush."""

    def __init__(self, rows: int):
        self.times = np.zeros((rows, len(PHASES)))
        self.row = 0
        self._last = 0.0

    def start(self, row: int) -> None:
        self.row = row
        self.times[row] = 0.0
        self._last = time.perf_counter()

    def lap(self, phase: int) -> None:
        now = time.perf_counter()
        self.times[self.row, phase] += now - self._last
        self._last = now


class Outgoing:
    """A message body an algorithm writes: on the device, staged to ``host`` for MPI.

    Variable-length algorithms call :meth:`set_body` with the codec, flags and
    length of what they wrote.
    """

    def __init__(self, host, padded_body):
        self.host = host
        self.padded_body = padded_body

    def set_body(self, codec: int, flags: int, body_length: int) -> None:
        self.host.set_body(codec, flags, body_length)


def _capacity_header(codecs, count: int) -> Header:
    return Header(codecs[0].id, count, max(c.max_body_length(count) for c in codecs), 0, 0)


class ParameterServerExchange:
    """The parameter-server exchange of one algorithm on one rank."""

    #: An adversarial worker's :class:`hpcgrad.training.attacks.Attack` (set by the runtime), or None.
    attack = None

    def __init__(self, comm, alg, where, zeros=np.zeros):
        self.alg = alg
        self.where = where
        self.is_server = comm.Get_rank() == 0
        d = alg.num_params
        up, down = alg.uplink_codecs(), alg.downlink_codecs()
        self.transport = ParameterServer(
            comm, _capacity_header(up, d), _capacity_header(down, d), zeros,
            variable=alg.variable_length, uplink_codecs=[c.id for c in up],
            downlink_codecs=[c.id for c in down])
        ps = self.transport
        # Where the algorithm reads and writes bodies: the host buffers MPI uses,
        # or device twins staged through them.
        self.up = None if self.is_server else Outgoing(
            ps.uplink, where.empty_like_host(ps.uplink.padded_body))
        self.down = where.empty_like_host(ps.downlink.padded_body)
        self.averaging = WorkerMean(comm) if alg.average_every else None

    def step(self, grads, params, step: int, clock: PhaseClock) -> None:
        ps, alg, where = self.transport, self.alg, self.where
        if not self.is_server:
            ps.uplink.stamp(step)
            alg.worker_step(grads, self.up, step)
            if self.attack is not None:  # an adversarial rank (attacks.py)
                self.attack.corrupt_message(ps.uplink.raw, self.up.padded_body, step)
            where.to_host(self.up.padded_body, ps.uplink.padded_body)
            clock.lap(ENCODE)
        ps.gather(step)
        clock.lap(GATHER)
        if self.is_server:
            ps.downlink.stamp(step)
            alg.server_step(ps.uplinks, ps.downlink, step)
            clock.lap(AGGREGATE)
        ps.broadcast(step)
        clock.lap(BCAST)
        if not self.is_server:
            clock.lap(DECODE)
        where.to_device(ps.downlink.padded_body, self.down)
        alg.apply(params, self.down, step, ps.downlink_header())
        where.synchronize()
        clock.lap(UPDATE)
        if self.averaging is not None and not self.is_server:
            residual = alg.residual_to_average(step)
            if residual is not None:
                self.averaging.replace_by_mean(residual)
                clock.lap(AVERAGE)

    def bytes_up(self) -> np.ndarray | int:
        """Rank 0: this step's uplink length of every worker (MPI buffer lengths)."""
        return self.transport.uplinks.lengths[1:]

    def bytes_down(self) -> int:
        return self.transport.downlink.length

    def messages(self):
        """Rank 0: this step's uplink messages (worker order) and the downlink."""
        ps = self.transport
        return [ps.uplinks.message(r) for r in range(1, ps.size)], ps.downlink.wire


class AllreduceExchange:
    """The data-parallel baseline: one fp32 ``Allreduce`` among all ranks."""

    #: An adversarial worker's :class:`hpcgrad.training.attacks.Attack` (set by the runtime), or None.
    attack = None

    def __init__(self, comm, alg, where, zeros=np.zeros):
        self.alg = alg
        self.where = where
        self.is_server = comm.Get_rank() == 0
        self.transport = Allreduce(comm, alg.num_params, zeros)
        self.send = where.empty_like_host(self.transport.send)
        self.recv = where.empty_like_host(self.transport.recv)
        self._workers = comm.Get_size() - 1

    def step(self, grads, params, step: int, clock: PhaseClock) -> None:
        ar, alg, where = self.transport, self.alg, self.where
        if not self.is_server:
            alg.worker_step(grads, self.send, step)
            if self.attack is not None:
                self.attack.corrupt_raw(self.send, step)
            where.to_host(self.send, ar.send)
        clock.lap(ENCODE)
        ar.allreduce()
        clock.lap(GATHER)
        where.to_device(ar.recv, self.recv)
        alg.apply(params, self.recv, step)
        where.synchronize()
        clock.lap(UPDATE)

    def bytes_up(self):
        return np.full(self._workers, self.transport.send.nbytes)

    def bytes_down(self) -> int:
        return self.transport.recv.nbytes

    def messages(self):
        raise NotImplementedError("allreduce sends raw buffers, not messages")


def create(comm, alg, where, zeros=np.zeros):
    cls = AllreduceExchange if alg.topology == "allreduce" else ParameterServerExchange
    return cls(comm, alg, where, zeros)

