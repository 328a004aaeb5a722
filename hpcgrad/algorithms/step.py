"""The step context: everything one rank's algorithm step needs to know, in one object.

In the spirit of PyTorch DDP's ``GradBucket``: the exchange (``hpcgrad/training/exchange.py``)
allocates one :class:`StepContext` per rank and updates its fields before each step, and
every step method of an algorithm (:mod:`hpcgrad.algorithms.base`) receives it, so no
algorithm has to dig the rank out of a message header or keep the parameters from an
earlier call.

The context names the **shard** of coordinates the exchange covers: today one shard, the
whole flat vector ``[0, d)``; the tensors in it are its ``segments`` (sizes, flat-vector
order) with ``offsets`` (where each starts, plus the end).

Also here: the loops every aggregating server step runs over its uplinks --
:func:`decode_into_sum` (dense aggregates), :func:`decode_into_mean` (their mean, in one
fused pass where the compressor has one) and :func:`decode_into_rows` (sparse entries, one
row per worker) -- written once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..wire.codecs import segment_offsets

SERVER_RANK = 0


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

    @property
    def count(self) -> int:
        """Number of coordinates in the shard (the headers' ``count``)."""
        return self.stop - self.start


class StepContext:
    """One rank's view of the current step; allocated once, updated by the exchange.

    ``rank`` is the rank in the job's communicator (0: the parameter server), ``worker``
    the worker index ``rank - 1`` (``None`` on the server), ``num_workers`` M.  ``step``
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
