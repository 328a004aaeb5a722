"""Message bodies of wire format v1: one codec per body layout.

A codec knows its body's length for ``count`` coordinates, how to write a
body from values, and how to read one back with validation.  The encode side
here is the plain, stateless one (tests, tools, baselines); algorithms with
state fuse it into their worker step through :mod:`hpcgrad.kernels`.

=====  ==========  ==========================================================
id     name        body
=====  ==========  ==========================================================
1      fp32        ``count`` IEEE-754 binary32 values, little-endian
2      fp16        ``count`` IEEE-754 binary16 values, little-endian
3      sign1       one bit per coordinate, packed LSB first, 1 = negative
4      ternary2    non-zero plane padded to 8 bytes, then negative plane
5      sparse-sign a ternary vector as a bitstream: entry count, positions
                   (raw, bitmap or Golomb-Rice gaps: ``flags``), sign bits
6      base3       a ternary vector, five trits per byte
7      qsgd        per tensor an fp32 norm, then b-bit fields (sign + level)
                   packed LSB first, each tensor's section byte-aligned
                   (``flags``: b, and DQ-SGD's width for the next step)
8      sparse-     a sparse real vector: entry count and positions as
       values      ``sparse-sign`` (no sign bits), padded to a byte, then the
                   values fp32 or fp16 (``flags``), then optionally a
                   membership bitmap over the entries (``flags``)
9      scaled-     a sign1 plane, then an fp32 scale: the vector
       sign        ``scale * (+-1)``
=====  ==========  ==========================================================

Codecs 5 to 8 are variable-length: their length depends on the values (5, 6, 8)
or on the width in ``flags`` (7).

See ``docs/wire-format.md`` for the bit-level description.
"""

from __future__ import annotations

import numpy as np

from .. import wire
from ..errors import WireFormatError
from ..kernels import generic, quantize, sparse
from ..kernels.generic import packed_length


def segment_offsets(segments) -> np.ndarray:
    """Start offsets of the tensors in the flat vector, plus the end: (L + 1,) int64."""
    return np.concatenate([[0], np.cumsum(segments, dtype=np.int64)]).astype(np.int64)


def _check_padding_bits(plane: np.ndarray, count: int, what: str) -> None:
    if count % 8 and plane.size and int(plane[packed_length(count) - 1]) >> (count % 8):
        raise WireFormatError(f"{what}: padding bits after element {count - 1} are set")


class Codec:
    """A body layout: its id in the header, its length, encode and decode."""

    id: int
    name: str
    variable_length = False

    def check_flags(self, flags: int, what: str) -> None:
        if flags:
            raise WireFormatError(f"{what}: flags {flags:#x} set; {self.name} defines none")

    def body_length(self, count: int) -> int:
        raise NotImplementedError

    def max_body_length(self, count: int) -> int:
        """The longest body for ``count`` coordinates (the buffer capacity)."""
        return self.body_length(count)

    def encode(self, values: np.ndarray, padded_body: np.ndarray) -> None:
        """Write the body for ``values`` into ``padded_body`` (zeroed, 8-byte padded)."""
        raise NotImplementedError

    def decode(self, body: np.ndarray, count: int, flags: int = 0) -> np.ndarray:
        """Values (float32) of a body whose length the header check accepted."""
        raise NotImplementedError


class DenseCodec(Codec):
    def __init__(self, codec_id: int, name: str, dtype):
        self.id, self.name, self.dtype = codec_id, name, np.dtype(dtype).newbyteorder("<")

    def body_length(self, count: int) -> int:
        return count * self.dtype.itemsize

    def encode(self, values, padded_body) -> None:
        n = values.size
        padded_body[: n * self.dtype.itemsize].view(self.dtype)[...] = values

    def decode(self, body, count, flags=0) -> np.ndarray:
        return body.view(self.dtype).astype(np.float32)


class SignCodec(Codec):
    id, name = 3, "sign1"

    def body_length(self, count: int) -> int:
        return packed_length(count)

    def encode(self, values, padded_body) -> None:
        generic.sign_pack(values, padded_body)

    def decode(self, body, count, flags=0) -> np.ndarray:
        _check_padding_bits(body, count, self.name)
        return generic.decode_signs(body, count)


class TernaryCodec(Codec):
    id, name = 4, "ternary2"

    @staticmethod
    def plane_stride(count: int) -> int:
        """Offset of the negative plane: the non-zero plane padded to 8 bytes."""
        return wire.round_up(packed_length(count))

    def body_length(self, count: int) -> int:
        return self.plane_stride(count) + packed_length(count)

    def planes(self, padded_body, count):
        """The (non-zero, negative) planes of a body, as views."""
        stride = self.plane_stride(count)
        return padded_body[:stride], padded_body[stride:]

    def encode(self, values, padded_body) -> None:
        nonzero, negative = self.planes(padded_body, values.size)
        generic.ternary_pack(values, nonzero, negative)

    def decode(self, body, count, flags=0) -> np.ndarray:
        nonzero, negative = self.planes(body, count)
        nb = packed_length(count)
        _check_padding_bits(nonzero, count, self.name)
        _check_padding_bits(negative, count, self.name)
        if np.any(nonzero[nb:]):
            raise WireFormatError(f"{self.name}: padding between the planes is not zero")
        if np.any(negative[:nb] & ~nonzero[:nb]):
            raise WireFormatError(f"{self.name}: a coordinate is negative but not non-zero")
        return generic.decode_ternary(nonzero, negative, count)


class SparseTernaryCodec(Codec):
    """Base of the variable-length ternary bodies: decode to (positions, negative)."""

    variable_length = True

    def decode_into(self, body, count, flags, positions, negative, what="message") -> int:
        """Fill ``positions`` (int64) and ``negative`` (uint8), capacity >= count;
        return the number of non-zeros.  Raises WireFormatError on a bad body."""
        self.check_flags(flags, what)
        nnz = self._decode(body, count, flags, positions, negative)
        if nnz < 0:
            raise WireFormatError(f"{what}: {self.name} body is corrupt: {sparse.ERRORS[nnz]}")
        return nnz

    def decode(self, body, count, flags=0) -> np.ndarray:
        positions = np.empty(count, dtype=np.int64)
        negative = np.empty(count, dtype=np.uint8)
        nnz = self.decode_into(body, count, flags, positions, negative, what=self.name)
        values = np.zeros(count, dtype=np.float32)
        values[positions[:nnz]] = np.where(negative[:nnz], -1.0, 1.0)
        return values

    def encode(self, values, padded_body) -> None:
        raise NotImplementedError("variable-length: use encode_sparse_ternary()")


class SparseSignCodec(SparseTernaryCodec):
    """Entry count (Elias gamma), positions, then one sign bit per entry.

    ``flags``: bits 0-1 the position coding (0 raw, 1 bitmap, 2 Golomb-Rice),
    bits 8-13 the Rice parameter k (0 unless Rice; at most 56).
    """

    id, name = 5, "sparse-sign"

    def max_body_length(self, count: int) -> int:
        # The encoder sends the smallest coding, never more than a bitmap.
        return packed_length(sparse.sparse_sign_bits(count, count))

    @staticmethod
    def flags(coding: int, k: int) -> int:
        return coding | (k << 8)

    def check_flags(self, flags, what) -> None:
        coding, k = flags & 0xFF, flags >> 8
        if coding not in sparse.CODING_NAMES or k > 56 or (coding != sparse.RICE and k):
            raise WireFormatError(f"{what}: {self.name} flags {flags:#06x} name no position "
                                  "coding (0 raw, 1 bitmap, 2 Rice with k in bits 8-13)")

    def _decode(self, body, count, flags, positions, negative):
        return sparse.decode_sparse_sign(body, count, flags & 0xFF, flags >> 8,
                                         sparse.raw_width(count), positions, negative)


class Base3Codec(SparseTernaryCodec):
    """Five trits per byte, byte = sum t_i 3^i, trit 0 zero, 1 = +1, 2 = -1."""

    id, name = 6, "base3"

    def body_length(self, count: int) -> int:
        return -(-count // 5)

    def _decode(self, body, count, flags, positions, negative):
        if body.size != self.body_length(count):
            return -7
        return sparse.decode_base3(body, count, positions, negative)


class QSGDCodec(Codec):
    """QSGD bodies (``docs/wire-format.md`` §4.8): per tensor a float32 L2 norm,
    then per tensor a byte-aligned section of ``b``-bit fields, LSB first,
    bits ``0..b-2`` the level and bit ``b-1`` the sign.

    ``flags``: bits 0-4 the width ``b`` (2..16), or 0 for an unquantized body of
    ``count`` fp32 values; bits 8-12 ``next``: 0, or the width every worker
    uses at the next step (2..16; only DQ-SGD's downlink sets it).  Other bits 0.

    The tensor sizes (``segments``) are a property of the run, like ``count``:
    an instance made for a run knows them and its widest body; the registered
    instance decodes with the segments it is given (default: one tensor).
    """

    id, name = 7, "qsgd"
    variable_length = True
    needs_segments = True
    MIN_BITS, MAX_BITS = 2, 16

    def __init__(self, segments=None, max_bits: int = MAX_BITS, fp32: bool = True):
        self.segments = None if segments is None else [int(n) for n in segments]
        self._offsets = None if segments is None else segment_offsets(self.segments)
        self.max_bits, self.fp32 = max_bits, fp32

    @staticmethod
    def flags(bits: int, next_bits: int = 0) -> int:
        return bits | (next_bits << 8)

    @staticmethod
    def split_flags(flags: int) -> tuple[int, int]:
        """``(b, next)`` of a header's flags."""
        return flags & 0x1F, (flags >> 8) & 0x1F

    def body_length_at(self, count: int, bits: int, segments=None) -> int:
        return quantize.body_length(segments or self.segments or [count], bits)

    def max_body_length(self, count: int) -> int:
        if self.segments is None:  # any tensors: 4 L + 2 d <= 6 d at b = 16
            return 6 * count
        longest = self.body_length_at(count, self.max_bits)
        return max(longest, 4 * count) if self.fp32 else longest

    def check_flags(self, flags, what) -> None:
        bits, nxt = self.split_flags(flags)
        if (flags & ~0x1F1F or not (bits == 0 or self.MIN_BITS <= bits <= self.MAX_BITS)
                or not (nxt == 0 or self.MIN_BITS <= nxt <= self.MAX_BITS)):
            raise WireFormatError(f"{what}: {self.name} flags {flags:#06x} name no width "
                                  "(bits 0-4: b in 2..16 or 0 = fp32; bits 8-12: next width "
                                  "0 or 2..16; other bits 0)")

    def decode_into(self, body, count, flags, out, *, segments=None, accumulate=False,
                    norms=None, what="message") -> None:
        """Decode (validating) into ``out`` (float32, ``count``); ``accumulate`` adds in
        float32 instead.  ``norms``: float32 scratch of one entry per tensor."""
        self.check_flags(flags, what)
        offsets = self._offsets if not segments and self.segments else None
        segments = segments or self.segments or [count]
        if sum(segments) != count:
            raise WireFormatError(f"{what}: the tensors ({sum(segments)} coordinates) do not "
                                  f"cover the message's count {count}")
        bits = flags & 0x1F
        expected = quantize.body_length(segments, bits)
        if body.size != expected:
            raise WireFormatError(f"{what}: body_length {body.size} does not match {self.name} "
                                  f"at {bits} bits for {len(segments)} tensors of {count} "
                                  f"coordinates ({expected} bytes)")
        if bits == 0:
            values = body.view("<f4")
            if accumulate:
                np.add(out, values, out=out)
            else:
                out[...] = values
            return
        nseg = len(segments)
        if norms is None or norms.size < nseg:
            norms = np.empty(nseg, dtype=np.float32)
        norms[:nseg].view(np.uint8)[...] = body[: 4 * nseg]
        if offsets is None:  # segments given per call: tools and tests, not the runtime
            offsets = segment_offsets(segments)
        code = quantize.dequantize(norms[:nseg], body[4 * nseg:], offsets, bits, out,
                                   accumulate)
        if code < 0:
            raise WireFormatError(f"{what}: {self.name} body is corrupt: "
                                  f"{quantize.ERRORS[code]}")

    def decode(self, body, count, flags=0, segments=None) -> np.ndarray:
        out = np.zeros(count, dtype=np.float32)
        self.decode_into(body, count, flags, out, segments=segments, what=self.name)
        return out

    def encode(self, values, padded_body) -> None:
        raise NotImplementedError("the width and the seed are per message: use encode_qsgd()")


def encode_qsgd(values, offsets, bits: int, key, padded_body, norms) -> int:
    """Quantize ``values`` at ``bits`` into ``padded_body``; return the body length.

    ``offsets`` (int64) delimit the tensors, ``key`` is
    :func:`hpcgrad.kernels.quantize.stream_key` of (seed, step, sender) and
    ``norms`` a float32 scratch of one entry per tensor.  Raises
    :class:`hpcgrad.errors.NonFiniteError` if a tensor's norm overflows float32.
    """
    from ..errors import NonFiniteError
    nseg = offsets.size - 1
    length = 4 * nseg + sum(quantize.section_lengths(np.diff(offsets), bits))
    if length > padded_body.size:  # the kernel does not bound-check: never write past the end
        raise WireFormatError(f"a {bits}-bit qsgd body of {length} bytes does not fit the "
                              f"{padded_body.size}-byte buffer")
    fields = padded_body[4 * nseg:]
    if quantize.quantize_pack(values, offsets, bits, key, norms, fields) < 0:
        biggest = float(np.finfo(np.float32).max)
        bad = [i for i in range(nseg) if not float(np.linalg.norm(
            values[offsets[i]:offsets[i + 1]].astype(np.float64))) <= biggest]
        raise NonFiniteError(f"the L2 norm of tensor {bad[0] if bad else '?'} is not finite in "
                             "float32; it cannot be quantized")
    padded_body[: 4 * nseg] = norms[:nseg].view(np.uint8)
    return length


class SparseValuesCodec(Codec):
    """Entry count and positions exactly as ``sparse-sign`` but without sign bits, zero
    bits to the next byte, then one value per entry (fp32 or fp16, little-endian), then,
    if flagged, a membership bitmap of one bit per entry (``docs/wire-format.md`` §4.9).

    ``flags``: bits 0-1 the position coding (0 raw, 1 bitmap, 2 Golomb-Rice), bit 4
    fp16 values (else fp32), bit 5 a membership bitmap follows the values, bits 8-13 the
    Rice parameter k (0 unless Rice; at most 56).  Other bits 0.
    """

    id, name = 8, "sparse-values"
    variable_length = True
    FP16, MARKED = 1 << 4, 1 << 5

    def max_body_length(self, count: int) -> int:
        # The encoder never codes positions longer than a bitmap; fp32 values; the bitmap.
        return (packed_length(sparse.sparse_sign_bits(count, count) - count) + 4 * count
                + packed_length(count))

    @staticmethod
    def flags(coding: int, k: int, fp16: bool = False, marked: bool = False) -> int:
        return (coding | (SparseValuesCodec.FP16 if fp16 else 0)
                | (SparseValuesCodec.MARKED if marked else 0) | (k << 8))

    @staticmethod
    def body_length(nnz: int, position_bits: int, fp16: bool = False,
                    marked: bool = False) -> int:
        """Bytes of a body of ``nnz`` entries whose positions take ``position_bits``."""
        head = packed_length(int(sparse._gamma_bits(nnz + 1)) + position_bits)
        return head + (2 if fp16 else 4) * nnz + (packed_length(nnz) if marked else 0)

    def check_flags(self, flags, what) -> None:
        coding, k = flags & 0x3, flags >> 8
        if (flags & ~0x3F33 or coding not in sparse.CODING_NAMES or k > 56
                or (coding != sparse.RICE and k)):
            raise WireFormatError(f"{what}: {self.name} flags {flags:#06x} are not valid "
                                  "(bits 0-1: 0 raw, 1 bitmap, 2 Rice; bit 4 fp16; bit 5 "
                                  "membership bitmap; bits 8-13 Rice k; other bits 0)")

    def decode_into(self, body, count, flags, positions, values, marked=None,
                    what="message") -> int:
        """Fill ``positions`` (int64), ``values`` (float32) and, if the body carries a
        membership bitmap, ``marked`` (uint8, one per entry); return the entry count.
        Raises WireFormatError on a bad body."""
        self.check_flags(flags, what)
        nnz, bitpos = sparse.decode_positions(body, count, flags & 0x3, flags >> 8,
                                              sparse.raw_width(count), positions)
        if nnz < 0:
            raise WireFormatError(f"{what}: {self.name} body is corrupt: {sparse.ERRORS[nnz]}")
        nnz, bitpos = int(nnz), int(bitpos)
        if nnz > values.size:
            raise WireFormatError(f"{what}: {self.name} body is corrupt: {sparse.ERRORS[-11]}")
        fp16, has_marks = bool(flags & self.FP16), bool(flags & self.MARKED)
        head = packed_length(bitpos)
        width = 2 if fp16 else 4
        expected = head + width * nnz + (packed_length(nnz) if has_marks else 0)
        if body.size != expected:
            raise WireFormatError(f"{what}: {self.name} body of {body.size} bytes; its "
                                  f"{nnz} entries need {expected}")
        if bitpos & 7 and int(body[bitpos >> 3]) >> (bitpos & 7):
            raise WireFormatError(f"{what}: {self.name} body is corrupt: {sparse.ERRORS[-6]}")
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

    def decode(self, body, count, flags=0) -> np.ndarray:
        positions = np.empty(count, dtype=np.int64)
        values = np.empty(count, dtype=np.float32)
        marked = np.empty(count, dtype=np.uint8)
        nnz = self.decode_into(body, count, flags, positions, values, marked, what=self.name)
        out = np.zeros(count, dtype=np.float32)
        out[positions[:nnz]] = values[:nnz]
        return out

    def encode(self, values, padded_body) -> None:
        raise NotImplementedError("variable-length: use encode_sparse_values()")


class ScaledSignCodec(Codec):
    """``scale * sign(v)``: a ``sign1`` plane, then the little-endian float32 scale
    (after the plane, so that the plane starts 8-byte aligned for the word kernels)."""

    id, name = 9, "scaled-sign"

    def body_length(self, count: int) -> int:
        return packed_length(count) + 4

    def scale(self, body, count: int) -> np.float32:
        start = packed_length(count)
        return body[start: start + 4].view("<f4")[0]

    def write_scale(self, padded_body, count: int, scale) -> None:
        start = packed_length(count)
        padded_body[start: start + 4].view("<f4")[0] = scale

    def check_scale(self, body, count: int, what: str) -> np.float32:
        scale = self.scale(body, count)
        if not (np.isfinite(scale) and scale >= 0):
            raise WireFormatError(f"{what}: {self.name} scale {scale} is not a finite "
                                  "number >= 0")
        return scale

    def encode(self, values, padded_body) -> None:
        """The scale is the mean magnitude, ``sum|v| / d`` (float64, in index order,
        rounded once)."""
        count = values.size
        generic.sign_pack(values, padded_body)
        self.write_scale(padded_body, count,
                         np.float32(generic.magnitude_sum(values) / max(count, 1)))

    def decode(self, body, count, flags=0) -> np.ndarray:
        scale = self.check_scale(body, count, self.name)
        _check_padding_bits(body, count, self.name)
        return generic.decode_signs(body, count) * scale


FP32 = DenseCodec(1, "fp32", np.float32)
FP16 = DenseCodec(2, "fp16", np.float16)
SIGN1 = SignCodec()
TERNARY2 = TernaryCodec()
SPARSE_SIGN = SparseSignCodec()
BASE3 = Base3Codec()
QSGD = QSGDCodec()
SPARSE_VALUES = SparseValuesCodec()
SCALED_SIGN = ScaledSignCodec()

CODECS = {codec.id: codec for codec in (FP32, FP16, SIGN1, TERNARY2, SPARSE_SIGN, BASE3, QSGD,
                                        SPARSE_VALUES, SCALED_SIGN)}


def encode_sparse_values(positions, values, nnz: int, count: int, padded_body,
                         fp16: bool = False, marked=None) -> tuple[int, int, int]:
    """Write a ``sparse-values`` body for the sorted ``positions[:nnz]`` and their
    ``values`` (float32; rounded to fp16 with ``fp16``) into ``padded_body`` (zeroed up
    to the body's length); ``marked`` (uint8 per entry, optional) adds the membership
    bitmap.  Positions take the shortest coding.  Returns ``(codec id, flags, length)``."""
    coding, k, bits = sparse.position_bits(positions, nnz, count, sparse.raw_width(count))
    has_marks = marked is not None
    length = SparseValuesCodec.body_length(nnz, int(bits), fp16, has_marks)
    if length > padded_body.size:  # the kernels do not bound-check: never write past the end
        raise WireFormatError(f"a {nnz}-entry sparse-values body of {length} bytes does not "
                              f"fit the {padded_body.size}-byte buffer")
    end = sparse.encode_positions(positions, nnz, count, coding, k, sparse.raw_width(count),
                                  padded_body)
    head = packed_length(int(end))
    width = 2 if fp16 else 4
    padded_body[head: head + width * nnz].view("<f2" if fp16 else "<f4")[...] = values[:nnz]
    if has_marks:
        plane = np.packbits(np.asarray(marked[:nnz], dtype=np.uint8) & 1, bitorder="little")
        padded_body[head + width * nnz: head + width * nnz + plane.size] = plane
    return SPARSE_VALUES.id, SPARSE_VALUES.flags(coding, k, fp16, has_marks), length


def encode_sparse_ternary(positions, negative, nnz: int, count: int, padded_body,
                          allow_base3: bool = False) -> tuple[int, int, int]:
    """Write the smallest body for a ternary vector given by its sorted non-zero
    ``positions[:nnz]`` and sign bits; return ``(codec id, flags, body_length)``.

    Candidates: ``sparse-sign`` with raw, bitmap or Rice positions (whichever is
    shortest), and with ``allow_base3`` the dense ``base3`` packing.  (2 bits per
    coordinate is never shorter than a bitmap plus sign bits, d + nnz <= 2d.)
    ``padded_body`` must be zeroed up to the capacity.
    """
    coding, k, bits = sparse.position_bits(positions, nnz, count, sparse.raw_width(count))
    length = packed_length(sparse.sparse_sign_bits(nnz, int(bits)))
    if length > padded_body.size:  # the kernels do not bound-check: never write past the end
        raise WireFormatError(f"a {nnz}-entry sparse-sign body of {length} bytes does not fit "
                              f"the {padded_body.size}-byte buffer")
    if allow_base3 and BASE3.body_length(count) < length:
        length = BASE3.body_length(count)
        sparse.encode_base3(positions, negative, nnz, padded_body)
        return BASE3.id, 0, length
    sparse.encode_sparse_sign(positions, negative, nnz, count, coding, k,
                              sparse.raw_width(count), padded_body)
    return SPARSE_SIGN.id, SPARSE_SIGN.flags(coding, k), length


def by_id(codec_id: int, *, what: str = "message") -> Codec:
    try:
        return CODECS[codec_id]
    except KeyError:
        raise WireFormatError(f"{what}: unknown codec id {codec_id} "
                              f"(known: {sorted(CODECS)})") from None


def decode_message(buffer, *, what: str = "message", segments=None):
    """Parse one whole message (header + body) into ``(header, float32 values)``.

    Checks the header, that the codec is known, that ``body_length`` matches the
    codec's length for ``count`` and that the buffer holds exactly that much.
    ``segments``: the run's tensor sizes, for ``qsgd`` (default: one tensor).
    """
    raw = np.frombuffer(buffer, dtype=np.uint8)
    header = wire.read_header(raw, what=what)
    codec = by_id(header.codec, what=what)
    if codec.variable_length:
        if header.body_length > codec.max_body_length(header.count):
            raise WireFormatError(f"{what}: body_length {header.body_length} exceeds the "
                                  f"largest {codec.name} body for count {header.count}")
    elif header.body_length != codec.body_length(header.count):
        raise WireFormatError(f"{what}: body_length {header.body_length} does not match "
                              f"{codec.name} with count {header.count} "
                              f"({codec.body_length(header.count)} bytes)")
    if raw.size != wire.HEADER_SIZE + header.body_length:
        raise WireFormatError(f"{what}: {raw.size} bytes, header says "
                              f"{wire.HEADER_SIZE + header.body_length}")
    codec.check_flags(header.flags, what)
    if getattr(codec, "needs_segments", False):
        return header, codec.decode(raw[wire.HEADER_SIZE:], header.count, header.flags,
                                    segments=segments)
    return header, codec.decode(raw[wire.HEADER_SIZE:], header.count, header.flags)
