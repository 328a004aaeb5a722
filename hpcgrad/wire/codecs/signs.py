"""Bit-plane bodies: one or two bits per coordinate (``docs/wire-format.md`` §4.3 to §4.5,
§4.10).  A plane packs coordinate ``i`` into bit ``i % 8`` of byte ``i // 8``; the bits after
the last coordinate are zero."""

from __future__ import annotations

import numpy as np

from ...errors import WireFormatError
from ...kernels import generic
from ...kernels.generic import packed_length
from ..header import round_up
from . import corruption
from .base import CODECS, EncodedBody, FixedLengthCodec, _check_padding_bits

__all__ = ["SignCodec", "ScaledSignCodec", "TernaryCodec", "SIGN1", "SCALED_SIGN",
           "TERNARY2"]


class SignCodec(FixedLengthCodec):
    """``sign1`` (id 3): one bit per coordinate, 1 = negative; decodes to +-1.

    Corruption: ``invert`` flips the ``count`` sign bits; ``random`` draws ``count`` random
    sign bits.  The last byte's padding bits stay as they were.
    """

    id, name = 3, "sign1"

    def body_length(self, count: int) -> int:
        return packed_length(count)

    def encode(self, values, padded_body) -> EncodedBody:
        """Bit ``i`` set where ``values[i] < 0`` (so 0, -0.0 and NaN send +1)."""
        generic.sign_pack(values, padded_body)
        return self.encoded(values.size)

    def decode(self, body, count, flags=0, segments=None) -> np.ndarray:
        _check_padding_bits(body, count, self.name)
        return generic.decode_signs(body, count)

    def corrupt(self, padded_body, count, flags, body_length, rng=None, *, segments=None,
                what="message") -> None:
        corruption.sign_plane(padded_body[: packed_length(count)], count, rng)


class ScaledSignCodec(SignCodec):
    """``scaled-sign`` (id 9): ``scale * sign(v)``: a ``sign1`` plane, then the
    little-endian float32 scale (after the plane, so that the plane starts 8-byte aligned
    for the word kernels).  The scale must be finite and >= 0.

    Corruption: as ``sign1`` on the plane; the scale is kept.
    """

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

    def encode(self, values, padded_body) -> EncodedBody:
        """The scale is the mean magnitude, ``sum|v| / d`` (float64, in index order,
        rounded once)."""
        count = values.size
        generic.sign_pack(values, padded_body)
        self.write_scale(padded_body, count,
                         np.float32(generic.magnitude_sum(values) / max(count, 1)))
        return self.encoded(count)

    def decode(self, body, count, flags=0, segments=None) -> np.ndarray:
        scale = self.check_scale(body, count, self.name)
        _check_padding_bits(body, count, self.name)
        return generic.decode_signs(body, count) * scale


class TernaryCodec(FixedLengthCodec):
    """``ternary2`` (id 4): the non-zero plane padded to 8 bytes, then the negative plane;
    decodes to -1, 0, +1.  A coordinate negative but not non-zero is refused, and so is a
    non-zero byte between the planes.

    Corruption: ``invert`` flips the negative bit where non-zero (zeros stay zero);
    ``random`` draws a random sign where non-zero (the same support).
    """

    id, name = 4, "ternary2"

    @staticmethod
    def plane_stride(count: int) -> int:
        """Offset of the negative plane: the non-zero plane padded to 8 bytes."""
        return round_up(packed_length(count))

    def body_length(self, count: int) -> int:
        return self.plane_stride(count) + packed_length(count)

    def planes(self, padded_body, count):
        """The (non-zero, negative) planes of a body, as views."""
        stride = self.plane_stride(count)
        return padded_body[:stride], padded_body[stride:]

    def encode(self, values, padded_body) -> EncodedBody:
        """``sign(v)``: non-zero where ``v != 0``, negative where ``v < 0``."""
        nonzero, negative = self.planes(padded_body, values.size)
        generic.ternary_pack(values, nonzero, negative)
        return self.encoded(values.size)

    def decode(self, body, count, flags=0, segments=None) -> np.ndarray:
        nonzero, negative = self.planes(body, count)
        nb = packed_length(count)
        _check_padding_bits(nonzero, count, self.name)
        _check_padding_bits(negative, count, self.name)
        if np.any(nonzero[nb:]):
            raise WireFormatError(f"{self.name}: padding between the planes is not zero")
        if np.any(negative[:nb] & ~nonzero[:nb]):
            raise WireFormatError(f"{self.name}: a coordinate is negative but not non-zero")
        return generic.decode_ternary(nonzero, negative, count)

    def corrupt(self, padded_body, count, flags, body_length, rng=None, *, segments=None,
                what="message") -> None:
        nonzero, negative = self.planes(padded_body[:body_length], count)
        nb = packed_length(count)
        corruption.signs_where(negative[:nb], nonzero[:nb], rng)


SIGN1 = CODECS[SignCodec.id]
SCALED_SIGN = CODECS[ScaledSignCodec.id]
TERNARY2 = CODECS[TernaryCodec.id]
