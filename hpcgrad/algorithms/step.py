"""The step context: everything one rank's algorithm step needs to know, in one object.

In the spirit of PyTorch DDP's ``GradBucket``: the exchange (``hpcgrad/training/exchange.py``)
allocates one :class:`StepContext` per rank and updates its fields before each step, and
every step method of an algorithm (:mod:`hpcgrad.algorithms.base`) receives it, so no
algorithm has to dig the rank out of a message header or keep the parameters from an
earlier call.

The context names the **shard** of coordinates the exchange covers: with one server the
whole flat vector ``[0, d)``; with ``--servers S`` one of the S word-aligned ranges
:meth:`Shard.split` cuts (server s owns shard s).  The tensors in it are its ``segments``
(the sizes of the pieces of the tensors that fall in it, flat-vector order) with
``offsets`` (where each piece starts, in flat-vector coordinates, plus the end).  Which
rank serves and which works is :class:`Roles`' answer, the one place that knows.

Also here: the loops every aggregating server step runs over its uplinks --
:func:`decode_into_sum` (dense aggregates), :func:`decode_into_mean` (their mean, in one
fused pass where the compressor has one) and :func:`decode_into_rows` (sparse entries, one
row per worker) -- written once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError
from ..wire.codecs import segment_offsets

SERVER_RANK = 0

#: Shard boundaries are multiples of this many coordinates: one 64-bit word of packed signs
#: (and 2-bit bodies' planes are whole words too), so every shard's body starts on a word.
SHARD_WORD = 64


@dataclass(frozen=True, eq=False)
class Shard:
    """The coordinates ``[start, stop)`` of the flat parameter vector one exchange covers.

    ``segments`` are the sizes of the parameter tensors in it (flat-vector order) and
    ``offsets`` where each starts, in flat-vector coordinates, followed by ``stop``.
    """

    start: int
    stop: int
    segments: tuple
    offsets: np.ndarray = field(repr=False)

    @classmethod
    def whole(cls, segments) -> "Shard":
        """The one shard of today: every tensor, ``[0, sum(segments))``."""
        segments = tuple(int(n) for n in segments)
        if not segments or min(segments) < 0:
            raise ValueError(f"a shard needs at least one tensor and no negative sizes, got "
                             f"sizes {list(segments)}")
        offsets = segment_offsets(segments)
        return cls(0, int(offsets[-1]), segments, offsets)

    @classmethod
    def split(cls, segments, servers: int) -> tuple:
        """``servers`` contiguous shards of the flat vector of tensors ``segments``.

        Balanced by size, not by tensor: the ``ceil(d / 64)`` words of 64 coordinates are
        dealt in S runs of ``floor`` / ``ceil(words / S)`` words, so every boundary is a
        multiple of :data:`SHARD_WORD` and only the last shard may end inside a word.  A
        tensor cut by a boundary is a piece in each shard it falls in (a shard's ``segments``
        are its pieces, never empty ones).  One server: :meth:`whole`, unchanged (also
        its empty tensors).  Raises :class:`ConfigError` if a shard would hold less than
        one word (``d < 64 S``)."""
        servers = int(servers)
        whole = cls.whole(segments)
        if servers == 1:
            return (whole,)
        d = whole.stop
        if servers < 1 or d < SHARD_WORD * servers:
            raise ConfigError(
                f"--servers {servers}: {d:,} parameters cannot be cut into {servers} shards "
                f"of at least one {SHARD_WORD}-coordinate word each (a packed sign word); "
                f"at most {max(1, d // SHARD_WORD)} servers for this model")
        words = -(-d // SHARD_WORD)
        bounds = [min(d, (k * words // servers) * SHARD_WORD) for k in range(servers + 1)]
        shards = []
        for start, stop in zip(bounds[:-1], bounds[1:]):
            pieces, where = [], []
            for lo, hi in zip(whole.offsets[:-1], whole.offsets[1:]):
                a, b = max(int(lo), start), min(int(hi), stop)
                if b > a:
                    pieces.append(b - a)
                    where.append(a)
            shards.append(cls(start, stop, tuple(pieces),
                              np.array(where + [stop], dtype=np.int64)))
        return tuple(shards)

    @property
    def count(self) -> int:
        """Number of coordinates in the shard (the headers' ``count``)."""
        return self.stop - self.start

    @property
    def local_offsets(self) -> np.ndarray:
        """``offsets`` counted from the shard's start: where each piece starts in the shard's
        own vector (``params[start:stop]``), plus its length."""
        return self.offsets - self.start


class Roles:
    """Who does what in a job of ``size`` ranks with ``servers`` servers: ranks
    ``0 .. S-1`` are servers (server s owns shard s), ranks ``S .. N-1`` the M = N - S
    workers, worker index ``rank - S``.  With one server this is today's rank 0 and
    workers ``rank - 1``; every "who is the server" question goes through here."""

    __slots__ = ("rank", "size", "servers")

    def __init__(self, rank: int, size: int, servers: int = 1):
        if not 1 <= servers < size:
            raise ConfigError(f"--servers {servers} with {size} ranks: a job needs 1 <= S < "
                              f"N (ranks 0..S-1 serve, ranks S..N-1 work; at least one "
                              f"worker)")
        self.rank, self.size, self.servers = int(rank), int(size), int(servers)

    @property
    def workers(self) -> int:
        """M = N - S."""
        return self.size - self.servers

    @property
    def is_server(self) -> bool:
        return self.rank < self.servers

    @property
    def server(self) -> int | None:
        """The shard this rank serves, or None on a worker."""
        return self.rank if self.is_server else None

    @property
    def worker(self) -> int | None:
        """The worker index ``rank - S`` (``0 .. M-1``), or None on a server."""
        return None if self.is_server else self.rank - self.servers

    def worker_rank(self, worker: int) -> int:
        """The job rank of worker ``worker``."""
        return self.servers + worker

    def role(self, rank: int | None = None) -> str:
        """``"server s"`` or ``"worker w"`` (of ``rank``, default this rank): the log's
        ``roles``."""
        rank = self.rank if rank is None else rank
        return f"server {rank}" if rank < self.servers else f"worker {rank - self.servers}"

    def __repr__(self) -> str:
        return f"Roles(rank {self.rank}: {self.role()}, {self.servers} servers, " \
               f"{self.workers} workers)"


class StepContext:
    """One rank's view of the current step; allocated once, updated by the exchange.

    ``rank`` is the rank in the exchange's communicator (0: the parameter server; with
    ``--servers S``, the shard's communicator, where the shard's server is 0 and worker w
    is ``w + 1``, as in a one-server job of M workers, so seeded coins keyed by the rank
    are the same), ``worker`` the worker index ``rank - 1`` (``None`` on a server: the
    shard's, or another server that only decodes and applies the shard's downlink),
    ``num_workers`` M.  ``step``
    and ``lr`` (float32) are this step's index and learning rate; ``params`` the flat
    parameter vector (NumPy, or CuPy with ``device == "cuda"``), ``shard`` what the
    exchange covers.
    """

    __slots__ = ("rank", "worker", "num_workers", "step", "params", "device", "shard", "lr")

    def __init__(self, rank: int, num_workers: int, shard: Shard, params=None,
                 device: str = "cpu", lr: float = 0.0, step: int = 0):
        if not 0 <= rank <= num_workers:
            raise ValueError(f"rank {rank} is not in 0..{num_workers} (server and M = "
                             f"{num_workers} workers)")
        self.rank = int(rank)
        self.worker = None if rank == SERVER_RANK else rank - 1
        self.num_workers = int(num_workers)
        self.shard = shard
        self.params = params
        self.device = device
        self.lr = np.float32(lr)
        self.step = int(step)

    @property
    def is_server(self) -> bool:
        return self.worker is None

    def __repr__(self) -> str:
        role = "server" if self.is_server else f"worker {self.worker}"
        return (f"StepContext(rank {self.rank}, {role} of {self.num_workers}, step {self.step}, "
                f"lr {self.lr}, {self.device}, shard [{self.shard.start}, {self.shard.stop}))")


def decode_into_sum(uplinks, decode, out, each=None) -> None:
    """``out <- sum over workers of decode(uplink w)``, added in worker order in ``out``'s dtype.

    ``decode(padded_body, header, out, accumulate=..., what=...)`` writes (w = 0) or adds
    (w > 0) one decoded uplink -- a :class:`~hpcgrad.compression.compressors.Compressor`'s
    ``decompress``.  ``each(w, header)``, if given, runs after worker w's decode (per-worker
    figures such as the gradient norm a body carries)."""
    for w in range(uplinks.workers):
        header = uplinks.header(w)
        decode(uplinks.padded_body(w), header, out, accumulate=w > 0, what=uplinks.what(w))
        if each is not None:
            each(w, header)


def decode_into_rows(uplinks, decode, rows, counts) -> np.ndarray:
    """Decode uplink w into row w of each array of ``rows``; ``counts[w]`` <- its entries.

    ``decode(body, header, *row_w, what=...)`` returns the number of entries it wrote
    (sparse bodies: positions and values or signs).  Returns ``counts``."""
    for w in range(uplinks.workers):
        counts[w] = decode(uplinks.body(w), uplinks.header(w), *(r[w] for r in rows),
                           what=uplinks.what(w))
    return counts


def decode_into_mean(uplinks, compressor, out) -> None:
    """``out <- (sum over workers of C(v_w)) / M`` in float32: :func:`decode_into_sum`'s
    additions, in worker order, then one division per coordinate -- bit for bit.

    In one pass over the receive buffer where the compressor has a fused kernel for these
    bodies (``compressor.decompress_mean``: no per-worker decode, no separate division);
    otherwise, or if any body fails a check, worker by worker with ``compressor.decompress``,
    which raises the error the server always raised for that body."""
    divisor = np.float32(uplinks.workers)
    if not compressor.decompress_mean(uplinks, out, divisor):
        decode_into_sum(uplinks, compressor.decompress, out)
        out /= divisor
