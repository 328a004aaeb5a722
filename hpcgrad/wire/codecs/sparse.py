"""Ternary vectors by their non-zeros (``docs/wire-format.md`` §4.6, §4.7): ``sparse-sign``
(a bitstream of positions and sign bits) and ``base3`` (five trits per byte).

Both decode to ``(positions, negative)`` lists (:meth:`SparseTernaryCodec.decode_into`),
which is what the server's merge vote reads; :func:`encode_sparse_ternary` writes whichever
of the two is shorter, the way S3GD-MV's downlink does.
"""

from __future__ import annotations

import numpy as np

from ...errors import WireFormatError
from ...kernels.generic import packed_length
from ...kernels.sparse import base3, positions as bitstream
from . import corruption
from .base import CODECS, Codec, EncodedBody

__all__ = ["SparseTernaryCodec", "SparseSignCodec", "Base3Codec", "SPARSE_SIGN", "BASE3",
           "encode_sparse_ternary", "nonzero_signs"]


def nonzero_signs(values):
    """``(positions int64, negative uint8)`` of the non-zero coordinates of ``values``
    (``v != 0``: -0.0 is zero, NaN counts as non-zero and positive)."""
    found = np.flatnonzero(values).astype(np.int64)
    return found, (values[found] < 0).astype(np.uint8)


class SparseTernaryCodec(Codec):
    """Base of the variable-length ternary bodies: decode to (positions, negative)."""

    variable_length = True
    #: What the decoding kernel's negative codes mean.
    errors = bitstream.ERRORS

    def decode_into(self, body, count, flags, positions, negative, what="message") -> int:
        """Fill ``positions`` (int64) and ``negative`` (uint8), capacity >= count;
        return the number of non-zeros.  Raises WireFormatError on a bad body."""
        self.check_flags(flags, what)
        nnz = self._decode(body, count, flags, positions, negative)
        if nnz < 0:
            raise WireFormatError(f"{what}: {self.name} body is corrupt: "
                                  f"{self.errors[nnz]}")
        return nnz

    def decode(self, body, count, flags=0, segments=None) -> np.ndarray:
        positions = np.empty(count, dtype=np.int64)
        negative = np.empty(count, dtype=np.uint8)
        nnz = self.decode_into(body, count, flags, positions, negative, what=self.name)
        values = np.zeros(count, dtype=np.float32)
        values[positions[:nnz]] = np.where(negative[:nnz], -1.0, 1.0)
        return values

    def encode(self, values, padded_body) -> EncodedBody:
        """``sign(v)`` by its non-zeros (:func:`nonzero_signs`)."""
        found, negative = nonzero_signs(values)
        return self.encode_entries(found, negative, found.size, values.size, padded_body)

    def encode_entries(self, positions, negative, nnz: int, count: int,
                       padded_body) -> EncodedBody:
        """The body of the ternary vector whose non-zeros are the sorted
        ``positions[:nnz]`` with sign bits ``negative`` (1 = -1), into ``padded_body``
        (zeroed up to the capacity)."""
        raise NotImplementedError

    def _decode(self, body, count, flags, positions, negative) -> int:
        raise NotImplementedError


class SparseSignCodec(SparseTernaryCodec):
    """``sparse-sign`` (id 5): entry count (Elias gamma), positions, then one sign bit per
    entry, in one LSB-first bitstream padded with zero bits to a byte.

    ``flags``: bits 0-1 the position coding (0 raw, 1 bitmap, 2 Golomb-Rice),
    bits 8-13 the Rice parameter k (0 unless Rice; at most 56).

    Corruption: ``invert`` flips the sign bit of every entry; ``random`` draws random sign
    bits; the positions stay.
    """

    id, name = 5, "sparse-sign"

    def max_body_length(self, count: int) -> int:
        # The encoder sends the smallest coding, never more than a bitmap.
        return packed_length(bitstream.sparse_sign_bits(count, count))

    @staticmethod
    def flags(coding: int, k: int) -> int:
        return coding | (k << 8)

    def check_flags(self, flags, what) -> None:
        coding, k = flags & 0xFF, flags >> 8
        if coding not in bitstream.CODING_NAMES or k > 56 or (coding != bitstream.RICE and k):
            raise WireFormatError(f"{what}: {self.name} flags {flags:#06x} name no position "
                                  "coding (0 raw, 1 bitmap, 2 Rice with k in bits 8-13)")

    def encode_entries(self, positions, negative, nnz, count, padded_body) -> EncodedBody:
        """Positions take the shortest of the three codings."""
        coding = bitstream.position_bits(positions, nnz, count, bitstream.raw_width(count))
        return self._encode_coded(positions, negative, nnz, count, padded_body, *coding)

    def _encode_coded(self, positions, negative, nnz, count, padded_body, coding, k,
                      bits) -> EncodedBody:
        """:meth:`encode_entries` once ``position_bits`` chose the coding."""
        width = bitstream.raw_width(count)
        length = packed_length(bitstream.sparse_sign_bits(nnz, int(bits)))
        if length > padded_body.size:  # the kernels do not bound-check: never write past it
            raise WireFormatError(f"a {nnz}-entry sparse-sign body of {length} bytes does "
                                  f"not fit the {padded_body.size}-byte buffer")
        bitstream.encode_sparse_sign(positions, negative, nnz, count, coding, k, width,
                                     padded_body)
        return EncodedBody(self.id, self.flags(coding, k), length)

    def _decode(self, body, count, flags, positions, negative):
        return bitstream.decode_sparse_sign(body, count, flags & 0xFF, flags >> 8,
                                            bitstream.raw_width(count), positions, negative)

    def corrupt(self, padded_body, count, flags, body_length, rng=None, *, segments=None,
                what="message") -> None:
        body = padded_body[:body_length]
        nnz, bitpos = entries_of(self, body, count, flags, what)
        corruption.bit_range(body, bitpos, nnz, rng)


class Base3Codec(SparseTernaryCodec):
    """``base3`` (id 6): five trits per byte, byte = sum t_i 3^i, trit 0 zero, 1 = +1,
    2 = -1; ``ceil(count / 5)`` bytes.  ``flags`` 0.

    No corruption: an algorithm that sends ``base3`` uplinks cannot have adversaries.
    """

    id, name = 6, "base3"
    errors = base3.ERRORS

    def body_length(self, count: int) -> int:
        return -(-count // 5)

    def max_body_length(self, count: int) -> int:
        return self.body_length(count)

    def encode_entries(self, positions, negative, nnz, count, padded_body) -> EncodedBody:
        length = self.body_length(count)
        if length > padded_body.size:
            raise WireFormatError(f"a base3 body of {length} bytes does not fit the "
                                  f"{padded_body.size}-byte buffer")
        base3.encode_base3(positions, negative, nnz, padded_body)
        return EncodedBody(self.id, 0, length)

    def _decode(self, body, count, flags, positions, negative):
        if body.size != self.body_length(count):
            return -7
        return base3.decode_base3(body, count, positions, negative)


def entries_of(codec, body, count: int, flags: int, what: str) -> tuple[int, int]:
    """``(nnz, the bit after the positions)`` of a ``sparse-sign`` or ``sparse-values``
    body, validating its count and positions (the attack's path: it allocates)."""
    scratch = np.empty(count, dtype=np.int64)
    nnz, bitpos = bitstream.decode_positions(body, count, flags & 0x3, flags >> 8,
                                             bitstream.raw_width(count), scratch)
    if nnz < 0:
        raise WireFormatError(f"{what}: {codec.name} body is corrupt: "
                              f"{bitstream.ERRORS[int(nnz)]}")
    return int(nnz), int(bitpos)


SPARSE_SIGN = CODECS[SparseSignCodec.id]
BASE3 = CODECS[Base3Codec.id]


def encode_sparse_ternary(positions, negative, nnz: int, count: int, padded_body,
                          allow_base3: bool = False) -> EncodedBody:
    """Write the smallest body for a ternary vector given by its sorted non-zero
    ``positions[:nnz]`` and sign bits; return ``(codec id, flags, body_length)``.

    Candidates: ``sparse-sign`` with raw, bitmap or Rice positions (whichever is
    shortest), and with ``allow_base3`` the dense ``base3`` packing.  (2 bits per
    coordinate is never shorter than a bitmap plus sign bits, d + nnz <= 2d.)
    ``padded_body`` must be zeroed up to the capacity.
    """
    coding = bitstream.position_bits(positions, nnz, count, bitstream.raw_width(count))
    length = packed_length(bitstream.sparse_sign_bits(nnz, int(coding[2])))
    if allow_base3 and BASE3.body_length(count) < length:
        return BASE3.encode_entries(positions, negative, nnz, count, padded_body)
    return SPARSE_SIGN._encode_coded(positions, negative, nnz, count, padded_body, *coding)
