"""Stochastically quantized bodies (``docs/wire-format.md`` §4.8): QSGD and DQ-SGD."""

from __future__ import annotations

import numpy as np

from ...errors import NonFiniteError, WireFormatError
from ...kernels import quantize
from . import corruption
from .base import CODECS, Codec, EncodedBody, segment_offsets

__all__ = ["QSGDCodec", "QSGD", "encode_qsgd"]


class QSGDCodec(Codec):
    """``qsgd`` (id 7): per tensor a float32 L2 norm, then per tensor a byte-aligned
    section of ``b``-bit fields, LSB first, bits ``0..b-2`` the level and bit ``b-1`` the
    sign.

    ``flags``: bits 0-4 the width ``b`` (2..16), or 0 for an unquantized body of
    ``count`` fp32 values; bits 8-12 ``next``: 0, or the width every worker
    uses at the next step (2..16; only DQ-SGD's downlink sets it).  Other bits 0.

    The tensor sizes (``segments``) are a property of the run, like ``count``:
    an instance made for a run knows them and its widest body; the registered
    instance decodes with the segments it is given (default: one tensor).

    Corruption: ``invert`` flips the sign bit of every non-zero level; ``random`` draws a
    random sign bit for every non-zero level; norms and levels stay (a body with ``b = 0``
    is corrupted as ``fp32``).
    """

    id, name = 7, "qsgd"
    variable_length = True
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

    def encode(self, values, padded_body, *, bits: int | None = None, key=0,
               next_bits: int = 0, segments=None) -> EncodedBody:
        """Quantize ``values`` at ``bits`` (default: this instance's ``max_bits``; 0 writes
        them as fp32) with the coins of stream ``key`` (:func:`quantize.stream_key` of
        seed, step, sender; default 0), tensor by tensor (``segments``: default this
        instance's, else one tensor).  ``next_bits`` goes into the flags (DQ-SGD)."""
        bits = self.max_bits if bits is None else int(bits)
        segments = segments or self.segments or [values.size]
        if sum(segments) != values.size:
            raise WireFormatError(f"{self.name}: tensors of {sum(segments)} coordinates for "
                                  f"{values.size} values")
        self.check_flags(self.flags(bits, next_bits), self.name)
        if bits == 0:
            length = 4 * values.size
            if length > padded_body.size:
                raise WireFormatError(f"a {length}-byte fp32 qsgd body does not fit the "
                                      f"{padded_body.size}-byte buffer")
            padded_body[:length].view("<f4")[...] = values
        else:
            length = encode_qsgd(values, segment_offsets(segments), bits, np.uint64(key),
                                 padded_body, np.empty(len(segments), dtype=np.float32))
        return EncodedBody(self.id, self.flags(bits, next_bits), length)

    def check_body(self, length, count, flags, *, segments=None, what="message"):
        """The checks of a body's framing before its fields are read: the flags, the
        tensors against ``count``, ``length`` against the width's.  Returns ``(b,
        segments)``."""
        self.check_flags(flags, what)
        segments = segments or self.segments or [count]
        if sum(segments) != count:
            raise WireFormatError(f"{what}: the tensors ({sum(segments)} coordinates) do not "
                                  f"cover the message's count {count}")
        bits = flags & 0x1F
        expected = quantize.body_length(segments, bits)
        if length != expected:
            raise WireFormatError(f"{what}: body_length {length} does not match {self.name} "
                                  f"at {bits} bits for {len(segments)} tensors of {count} "
                                  f"coordinates ({expected} bytes)")
        return bits, segments

    def decode_into(self, body, count, flags, out, *, segments=None, accumulate=False,
                    norms=None, what="message") -> None:
        """Decode (validating) into ``out`` (float32, ``count``); ``accumulate`` adds in
        float32 instead.  ``norms``: float32 scratch of one entry per tensor."""
        offsets = self._offsets if not segments and self.segments else None
        bits, segments = self.check_body(body.size, count, flags, segments=segments, what=what)
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

    def corrupt(self, padded_body, count, flags, body_length, rng=None, *, segments=None,
                what="message") -> None:
        body = padded_body[:body_length]
        bits = flags & 0x1F
        if bits == 0:  # an unquantized body: count fp32 values
            corruption.ieee_values(body, np.dtype("<f4"), rng)
            return
        segments = segments or self.segments or [count]
        start = 4 * len(segments)  # the norms stay
        for n, length in zip(segments, quantize.section_lengths(segments, bits)):
            section = body[start: start + length]
            plane = np.unpackbits(section, bitorder="little")
            fields = plane[: bits * int(n)].reshape(int(n), bits)
            nonzero = fields[:, : bits - 1].any(axis=1).astype(np.uint8)
            if rng is None:
                fields[:, bits - 1] ^= nonzero
            else:
                fields[:, bits - 1] = corruption.random_bits(rng, int(n)) & nonzero
            section[...] = np.packbits(plane, bitorder="little")
            start += length


QSGD = CODECS[QSGDCodec.id]


def encode_qsgd(values, offsets, bits: int, key, padded_body, norms) -> int:
    """Quantize ``values`` at ``bits`` into ``padded_body``; return the body length.

    The allocation-free entry point of the runtime.  ``offsets`` (int64) delimit the
    tensors, ``key`` is :func:`hpcgrad.kernels.quantize.stream_key` of (seed, step, sender)
    and ``norms`` a float32 scratch of one entry per tensor.  Raises
    :class:`hpcgrad.errors.NonFiniteError` if a tensor's norm overflows float32.
    """
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
