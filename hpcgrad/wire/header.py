"""Wire format v1: the fixed message header, and preallocated message buffers.

Every message hpcgrad puts on the wire -- a worker's uplink, the server's
downlink -- is one contiguous byte buffer: a 32-byte header followed by a
codec-specific body (``docs/wire-format.md`` is the normative description).

Header, little-endian, 32 bytes::

    offset size field        meaning
         0    4 magic        b"HPCG"
         4    1 version      1
         5    1 codec        body layout id (hpcgrad.wire.codecs)
         6    2 flags        codec-specific, 0 for every v1 codec
         8    8 count        number of coordinates the message describes (d)
        16    8 body_length  bytes after the header
        24    4 step         training iteration the message belongs to
        28    2 sender       MPI rank of the sender in the job's world communicator
        30    2 reserved     0

Buffers are allocated once and padded to a multiple of 8 bytes so that
bodies can be read as 64-bit words; the padding is never sent.
"""

from __future__ import annotations

import struct
import sys
from dataclasses import dataclass, replace

import numpy as np

from ..errors import WireFormatError

if sys.byteorder != "little":  # the body kernels view bytes as little-endian words
    raise ImportError("hpcgrad's wire kernels need a little-endian host")

MAGIC = b"HPCG"
VERSION = 1
HEADER = struct.Struct("<4sBBHQQIHH")
HEADER_SIZE = HEADER.size
WORD = 8

assert HEADER_SIZE == 32
_STEP = struct.Struct("<I")
_STEP_OFFSET = 24
_CODEC_FLAGS = struct.Struct("<BH")
_CODEC_OFFSET = 5
_BODY_LENGTH = struct.Struct("<Q")
_BODY_LENGTH_OFFSET = 16


def round_up(n: int, multiple: int = WORD) -> int:
    return -(-n // multiple) * multiple


@dataclass(frozen=True)
class Header:
    codec: int
    count: int
    body_length: int
    step: int
    sender: int
    flags: int = 0

    def pack_into(self, buffer, offset: int = 0) -> None:
        HEADER.pack_into(buffer, offset, MAGIC, VERSION, self.codec, self.flags,
                         self.count, self.body_length, self.step, self.sender, 0)


def read_header(buffer, offset: int = 0, *, what: str = "message") -> Header:
    """Parse and sanity-check the header at ``buffer[offset:]``.

    Raises :class:`WireFormatError` naming ``what`` when the buffer is too short,
    the magic or version is wrong, or the reserved field is not zero.
    """
    view = memoryview(buffer).cast("B")
    if len(view) - offset < HEADER_SIZE:
        raise WireFormatError(f"{what}: {len(view) - offset} bytes, shorter than the "
                              f"{HEADER_SIZE}-byte header")
    magic, version, codec, flags, count, body_length, step, sender, reserved = \
        HEADER.unpack_from(view, offset)
    if magic != MAGIC:
        raise WireFormatError(f"{what}: bad magic {magic!r} (expected {MAGIC!r}): "
                              "not an hpcgrad message, or a corrupted one")
    if version != VERSION:
        raise WireFormatError(f"{what}: wire format version {version}, this hpcgrad "
                              f"reads version {VERSION}")
    if reserved != 0:
        raise WireFormatError(f"{what}: reserved header field is {reserved}, must be 0")
    return Header(codec=codec, count=count, body_length=body_length, step=step,
                  sender=sender, flags=flags)


def expect_header(buffer, expected: Header, *, what: str, offset: int = 0) -> Header:
    """Check the header at ``buffer[offset:]`` against the one the receiver expects; return it."""
    got = read_header(buffer, offset, what=what)
    for field in ("codec", "flags", "count", "body_length", "step", "sender"):
        have, want = getattr(got, field), getattr(expected, field)
        if have != want:
            raise WireFormatError(f"{what}: header {field} is {have}, expected {want}")
    return got


class MessageBuffer:
    """One preallocated message: header, body, zero padding to 8 bytes.

    ``wire`` is exactly what goes to MPI; ``body`` is where a codec writes; ``header``
    is the header ``wire`` starts with (what is sent, or what was received), and
    ``capacity`` the longest body the buffer holds.

    The sender's protocol, once per step: :meth:`begin` (the step field; a
    ``variable``-length message also gets the previous step's body zeroed, because the
    sparse encoders OR bits into a zeroed body), the algorithm writes the body into
    ``padded_body``, then :meth:`write` declares codec, flags and length and returns
    the header that is sent.  A fixed-length message may skip :meth:`write`: its
    header, declared at construction, does not change.
    """

    def __init__(self, header: Header, zeros=np.zeros, *, variable: bool = False):
        self.header = header
        self.capacity = header.body_length
        self.variable = variable
        self.length = HEADER_SIZE + header.body_length
        self.raw = zeros(round_up(self.length), dtype=np.uint8)
        self.wire = self.raw[: self.length]
        self.body = self.raw[HEADER_SIZE: self.length]
        #: The body followed by its zero padding: what the kernels write into,
        #: so that they may store whole 64-bit words.
        self.padded_body = self.raw[HEADER_SIZE:]
        header.pack_into(self.raw)

    def stamp(self, step: int) -> None:
        """Set the header's step field for iteration ``step``."""
        _STEP.pack_into(self.raw, _STEP_OFFSET, step)
        self.header = replace(self.header, step=step)

    def begin(self, step: int) -> None:
        """Start the message of iteration ``step``: stamp it, and for a variable-length
        message zero what the previous step's body occupied."""
        if self.variable:
            self.padded_body[: self.header.body_length] = 0
        self.stamp(step)

    def write(self, codec: int, flags: int, body_length: int) -> Header:
        """Declare the body just written: ``body_length`` bytes of codec ``codec`` with
        ``flags``.  Rewrites those header fields (``wire`` and ``body`` then cover exactly
        the bytes that go to MPI) and returns the header that is sent."""
        if not 0 <= body_length <= self.capacity:
            raise WireFormatError(f"body of {body_length} bytes exceeds the message's "
                                  f"capacity of {self.capacity}")
        _CODEC_FLAGS.pack_into(self.raw, _CODEC_OFFSET, codec, flags)
        _BODY_LENGTH.pack_into(self.raw, _BODY_LENGTH_OFFSET, body_length)
        self._cover(body_length)
        self.header = replace(self.header, codec=codec, flags=flags, body_length=body_length)
        return self.header

    def receive(self, header: Header) -> None:
        """A receiver's buffer: ``header`` was just parsed (and checked) off ``raw``;
        ``header``, ``wire`` and ``body`` now describe that message.  Bytes a longer body
        of an earlier message left past this one's end are zeroed, so that ``padded_body``
        is this body and zero padding, as on the sender."""
        if header.body_length > self.capacity:
            raise WireFormatError(f"body of {header.body_length} bytes exceeds the message's "
                                  f"capacity of {self.capacity}")
        if header.body_length < self.header.body_length:
            self.padded_body[header.body_length: self.header.body_length] = 0
        self._cover(header.body_length)
        self.header = header

    def _cover(self, body_length: int) -> None:
        self.length = HEADER_SIZE + body_length
        self.wire = self.raw[: self.length]
        self.body = self.raw[HEADER_SIZE: self.length]
