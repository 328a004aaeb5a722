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
STREAM])``, so a run repeats exactly.

What that means for a body is the codec's business: :meth:`Attack.corrupt` hands the body
to the ``corrupt`` method of the codec its header names (``rng`` None for ``invert``), and
each codec's docstring in :mod:`hpcgrad.wire.codecs` says what it does.  In short:

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
a valid one.  The codecs an attack knows are those that define ``corrupt``
(:func:`hpcgrad.wire.codecs.corruptible`; ``base3`` does not); an algorithm whose uplink
uses another codec is refused at setup with a :class:`ConfigError` naming it.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError, WireFormatError
from ..wire.codecs import CODECS, FP32, corruptible
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


def attackable_codecs() -> list[str]:
    """Names of the codecs an attack can corrupt, by id (``allreduce``'s raw buffers
    apart)."""
    return [codec.name for codec in CODECS.values() if corruptible(codec)]


def adversary_ranks(adversaries: int, world_size: int) -> list[int]:
    """The adversarial ranks: the last ``adversaries`` worker ranks."""
    return list(range(world_size - adversaries, world_size)) if adversaries else []


def over_half(adversaries: int, workers: int) -> bool:
    """More adversaries than half the workers: a majority vote can be outvoted."""
    return 2 * adversaries > workers


def warning(adversaries: int, workers: int) -> str:
    return (f"{adversaries} of {workers} workers are adversaries, more than half: a majority "
            "vote (or a mean) can be steered by them; the run goes on as asked")


def metadata(adversaries: int, attack: str, world_size: int, servers: int = 1) -> dict:
    """Run attributes for the log (docs/log-format.md); ``servers``: ``--servers S``."""
    return {"adversaries": adversary_ranks(adversaries, world_size),
            "attack": attack if adversaries else "none",
            "adversaries_over_half": over_half(adversaries, world_size - servers)}


def check(config, alg, world_size: int) -> None:
    """Setup check (every rank): K <= workers and an uplink codec the attack knows."""
    servers = getattr(config, "servers", 1)
    workers = world_size - servers
    k = config.adversaries
    if k > workers:
        raise ConfigError(f"adversaries: {k} adversarial workers, but the job has only "
                          f"{workers} workers (ranks {servers}..{world_size - 1})")
    if not k or getattr(alg, "topology", "") == "allreduce":
        return
    unknown = [c.name for c in alg.uplink_codecs() if not corruptible(c)]
    if unknown:
        raise ConfigError(f"--attack {config.attack}: {alg.name} sends "
                          f"{', '.join(unknown)} uplink bodies, which the attack cannot "
                          f"corrupt (it knows {', '.join(attackable_codecs())}); run "
                          f"{alg.name} without --adversaries")


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

    def rng(self, step: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, int(step), self.rank, STREAM])

    def corrupt_message(self, message, step: int) -> None:
        """Corrupt the body of an outgoing ``message`` (``MessageBuffer`` or the exchange's
        staged twin) in place, as its ``header`` -- the one it sends -- describes it."""
        header = message.header
        self.corrupt(message.padded_body, header.codec, header.count, header.flags,
                     header.body_length, step)

    def corrupt(self, padded_body, codec: int, count: int, flags: int, body_length: int,
                step: int) -> None:
        """Corrupt a body of codec id ``codec`` (``count`` coordinates) in place."""
        what = f"rank {self.rank}'s uplink at step {step}"
        known = CODECS.get(codec)
        if known is None or not corruptible(known):
            name = known.name if known is not None else f"id {codec}"
            raise WireFormatError(f"{what}: the attack cannot corrupt a {name} body")
        known.corrupt(padded_body, count, flags, body_length, self.rng_for(step),
                      segments=self.segments, what=what)

    def corrupt_raw(self, values, step: int) -> None:
        """``allreduce``: corrupt the raw fp32 send buffer."""
        raw = values.view(np.uint8) if values.dtype != np.uint8 else values
        FP32.corrupt(raw, raw.size // 4, 0, raw.size, self.rng_for(step))

    def rng_for(self, step: int):
        """The noise of ``step`` for ``random``; None (invert) for ``invert``."""
        return self.rng(step) if self.kind == "random" else None
