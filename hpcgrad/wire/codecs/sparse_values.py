"""A sparse real vector (``docs/wire-format.md`` §4.9): positions as ``sparse-sign``'s,
then one value per entry, then optionally a membership bitmap (top-K, ef-sgd)."""

from __future__ import annotations

import numpy as np

from ...errors import WireFormatError
from ...kernels.generic import packed_length
from ...kernels.sparse import positions as bitstream
from . import corruption
from .base import CODECS, Codec, EncodedBody, _check_padding_bits
from .sparse import entries_of

__all__ = ["SparseValuesCodec", "SPARSE_VALUES", "encode_sparse_values"]


class SparseValuesCodec(Codec):
    """``sparse-values`` (id 8): entry count and positions exactly as ``sparse-sign`` but
    without sign bits, zero bits to the next byte, then one value per entry (fp32 or fp16,
    little-endian), then, if flagged, a membership bitmap of one bit per entry.

    ``flags``: bits 0-1 the position coding (0 raw, 1 bitmap, 2 Golomb-Rice), bit 4
    fp16 values (else fp32), bit 5 a membership bitmap follows the values, bits 8-13 the
    Rice parameter k (0 unless Rice; at most 56).  Other bits 0.

    Corruption: ``invert`` negates every value (its IEEE sign bit); ``random`` replaces
    the values by Gaussian ones of the same L2 norm; positions and membership bitmap stay.
    """

    id, name = 8, "sparse-values"
    variable_length = True
    FP16, MARKED = 1 << 4, 1 << 5

    def max_body_length(self, count: int) -> int:
        # The encoder never codes positions longer than a bitmap; fp32 values; the bitmap.
        return (packed_length(bitstream.sparse_sign_bits(count, count) - count) + 4 * count
                + packed_length(count))

    @staticmethod
    def flags(coding: int, k: int, fp16: bool = False, marked: bool = False) -> int:
        return (coding | (SparseValuesCodec.FP16 if fp16 else 0)
                | (SparseValuesCodec.MARKED if marked else 0) | (k << 8))

    @staticmethod
    def length_of(nnz: int, position_bits: int, fp16: bool = False,
                  marked: bool = False) -> int:
        """Bytes of a body of ``nnz`` entries whose positions take ``position_bits``."""
        head = packed_length(int(bitstream._gamma_bits(nnz + 1)) + position_bits)
        return head + (2 if fp16 else 4) * nnz + (packed_length(nnz) if marked else 0)

    def check_flags(self, flags, what) -> None:
        coding, k = flags & 0x3, flags >> 8
        if (flags & ~0x3F33 or coding not in bitstream.CODING_NAMES or k > 56
                or (coding != bitstream.RICE and k)):
            raise WireFormatError(f"{what}: {self.name} flags {flags:#06x} are not valid "
                                  "(bits 0-1: 0 raw, 1 bitmap, 2 Rice; bit 4 fp16; bit 5 "
                                  "membership bitmap; bits 8-13 Rice k; other bits 0)")

    def encode(self, values, padded_body, *, fp16: bool = False) -> EncodedBody:
        """The non-zero coordinates (``v != 0``: -0.0 is not sent) and their values."""
        found = np.flatnonzero(values).astype(np.int64)
        return self.encode_entries(found, values[found].astype(np.float32), found.size,
                                   values.size, padded_body, fp16=fp16)

    def encode_entries(self, positions, values, nnz: int, count: int, padded_body,
                       fp16: bool = False, marked=None) -> EncodedBody:
        """The body for the sorted ``positions[:nnz]`` and their ``values`` (float32;
        rounded to fp16 with ``fp16``), into ``padded_body`` (zeroed up to the body's
        length); ``marked`` (uint8 per entry, optional) adds the membership bitmap.
        Positions take the shortest coding."""
        width = bitstream.raw_width(count)
        coding, k, bits = bitstream.position_bits(positions, nnz, count, width)
        has_marks = marked is not None
        length = self.length_of(nnz, int(bits), fp16, has_marks)
        if length > padded_body.size:  # the kernels do not bound-check: never write past it
            raise WireFormatError(f"a {nnz}-entry sparse-values body of {length} bytes does "
                                  f"not fit the {padded_body.size}-byte buffer")
        end = bitstream.encode_positions(positions, nnz, count, coding, k, width, padded_body)
        head = packed_length(int(end))
        size = 2 if fp16 else 4
        padded_body[head: head + size * nnz].view("<f2" if fp16 else "<f4")[...] = \
            values[:nnz]
        if has_marks:
            plane = np.packbits(np.asarray(marked[:nnz], dtype=np.uint8) & 1,
                                bitorder="little")
            padded_body[head + size * nnz: head + size * nnz + plane.size] = plane
        return EncodedBody(self.id, self.flags(coding, k, fp16, has_marks), length)

    def decode_into(self, body, count, flags, positions, values, marked=None,
                    what="message") -> int:
        """Fill ``positions`` (int64), ``values`` (float32) and, if the body carries a
        membership bitmap, ``marked`` (uint8, one per entry); return the entry count.
        Raises WireFormatError on a bad body."""
        self.check_flags(flags, what)
        nnz, bitpos = bitstream.decode_positions(body, count, flags & 0x3, flags >> 8,
                                                 bitstream.raw_width(count), positions)
        if nnz < 0:
            raise WireFormatError(f"{what}: {self.name} body is corrupt: "
                                  f"{bitstream.ERRORS[nnz]}")
        nnz, bitpos = int(nnz), int(bitpos)
        if nnz > values.size:
            raise WireFormatError(f"{what}: {self.name} body is corrupt: "
                                  f"{bitstream.ERRORS[-11]}")
        fp16, has_marks = bool(flags & self.FP16), bool(flags & self.MARKED)
        head = packed_length(bitpos)
        width = 2 if fp16 else 4
        expected = head + width * nnz + (packed_length(nnz) if has_marks else 0)
        if body.size != expected:
            raise WireFormatError(f"{what}: {self.name} body of {body.size} bytes; its "
                                  f"{nnz} entries need {expected}")
        if bitpos & 7 and int(body[bitpos >> 3]) >> (bitpos & 7):
            raise WireFormatError(f"{what}: {self.name} body is corrupt: "
                                  f"{bitstream.ERRORS[-6]}")
        raw = body[head: head + width * nnz]
        values[:nnz] = raw.view("<f2" if fp16 else "<f4")
        if has_marks:
            plane = body[head + width * nnz:]
            _check_padding_bits(plane, nnz, f"{what}: {self.name} membership bitmap")
            if marked is None:
                raise WireFormatError(f"{what}: {self.name} carries a membership bitmap "
                                      "this receiver does not expect")
            marked[:nnz] = np.unpackbits(plane, count=nnz, bitorder="little")
        elif marked is not None:
            marked[:nnz] = 0
        return nnz

    def decode(self, body, count, flags=0, segments=None) -> np.ndarray:
        positions = np.empty(count, dtype=np.int64)
        values = np.empty(count, dtype=np.float32)
        marked = np.empty(count, dtype=np.uint8)
        nnz = self.decode_into(body, count, flags, positions, values, marked, what=self.name)
        out = np.zeros(count, dtype=np.float32)
        out[positions[:nnz]] = values[:nnz]
        return out

    def corrupt(self, padded_body, count, flags, body_length, rng=None, *, segments=None,
                what="message") -> None:
        body = padded_body[:body_length]
        nnz, bitpos = entries_of(self, body, count, flags, what)
        fp16 = bool(flags & self.FP16)
        head, width = packed_length(bitpos), 2 if fp16 else 4
        corruption.ieee_values(body[head: head + width * nnz],
                               np.dtype("<f2" if fp16 else "<f4"), rng)


SPARSE_VALUES = CODECS[SparseValuesCodec.id]


def encode_sparse_values(positions, values, nnz: int, count: int, padded_body,
                         fp16: bool = False, marked=None) -> EncodedBody:
    """:meth:`SparseValuesCodec.encode_entries` of the registered codec; returns
    ``(codec id, flags, length)``."""
    return SPARSE_VALUES.encode_entries(positions, values, nnz, count, padded_body, fp16,
                                        marked)
