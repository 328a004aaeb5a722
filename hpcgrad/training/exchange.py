"""One iteration's gradient exchange, phase by phase, for any algorithm.

The training loop (``runtime.py``) and the exchange benchmark (``bench/``) both
drive this code, so what the benchmark times is what training runs.  One step, after the
runtime computed the gradient, is the phases ``encode`` (workers: start the uplink, the
algorithm's ``worker_step``, an adversary's corruption, staging to the host), ``gather``
(the transport's ``gather``, headers checked on rank 0), ``aggregate`` (rank 0:
``server_step``), ``bcast`` (the transport's ``broadcast``), ``decode`` and ``update``
(every rank: ``decode``, then ``apply``) and ``average`` (workers: error averaging), each
timed by :class:`PhaseClock` (names in ``phases.py``).  The diagram of one iteration is in
``docs/architecture.md`` ("One iteration's data path"), its one place; keep it true to
:meth:`ParameterServerExchange.step`.

With ``--servers S > 1`` (:class:`ShardedExchange`) the same phases run once per shard:
S uplinks per worker, S gathers, one ``server_step`` per server, S broadcasts, and every
shard's decode and update on every rank.

``ctx`` is the rank's :class:`~hpcgrad.algorithms.step.StepContext`: the exchange
allocates it once and :meth:`ParameterServerExchange.begin` sets its step (and learning
rate) before each step.  ``allreduce`` replaces gather/aggregate/bcast by one
``Allreduce`` (timed as ``gather``).  Error averaging (``alg.residual_to_average``)
follows the update: an fp32 ``Allreduce`` on a communicator of the workers only (phase
``average``).  Every buffer is allocated in the constructor (or by an algorithm on its
first step); a steady-state step allocates no large arrays, only small Python objects
such as headers (``tests/bench/test_steady_state.py``).
"""

from __future__ import annotations

import copy
import time

import numpy as np

from .phases import PHASES
from ..algorithms.step import Roles, Shard, StepContext
from ..comm.transport import Allreduce, ParameterServer, WorkerMean, shard_communicators
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


class StagedMessage:
    """A message as an algorithm sees it: its body where the rank computes (``padded_body``:
    the host buffer itself, or a device twin staged through it), its header in ``host``.

    The algorithm-facing protocol is :class:`~hpcgrad.wire.MessageBuffer`'s: write the
    body into ``padded_body``, declare it with :meth:`write`, read ``header``.
    """

    def __init__(self, host, padded_body):
        self.host = host
        self.padded_body = padded_body

    @property
    def header(self) -> Header:
        return self.host.header

    def begin(self, step: int) -> None:
        """As ``MessageBuffer.begin``, for the device twin too."""
        if self.host.variable and self.padded_body is not self.host.padded_body:
            self.padded_body[: self.host.header.body_length] = 0
        self.host.begin(step)

    def write(self, codec: int, flags: int, body_length: int) -> Header:
        return self.host.write(codec, flags, body_length)


def _capacity_header(codecs, count: int) -> Header:
    return Header(codecs[0].id, count, max(c.max_body_length(count) for c in codecs), 0, 0)


class _Exchange:
    """What every exchange holds: the algorithm, the device, this rank's step context.

    Per step: :meth:`begin` (returns the step context; the runtime computes the
    gradient in between), then ``step``.
    """

    #: An adversarial worker's :class:`hpcgrad.training.attacks.Attack` (set by the runtime),
    #: or None.
    attack = None

    def __init__(self, comm, alg, where, params):
        self.alg = alg
        self.where = where
        self.is_server = comm.Get_rank() == 0
        self.context = StepContext(comm.Get_rank(), alg.num_workers, alg.shard, params,
                                   where.name, alg.config.lr)

    def begin(self, step: int, lr=None) -> StepContext:
        """Set the context for step ``step``; a learning rate ``lr`` (``--lr-schedule``) also
        goes to the algorithm (``Algorithm.set_lr``).  ``None``: the rate does not change."""
        ctx = self.context
        ctx.step = int(step)
        if lr is not None:
            ctx.lr = np.float32(lr)
            self.alg.set_lr(lr)
        return ctx


class ParameterServerExchange(_Exchange):
    """The parameter-server exchange of one algorithm on one rank."""

    def __init__(self, comm, alg, where, params, zeros=np.zeros):
        super().__init__(comm, alg, where, params)
        d = alg.num_params
        up, down = alg.uplink_codecs(), alg.downlink_codecs()
        self.transport = ParameterServer(
            comm, _capacity_header(up, d), _capacity_header(down, d), zeros,
            variable=alg.variable_length, uplink_codecs=[c.id for c in up],
            downlink_codecs=[c.id for c in down])
        ps = self.transport
        # Where the algorithm reads and writes bodies: the host buffers MPI uses,
        # or device twins staged through them.
        self.up = None if self.is_server else StagedMessage(
            ps.uplink, where.empty_like_host(ps.uplink.padded_body))
        self.down = StagedMessage(ps.downlink, where.empty_like_host(ps.downlink.padded_body))
        self.averaging = WorkerMean(comm) if alg.average_every else None

    def step(self, grads, clock: PhaseClock) -> None:
        """The exchange of the step :meth:`begin` started, ``grads`` this rank's gradient
        (unused on the server)."""
        ps, alg, where, ctx = self.transport, self.alg, self.where, self.context
        step = ctx.step
        if not self.is_server:
            self.up.begin(step)
            alg.worker_step(ctx, grads, self.up)
            if self.attack is not None:  # an adversarial rank (attacks.py)
                self.attack.corrupt_message(self.up, step)
            where.to_host(self.up.padded_body, ps.uplink.padded_body)
            clock.lap(ENCODE)
        self._uplinks_to_downlink(step, clock)
        ps.broadcast(step)
        clock.lap(BCAST)
        where.to_device(ps.downlink.padded_body, self.down.padded_body)
        decoded = alg.decode(ctx, self.down)
        where.synchronize()
        clock.lap(DECODE)
        alg.apply(ctx, decoded)
        where.synchronize()
        clock.lap(UPDATE)
        if self.averaging is not None and not self.is_server:
            residual = alg.residual_to_average(ctx)
            if residual is not None:
                self.averaging.replace_by_mean(residual)
                clock.lap(AVERAGE)

    def _uplinks_to_downlink(self, step: int, clock: PhaseClock) -> None:
        """Phases ``gather`` and ``aggregate``: the uplinks to rank 0, its ``server_step`` into
        the downlink (the node-aware exchange, hierarchy.py, replaces this part only)."""
        ps = self.transport
        ps.gather(step)
        clock.lap(GATHER)
        if self.is_server:
            self.down.begin(step)
            self.alg.server_step(self.context, ps.uplinks, self.down)
            clock.lap(AGGREGATE)

    def bytes_up(self) -> np.ndarray | int:
        """Rank 0: this step's uplink length of every worker (MPI buffer lengths)."""
        return self.transport.uplinks.lengths[1:]

    def bytes_down(self) -> int:
        return self.transport.downlink.length

    def messages(self):
        """Rank 0: this step's uplink messages (worker order) and the downlink."""
        ps = self.transport
        return [ps.uplinks.message(r) for r in range(1, ps.size)], ps.downlink.wire


class AllreduceExchange(_Exchange):
    """The data-parallel baseline: one fp32 ``Allreduce`` among all ranks.

    The algorithm's "messages" are raw fp32 buffers: ``worker_step`` fills the send
    buffer, ``decode`` and ``apply`` read the sum (no headers)."""

    def __init__(self, comm, alg, where, params, zeros=np.zeros):
        super().__init__(comm, alg, where, params)
        self.transport = Allreduce(comm, alg.num_params, zeros)
        self.send = where.empty_like_host(self.transport.send)
        self.recv = where.empty_like_host(self.transport.recv)
        self._workers = comm.Get_size() - 1

    def step(self, grads, clock: PhaseClock) -> None:
        ar, alg, where, ctx = self.transport, self.alg, self.where, self.context
        if not self.is_server:
            alg.worker_step(ctx, grads, self.send)
            if self.attack is not None:
                self.attack.corrupt_raw(self.send, ctx.step)
            where.to_host(self.send, ar.send)
        clock.lap(ENCODE)
        ar.allreduce()
        clock.lap(GATHER)
        where.to_device(ar.recv, self.recv)
        decoded = alg.decode(ctx, self.recv)
        clock.lap(DECODE)
        alg.apply(ctx, decoded)
        where.synchronize()
        clock.lap(UPDATE)

    def bytes_up(self):
        return np.full(self._workers, self.transport.send.nbytes)

    def bytes_down(self) -> int:
        return self.transport.recv.nbytes

    def messages(self):
        raise NotImplementedError("allreduce sends raw buffers, not messages")


class ShardedExchange:
    """``--servers S``: S parameter servers, server s owning shard s of the flat vector
    (``alg`` a :class:`hpcgrad.training.sharding.ShardedAlgorithm`, one algorithm instance
    per shard, as BytePS compresses per partition).

    Per step, phase by phase: ``encode`` (workers: every shard's ``worker_step`` on the
    views ``grad[start:stop]`` into S uplinks), ``gather`` (S ``Gatherv``, one per shard's
    communicator of server s and the M workers; a worker takes part in all S, in shard order,
    a server in its own), ``aggregate`` (server s: its shard's ``server_step``), ``bcast``
    (S ``Bcast``, rooted at server s on the job's communicator, so every rank, the other
    servers too, gets every shard's downlink), ``decode`` and ``update`` (every rank, every
    shard, on the views ``params[start:stop]``), ``average`` (workers: each shard's
    residual, ``Allreduce`` among the workers).  Transport semantics:
    :mod:`hpcgrad.comm.transport` (``shard_communicators``).  Each shard's step context has
    the shard's rank (server 0, worker w at w + 1, as in a one-server job of M workers) and
    ``shard`` the plan's shard (flat-vector coordinates).
    """

    def __init__(self, comm, alg, where, params, zeros=np.zeros):
        self.alg = alg
        self.where = where
        self.roles = roles = Roles(comm.Get_rank(), comm.Get_size(), len(alg.shards))
        self.is_server = roles.is_server
        self._attacks = None
        self.transports, self.contexts, self.ups, self.downs = [], [], [], []
        for s, (shard, shard_alg, shard_comm) in enumerate(zip(
                alg.plan, alg.shards, shard_communicators(comm, roles.servers))):
            up, down = shard_alg.uplink_codecs(), shard_alg.downlink_codecs()
            ps = ParameterServer(
                shard_comm, _capacity_header(up, shard.count), _capacity_header(down, shard.count),
                zeros, variable=shard_alg.variable_length, uplink_codecs=[c.id for c in up],
                downlink_codecs=[c.id for c in down], downlink_comm=comm, downlink_root=s,
                job_ranks=[s, *range(roles.servers, roles.size)])
            self.transports.append(ps)
            self.contexts.append(StepContext(ps.rank if ps.member else 0, roles.workers, shard,
                                             params[shard.start:shard.stop], where.name,
                                             alg.config.lr))
            self.ups.append(None if self.is_server else StagedMessage(
                ps.uplink, where.empty_like_host(ps.uplink.padded_body)))
            self.downs.append(StagedMessage(ps.downlink,
                                            where.empty_like_host(ps.downlink.padded_body)))
        alg.contexts = self.contexts  # before_gradient / after_gradient run per shard
        # What the runtime sees: the whole vector, with a one-server job's rank.
        self.context = StepContext(0 if self.is_server else roles.worker + 1, roles.workers,
                                   Shard.whole(alg.segments), params, where.name, alg.config.lr)
        self.averaging = WorkerMean(comm, roles.servers) if alg.average_every else None
        self._link_bytes = np.zeros(roles.workers + 1, dtype=np.int64)

    @property
    def attack(self):
        return None if self._attacks is None else self._attacks[0]

    @attack.setter
    def attack(self, attack) -> None:
        """An adversary corrupts each shard's uplink as that shard's tensors' pieces lay it
        out."""
        if attack is None:
            self._attacks = None
            return
        self._attacks = []
        for shard_alg in self.alg.shards:
            each = copy.copy(attack)
            each.segments = shard_alg.segments
            self._attacks.append(each)

    def begin(self, step: int, lr=None) -> StepContext:
        for ctx in (self.context, *self.contexts):
            ctx.step = int(step)
            if lr is not None:
                ctx.lr = np.float32(lr)
        if lr is not None:
            self.alg.set_lr(lr)
        return self.context

    def step(self, grads, clock: PhaseClock) -> None:
        alg, where, roles = self.alg, self.where, self.roles
        step = self.context.step
        shards = list(zip(alg.plan, alg.shards, self.contexts, self.transports, self.ups,
                          self.downs))
        if not self.is_server:
            for s, (shard, a, ctx, ps, up, _) in enumerate(shards):
                up.begin(step)
                a.worker_step(ctx, grads[shard.start:shard.stop], up)
                if self._attacks is not None:
                    self._attacks[s].corrupt_message(up, step)
                where.to_host(up.padded_body, ps.uplink.padded_body)
            clock.lap(ENCODE)
            for _, _, _, ps, _, _ in shards:
                ps.gather(step)
            clock.lap(GATHER)
        else:
            _, a, ctx, ps, _, down = shards[roles.server]
            ps.gather(step)
            clock.lap(GATHER)
            down.begin(step)
            a.server_step(ctx, ps.uplinks, down)
            clock.lap(AGGREGATE)
        for _, _, _, ps, _, _ in shards:
            ps.broadcast(step)
        clock.lap(BCAST)
        for _, a, ctx, ps, _, down in shards:
            where.to_device(ps.downlink.padded_body, down.padded_body)
            decoded = a.decode(ctx, down)
            where.synchronize()
            clock.lap(DECODE)
            a.apply(ctx, decoded)
            where.synchronize()
            clock.lap(UPDATE)
        if self.averaging is not None and not self.is_server:
            for _, a, ctx, _, _, _ in shards:
                residual = a.residual_to_average(ctx)
                if residual is not None:
                    self.averaging.replace_by_mean(residual)
            clock.lap(AVERAGE)

    def link_bytes(self) -> np.ndarray:
        """This step's bytes on this server's links: the M uplink lengths it received
        (worker order), then its downlink's length; zeros on a worker.  The runtime gathers
        these from every server at each flush (rank 0 alone sees only shard 0)."""
        if self.is_server:
            ps = self.transports[self.roles.server]
            self._link_bytes[:-1] = ps.uplinks.lengths[1:]
            self._link_bytes[-1] = ps.downlink.length
        return self._link_bytes

    def messages(self):
        raise NotImplementedError("--record-messages is not kept with --servers > 1")


def create(comm, alg, where, params, zeros=np.zeros):
    """The exchange of ``alg`` on this rank; ``params`` is the flat parameter vector the
    updates go to (on ``where``)."""
    if getattr(alg.config, "hierarchy", "flat") != "flat":  # built on this module, not here
        raise ValueError("--hierarchy node: the exchange is hpcgrad.training.hierarchy.create's")
    if getattr(alg, "shards", None) is not None:  # --servers S > 1
        return ShardedExchange(comm, alg, where, params, zeros)
    cls = AllreduceExchange if alg.topology == "allreduce" else ParameterServerExchange
    return cls(comm, alg, where, params, zeros)
