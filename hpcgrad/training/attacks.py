"""Adversarial workers (``--adversaries K --attack {invert,random}``).

The adversaries are the **last K worker ranks**, ``N-K .. N-1`` of a world of N
(:func:`adversary_ranks`; deterministic, so a log names them and a rerun picks the
same ranks).  Each runs the honest worker step, then corrupts the body of its
uplink in place, before it is staged to the host and sent (``exchange.py``; the
time counts as ``encode``).  The codec is read from the message's header, so an
algorithm that picks a codec per message is handled message by message.

``invert`` sends the negation of the honest message, and is its own inverse
(applied twice it restores the body bit for bit).  ``random`` replaces what the
message says by noise drawn from ``numpy.random.default_rng([seed, step, rank,
STREAM])``, so a run repeats exactly.  Per codec (``docs/wire-format.md``):

==============  ==============================  ==========================================
codec           invert                          random
==============  ==============================  ==========================================
sign1           flip the d sign bits            d random sign bits
scaled-sign     flip the d sign bits, same      d random sign bits, same scale
                scale
ternary2        flip the negative plane where   a random sign where non-zero (the same
                non-zero (zeros stay zero)      support)
fp32, fp16      negate every value (flip its    Gaussian values scaled to the honest
                IEEE sign bit)                  message's L2 norm
allreduce       negate the raw fp32 buffer      as fp32
sparse-sign     flip the sign bit of every      random sign bits, the same positions
                entry, the same positions
sparse-values   negate every value, the same    Gaussian values of the same L2 norm at
                positions                       the same positions
qsgd            flip the sign bit of every      a random sign bit for every non-zero level
                non-zero level (norms kept)     (norms and levels kept)
==============  ==============================  ==========================================

Bits a body carries beyond its d coordinates (the padding of the last byte of a
bit plane or section, ``ternary2``'s padding between planes, a membership
bitmap, a ``qsgd`` norm) are left as they were, so a corrupted message is still
a valid one.  An algorithm whose uplink uses another codec is refused at setup
with a :class:`ConfigError` naming it.
"""

from __future__ import annotations

import numpy as np

from .. import kernels, wire
from ..wire.codecs import TERNARY2, CODECS
from ..errors import ConfigError, WireFormatError
from ..kernels import quantize, sparse
from ..kernels.generic import packed_length
from ..options import Option

ATTACKS = ("invert", "random")

#: ``--adversaries`` / ``--attack`` (adversaries <= workers is checked once the world is known).
ADVERSARIES = Option("adversaries", int, 0, bounds=">= 0", metavar="K",
                     help="the last K worker ranks corrupt their uplink after their honest "
                          "step, 0 <= K <= workers; more than half the workers is allowed, "
                          "with a warning")
ATTACK = Option("attack", str, "invert", choices=ATTACKS,
                help="what the adversaries send: invert = the negation of their message "
                     "(every sign flipped, values negated); random = random signs, or Gaussian "
                     "values of the same norm, seeded by (seed, step, rank)")
#: Fourth word of the attack's random stream key, apart from other seeded streams.
STREAM = 0xA77AC
#: Codecs an attack can corrupt, by name (``allreduce``'s raw buffers apart).
SUPPORTED = ("fp32", "fp16", "sign1", "scaled-sign", "ternary2", "sparse-sign",
             "sparse-values", "qsgd")


def adversary_ranks(adversaries: int, world_size: int) -> list[int]:
    """The adversarial ranks: the last ``adversaries`` worker ranks."""
    return list(range(world_size - adversaries, world_size)) if adversaries else []


def over_half(adversaries: int, workers: int) -> bool:
    """More adversaries than half the workers: a majority vote can be outvoted."""
    return 2 * adversaries > workers


def warning(adversaries: int, workers: int) -> str:
    return (f"{adversaries} of {workers} workers are adversaries, more than half: a majority "
            "vote (or a mean) can be steered by them; the run goes on as asked")


def metadata(adversaries: int, attack: str, world_size: int) -> dict:
    """Run attributes for the log (docs/log-format.md)."""
    return {"adversaries": adversary_ranks(adversaries, world_size),
            "attack": attack if adversaries else "none",
            "adversaries_over_half": over_half(adversaries, world_size - 1)}


def check(config, alg, world_size: int) -> None:
    """Setup check (every rank): K <= workers and an uplink codec the attack knows."""
    workers = world_size - 1
    k = config.adversaries
    if k > workers:
        raise ConfigError(f"adversaries: {k} adversarial workers, but the job has only "
                          f"{workers} workers (ranks 1..{workers})")
    if not k or getattr(alg, "topology", "") == "allreduce":
        return
    names = [c.name for c in alg.uplink_codecs()]
    unknown = [n for n in names if n not in SUPPORTED]
    if unknown:
        raise ConfigError(f"--attack {config.attack}: {alg.name} sends "
                          f"{', '.join(unknown)} uplink bodies, which the attack cannot "
                          f"corrupt (it knows {', '.join(SUPPORTED)}); run {alg.name} without "
                          "--adversaries")


def create(config, alg, rank: int, world_size: int):
    """This rank's :class:`Attack`, or ``None`` for an honest rank (after :func:`check`)."""
    check(config, alg, world_size)
    if rank not in adversary_ranks(config.adversaries, world_size):
        return None
    return Attack(config.attack, config.seed, rank, alg.segments)


class Attack:
    """One adversarial rank's corruption of its uplinks."""

    def __init__(self, kind: str, seed: int, rank: int, segments=None):
        if kind not in ATTACKS:
            raise ConfigError(f"unknown attack {kind!r}; choose one of: {', '.join(ATTACKS)}")
        self.kind, self.seed, self.rank = kind, int(seed), int(rank)
        self.segments = segments
        self._positions = None  # sparse codecs: scratch for the decoded positions

    def rng(self, step: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, int(step), self.rank, STREAM])

    def corrupt_message(self, raw, padded_body, step: int) -> None:
        """Corrupt the body of the message whose header starts ``raw`` (a host buffer);
        ``padded_body`` is where the body is (the host buffer's, or its device twin)."""
        header = wire.read_header(raw, what=f"rank {self.rank}'s uplink at step {step}")
        self.corrupt(padded_body, header.codec, header.count, header.flags,
                     header.body_length, step)

    def corrupt(self, padded_body, codec: int, count: int, flags: int, body_length: int,
                step: int) -> None:
        """Corrupt a body of codec id ``codec`` (``count`` coordinates) in place."""
        name = CODECS[codec].name if codec in CODECS else f"id {codec}"
        body = padded_body[:body_length]
        rng = self.rng(step) if self.kind == "random" else None
        if name in ("sign1", "scaled-sign"):
            _sign_plane(body[: packed_length(count)], count, rng)
        elif name == "ternary2":
            nonzero, negative = TERNARY2.planes(body, count)
            nb = packed_length(count)
            _signs_where(negative[:nb], nonzero[:nb], rng)
        elif name in ("fp32", "fp16"):
            _values(body, np.dtype("<f4" if name == "fp32" else "<f2"), rng)
        elif name == "sparse-sign":
            nnz, bitpos = self._positions_of(body, count, flags)
            _bit_range(body, bitpos, nnz, rng)
        elif name == "sparse-values":
            nnz, bitpos = self._positions_of(body, count, flags)
            fp16 = bool(flags & CODECS[codec].FP16)
            head, width = packed_length(bitpos), 2 if fp16 else 4
            _values(body[head: head + width * nnz], np.dtype("<f2" if fp16 else "<f4"), rng)
        elif name == "qsgd":
            self._qsgd(body, count, flags & 0x1F, rng)
        else:
            raise WireFormatError(f"rank {self.rank}'s uplink at step {step}: the attack "
                                  f"cannot corrupt a {name} body")

    def corrupt_raw(self, values, step: int) -> None:
        """``allreduce``: corrupt the raw fp32 send buffer."""
        rng = self.rng(step) if self.kind == "random" else None
        _values(values.view(np.uint8) if values.dtype != np.uint8 else values,
                np.dtype("<f4"), rng)

    def _positions_of(self, body, count, flags) -> tuple[int, int]:
        if self._positions is None or self._positions.size < count:
            self._positions = np.empty(count, dtype=np.int64)
        nnz, bitpos = sparse.decode_positions(body, count, flags & 0x3, flags >> 8,
                                              sparse.raw_width(count), self._positions)
        if nnz < 0:
            raise WireFormatError(f"rank {self.rank}: its own uplink is corrupt before the "
                                  f"attack: {sparse.ERRORS[int(nnz)]}")
        return int(nnz), int(bitpos)

    def _qsgd(self, body, count, bits, rng) -> None:
        if bits == 0:  # an unquantized body: count fp32 values
            _values(body, np.dtype("<f4"), rng)
            return
        segments = self.segments or [count]
        start = 4 * len(segments)  # the norms stay
        for n, length in zip(segments, quantize.section_lengths(segments, bits)):
            section = body[start: start + length]
            plane = np.unpackbits(section, bitorder="little")
            fields = plane[: bits * int(n)].reshape(int(n), bits)
            nonzero = fields[:, : bits - 1].any(axis=1).astype(np.uint8)
            if rng is None:
                fields[:, bits - 1] ^= nonzero
            else:
                fields[:, bits - 1] = _random_bits(rng, int(n)) & nonzero
            section[...] = np.packbits(plane, bitorder="little")
            start += length


def _random_bits(rng, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(rng.bytes(packed_length(n)), np.uint8),
                         count=n, bitorder="little")


def _sign_plane(plane, count: int, rng) -> None:
    """Flip (``rng`` None) or randomize the first ``count`` bits of a packed plane."""
    xp = kernels.array_module(plane)
    full, rest = divmod(count, 8)
    if rng is None:
        plane[:full] ^= np.uint8(0xFF)
        if rest:
            plane[full: full + 1] ^= np.uint8((1 << rest) - 1)
        return
    noise = np.frombuffer(rng.bytes(packed_length(count)), np.uint8).copy()
    if rest:  # the last byte's padding bits stay as they were
        keep = np.uint8(0xFF ^ ((1 << rest) - 1))
        noise[full] = (noise[full] & ~keep) | (int(plane[full]) & keep)
    plane[...] = xp.asarray(noise)


def _signs_where(negative, nonzero, rng) -> None:
    """Flip (``rng`` None) or randomize the bits of ``negative`` where ``nonzero`` is set."""
    xp = kernels.array_module(negative)
    if rng is None:
        negative ^= nonzero
        return
    noise = xp.asarray(np.frombuffer(rng.bytes(negative.size), np.uint8))
    negative ^= (noise ^ negative) & nonzero


def _values(body, dtype, rng) -> None:
    """Negate (``rng`` None) the IEEE values of ``body``, or replace them by Gaussian
    values of the same L2 norm."""
    xp = kernels.array_module(body)
    if rng is None:
        sign = np.uint32(0x80000000) if dtype.itemsize == 4 else np.uint16(0x8000)
        words = body.view(sign.dtype)
        words ^= sign
        return
    values = body.view(dtype)
    norm = float(xp.sqrt(xp.sum(values.astype(xp.float64) ** 2)))
    noise = rng.standard_normal(values.size)
    scale = np.linalg.norm(noise)
    noise *= norm / scale if scale > 0 else 0.0
    values[...] = xp.asarray(noise.astype(dtype))


def _bit_range(body, start: int, n: int, rng) -> None:
    """Flip (``rng`` None) or randomize bits ``start .. start+n-1`` of ``body`` (host)."""
    if n == 0:
        return
    first, last = start >> 3, (start + n - 1) >> 3
    chunk = body[first: last + 1]
    plane = np.unpackbits(chunk, bitorder="little")
    lo = start - 8 * first
    if rng is None:
        plane[lo: lo + n] ^= 1
    else:
        plane[lo: lo + n] = _random_bits(rng, n)
    chunk[...] = np.packbits(plane, bitorder="little")
