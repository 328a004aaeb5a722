"""Sharded servers, ``--servers S``: S algorithm instances, one per shard of the flat vector.

Ranks 0..S-1 are servers, server s owning shard s, a contiguous range of the flat parameter
vector cut by :meth:`hpcgrad.algorithms.step.Shard.split` (balanced by size, boundaries on
64-coordinate words); ranks S..N-1 are the M = N - S workers (:class:`~hpcgrad.algorithms.
step.Roles`).  As BytePS compresses per partition, every rank holds one instance of the
algorithm per shard, built for the shard's coordinates and the pieces of the tensors in it,
as if the shard were a whole model; :class:`ShardedAlgorithm` holds them and answers the
runtime's questions (codecs, settings, checkpoint state) for all of them, and
``exchange.ShardedExchange`` runs them.

What is the same as one server: every coordinate-wise rule (majority vote, means, momentum,
the tie coins of ``--tie random``, indexed by flat coordinate), so signum-mv, fp32-ps,
fp16-ps and ef-sgd with ``--compressor identity`` end bit-identical to a one-server run of
the same M workers.  What is not: a statistic per tensor (qsgd / dq-sgd norms and dq-sgd's
width, terngrad's scale, scaled-sign's scale, top-K's K) is taken per piece where a shard
boundary cuts a tensor, and seeded coins that are indexed within a message (qsgd,
terngrad, randomk) are indexed within the shard's message.
"""

from __future__ import annotations

import json

from .. import algorithms
from ..algorithms.step import Shard
from ..options import Option, Section, fail

SERVERS = Option("servers", int, 1, bounds=">= 1", metavar="S",
                 help="parameter servers: ranks 0..S-1 each own a contiguous, word-aligned "
                      "shard of the parameters (balanced by size), ranks S..N-1 are the "
                      "workers; every rank applies every shard's downlink")


def _check(cfg) -> None:
    if cfg.servers == 1:
        return
    algorithm = type(cfg).ALGORITHMS[cfg.algorithm]
    fail(algorithm.topology != "allreduce",
         f"--servers {cfg.servers}: --algorithm {cfg.algorithm} has no server (one Allreduce "
         "among all ranks); use --servers 1")
    fail(getattr(cfg, "hierarchy", "flat") == "flat",
         f"--servers {cfg.servers} with --hierarchy node: node leaders talk to one server "
         "only (docs/hierarchy.md); use one of the two")
    fail(not cfg.record_messages,
         f"--record-messages with --servers {cfg.servers}: raw messages are kept only with "
         "one server")


SECTION = Section("sharded servers (hpcgrad/training/sharding.py)", (SERVERS,), check=_check)


class ShardedAlgorithm:
    """One algorithm instance per shard of ``Shard.split(segments, servers)``.

    Each instance is ``algorithms.create(config, shard.count, M, shard.segments)``: it sees
    the shard's coordinates as its whole vector (its offsets start at 0) and is run on views
    ``[start:stop]`` of the flat buffers.  Instance s is also attribute ``shard{s}``, so a
    checkpoint names its state ``shard{s}.momentum``."""

    def __init__(self, config, segments, num_workers: int, servers: int):
        self.config = config
        self.segments = [int(n) for n in segments]
        self.num_workers = num_workers
        self.plan = Shard.split(self.segments, servers)
        self.shards = tuple(algorithms.create(config, shard.count, num_workers, shard.segments)
                            for shard in self.plan)
        for s, alg in enumerate(self.shards):
            setattr(self, f"shard{s}", alg)
        first = self.shards[0]
        self.name, self.topology = first.name, first.topology
        self.num_params = sum(shard.count for shard in self.plan)
        self.variable_length = first.variable_length
        self.average_every = first.average_every
        self.state_names = tuple(f"shard{s}.{name}" for s, alg in enumerate(self.shards)
                                 for name in alg.state_names)
        #: Per-step algorithm figures (nnz_up, union_size, ...) are per shard, on the shard's
        #: server; they are not logged with S > 1 (yet).
        self.step_fields, self.step_stats = {}, {}
        #: The per-shard step contexts (set by the exchange): before/after_gradient use them.
        self.contexts = None

    def uplink_codecs(self) -> tuple:
        return self.shards[0].uplink_codecs()

    def downlink_codecs(self) -> tuple:
        return self.shards[0].downlink_codecs()

    def metadata(self) -> dict:
        """The first shard's attributes, a value that differs between shards as a JSON list
        of every shard's; plus ``servers`` and the shards' ``[start, stop)``."""
        each = [alg.metadata() for alg in self.shards]
        meta = {}
        for key, value in each[0].items():
            values = [m.get(key) for m in each]
            meta[key] = value if all(v == value for v in values) else json.dumps(values)
        meta["servers"] = len(self.shards)
        meta["shards"] = json.dumps([[shard.start, shard.stop] for shard in self.plan])
        return meta

    def set_lr(self, lr: float) -> None:
        for alg in self.shards:
            alg.set_lr(lr)

    def before_gradient(self, ctx) -> None:
        for alg, shard_ctx in zip(self.shards, self.contexts):
            alg.before_gradient(shard_ctx)

    def after_gradient(self, ctx) -> None:
        for alg, shard_ctx in zip(self.shards, self.contexts):
            alg.after_gradient(shard_ctx)


def create(config, segments, num_workers: int):
    """The algorithm of ``config``: one instance (``--servers 1``) or a
    :class:`ShardedAlgorithm`."""
    d = sum(int(n) for n in segments)
    if config.servers == 1:
        return algorithms.create(config, d, num_workers, segments)
    return ShardedAlgorithm(config, segments, num_workers, config.servers)
