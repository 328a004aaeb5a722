"""``vote-counts`` (id 10): a node's exact per-coordinate vote counts, as bit planes
(``docs/wire-format.md`` §4.11).  Sent by a node leader to the server under ``--hierarchy
node`` with signum-mv (:mod:`hpcgrad.algorithms.node_vote`); never by a worker.

``flags``: bits 0-14 the number of votes ``m`` counted (1..32767); bit 15 set for signed
counts.  Unsigned: the count of coordinate ``i`` is its number of negative votes, ``0..m``
(``sign1`` votes); signed: ``sum of the votes + m``, ``0..2m`` (``ternary2`` votes, -1/0/+1).
The body is ``P = bit_length(m)`` (unsigned) or ``bit_length(2m)`` (signed) bit planes; plane
``b`` holds bit ``b`` of every count, packed as a ``sign1`` plane (coordinate ``i`` in bit
``i % 8`` of byte ``i // 8``), and is padded with zero bytes to a multiple of 8 bytes, except
the last, which ends the body: ``L = (P - 1) * roundup8(B) + B`` for ``B = ceil(d/8)``.
Decoded values are the votes' sums: ``m - 2*count`` (unsigned) or ``count - m`` (signed).
"""

from __future__ import annotations

import numpy as np

from ...errors import WireFormatError
from ...kernels import vote_counts
from ...kernels.generic import packed_length
from ..header import round_up
from .base import CODECS, Codec, EncodedBody, _check_padding_bits

__all__ = ["VoteCountsCodec", "VOTE_COUNTS"]

SIGNED = 0x8000
MAX_VOTERS = 0x7FFF


class VoteCountsCodec(Codec):
    """``vote-counts`` (id 10): ``P`` bit planes of per-coordinate vote counts; ``flags``:
    the voters ``m`` and whether the counts are signed."""

    id, name = 10, "vote-counts"
    variable_length = True  # the length follows from flags (m), not from count alone

    @staticmethod
    def flags_for(voters: int, signed: bool) -> int:
        if not 1 <= voters <= MAX_VOTERS:
            raise ValueError(f"vote-counts: {voters} voters, outside 1..{MAX_VOTERS}")
        return voters | (SIGNED if signed else 0)

    @staticmethod
    def voters(flags: int) -> int:
        return flags & MAX_VOTERS

    @staticmethod
    def signed(flags: int) -> bool:
        return bool(flags & SIGNED)

    def levels(self, flags: int) -> int:
        return vote_counts.levels_for(self.voters(flags), self.signed(flags))

    @staticmethod
    def plane_stride(count: int) -> int:
        return round_up(packed_length(count))

    def body_length(self, count: int, flags: int) -> int:
        return (self.levels(flags) - 1) * self.plane_stride(count) + packed_length(count)

    def max_body_length(self, count: int) -> int:
        return self.body_length(count, self.flags_for(MAX_VOTERS, True))

    def check_flags(self, flags: int, what: str) -> None:
        if self.voters(flags) == 0:
            raise WireFormatError(f"{what}: {self.name} flags {flags:#x} count no voters")

    def encode(self, values, padded_body, *, voters: int = 1, signed: bool = False
               ) -> EncodedBody:
        """``values`` are the vote sums of ``voters`` votes per coordinate (integers; ``-m..m``,
        of the parity of ``m`` unless ``signed``)."""
        sums = np.asarray(values).astype(np.int64)
        counts = sums + voters if signed else (voters - sums) // 2
        flags = self.flags_for(voters, signed)
        planes = vote_counts.reference_planes(counts, self.levels(flags))
        length = self.body_length(sums.size, flags)
        padded_body[:length] = planes[:length]
        return EncodedBody(self.id, flags, length)

    def decode(self, body, count, flags=0, segments=None) -> np.ndarray:
        self.check_flags(flags, self.name)
        if body.size != self.body_length(count, flags):
            raise WireFormatError(f"{self.name}: body_length {body.size} does not match "
                                  f"{self.body_length(count, flags)} for flags {flags:#x}")
        levels, stride, nb = self.levels(flags), self.plane_stride(count), packed_length(count)
        for b in range(levels):
            _check_padding_bits(body[b * stride: b * stride + nb], count, self.name)
            if b < levels - 1 and np.any(body[b * stride + nb: (b + 1) * stride]):
                raise WireFormatError(f"{self.name}: padding between the planes is not zero")
        padded = np.zeros(levels * stride, dtype=np.uint8)
        padded[: body.size] = body
        counts = vote_counts.reference_decode(padded, count, levels)
        voters = self.voters(flags)
        top = 2 * voters if self.signed(flags) else voters
        if counts.size and counts.max() > top:
            raise WireFormatError(f"{self.name}: a count of {counts.max()} is more than "
                                  f"{top}, the most {voters} votes can give")
        if self.signed(flags):
            return (counts - voters).astype(np.float32)
        return (voters - 2 * counts).astype(np.float32)


VOTE_COUNTS = CODECS[VoteCountsCodec.id]
