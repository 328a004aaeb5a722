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
=====  ==========  ==========================================================

See ``docs/wire-format.md`` for the bit-level description.
"""

from __future__ import annotations

import numpy as np

from . import wire
from .errors import WireFormatError
from .kernels import generic
from .kernels.generic import packed_length


def _check_padding_bits(plane: np.ndarray, count: int, what: str) -> None:
    if count % 8 and plane.size and int(plane[packed_length(count) - 1]) >> (count % 8):
        raise WireFormatError(f"{what}: padding bits after element {count - 1} are set")


class Codec:
    """A body layout: its id in the header, its length, encode and decode."""

    id: int
    name: str

    def body_length(self, count: int) -> int:
        raise NotImplementedError

    def max_body_length(self, count: int) -> int:
        """The longest body for ``count`` coordinates (the buffer capacity)."""
        return self.body_length(count)

    def encode(self, values: np.ndarray, padded_body: np.ndarray) -> None:
        """Write the body for ``values`` into ``padded_body`` (zeroed, 8-byte padded)."""
        raise NotImplementedError

    def decode(self, body: np.ndarray, count: int) -> np.ndarray:
        """Values (float32) of a body that was checked to be ``body_length(count)`` long."""
        raise NotImplementedError


class DenseCodec(Codec):
    def __init__(self, codec_id: int, name: str, dtype):
        self.id, self.name, self.dtype = codec_id, name, np.dtype(dtype).newbyteorder("<")

    def body_length(self, count: int) -> int:
        return count * self.dtype.itemsize

    def encode(self, values, padded_body) -> None:
        n = values.size
        padded_body[: n * self.dtype.itemsize].view(self.dtype)[...] = values

    def decode(self, body, count) -> np.ndarray:
        return body.view(self.dtype).astype(np.float32)


class SignCodec(Codec):
    id, name = 3, "sign1"

    def body_length(self, count: int) -> int:
        return packed_length(count)

    def encode(self, values, padded_body) -> None:
        generic.sign_pack(values, padded_body)

    def decode(self, body, count) -> np.ndarray:
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

    def decode(self, body, count) -> np.ndarray:
        nonzero, negative = self.planes(body, count)
        nb = packed_length(count)
        _check_padding_bits(nonzero, count, self.name)
        _check_padding_bits(negative, count, self.name)
        if np.any(nonzero[nb:]):
            raise WireFormatError(f"{self.name}: padding between the planes is not zero")
        if np.any(negative[:nb] & ~nonzero[:nb]):
            raise WireFormatError(f"{self.name}: a coordinate is negative but not non-zero")
        return generic.decode_ternary(nonzero, negative, count)


FP32 = DenseCodec(1, "fp32", np.float32)
FP16 = DenseCodec(2, "fp16", np.float16)
SIGN1 = SignCodec()
TERNARY2 = TernaryCodec()

CODECS = {codec.id: codec for codec in (FP32, FP16, SIGN1, TERNARY2)}


def by_id(codec_id: int, *, what: str = "message") -> Codec:
    try:
        return CODECS[codec_id]
    except KeyError:
        raise WireFormatError(f"{what}: unknown codec id {codec_id} "
                              f"(known: {sorted(CODECS)})") from None


def decode_message(buffer, *, what: str = "message"):
    """Parse one whole message (header + body) into ``(header, float32 values)``.

    Checks the header, that the codec is known, that ``body_length`` matches the
    codec's length for ``count`` and that the buffer holds exactly that much.
    """
    raw = np.frombuffer(buffer, dtype=np.uint8)
    header = wire.read_header(raw, what=what)
    codec = by_id(header.codec, what=what)
    expected = codec.body_length(header.count)
    if header.body_length != expected:
        raise WireFormatError(f"{what}: body_length {header.body_length} does not match "
                              f"{codec.name} with count {header.count} ({expected} bytes)")
    if raw.size != wire.HEADER_SIZE + expected:
        raise WireFormatError(f"{what}: {raw.size} bytes, header says "
                              f"{wire.HEADER_SIZE + expected}")
    if header.flags:
        raise WireFormatError(f"{what}: flags {header.flags:#x} set; {codec.name} defines none")
    return header, codec.decode(raw[wire.HEADER_SIZE:], header.count)
