"""What every codec is, and the registry of codec ids.

A codec is one class: its id in the header, its layout (the body's length for ``count``
coordinates, the longest body, the meaning of ``flags``), its encoder from dense values,
its validating decoder and, if an adversary may attack it, its :meth:`corrupt`.  Defining a
subclass with an ``id`` registers one instance of it in :data:`CODECS`; the package imports
every module it holds, so a new codec is one new module.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ...errors import WireFormatError
from ...kernels.generic import packed_length
from ..header import HEADER_SIZE, read_header

#: The registered codecs by id: one instance of each codec class, in the order defined.
CODECS: dict = {}


class EncodedBody(NamedTuple):
    """What an encoder wrote: the header's ``codec``, ``flags`` and ``body_length`` fields
    (``MessageBuffer.write(*encoded)`` declares them and returns the header sent)."""

    codec: int
    flags: int
    length: int


def segment_offsets(segments) -> np.ndarray:
    """Start offsets of the tensors in the flat vector, plus the end: (L + 1,) int64."""
    return np.concatenate([[0], np.cumsum(segments, dtype=np.int64)]).astype(np.int64)


def _check_padding_bits(plane: np.ndarray, count: int, what: str) -> None:
    """A packed plane of ``count`` bits: the bits after the last one must be zero."""
    if count % 8 and plane.size and int(plane[packed_length(count) - 1]) >> (count % 8):
        raise WireFormatError(f"{what}: padding bits after element {count - 1} are set")


class Codec:
    """A body layout: its id in the header, its length, encode and decode.

    Subclasses set ``id`` (1..255) and ``name``, and define :meth:`max_body_length`,
    :meth:`encode` and :meth:`decode`; a fixed-length codec (:class:`FixedLengthCodec`)
    defines :meth:`body_length` instead of :meth:`max_body_length`.  A subclass without an
    ``id`` of its own is a family's common base and is not registered.

    **Corruption** (``--adversaries``, :mod:`hpcgrad.training.attacks`) is optional: a codec
    an adversary may attack defines::

        corrupt(padded_body, count, flags, body_length, rng=None, *, segments=None,
                what="message") -> None

    which rewrites the body in place: ``rng`` None inverts what the message says (and is
    its own inverse: applied twice it restores the body bit for bit), a
    ``numpy.random.Generator`` replaces it by noise drawn from it.  Either way the body
    stays a valid one of the same length and ``flags``; bits beyond the coordinates
    (padding, norms, membership bitmaps) stay as they were.  ``segments`` are the run's
    tensor sizes (``qsgd``); ``what`` names the message in a WireFormatError (a body
    that is already corrupt).  :func:`corruptible` says whether a codec has it.
    """

    id: int
    name: str
    #: Whether the length depends on the values or the flags, not only on ``count``:
    #: a message checks ``body_length <= max_body_length(count)``, the decoder the rest.
    variable_length = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "id" not in vars(cls):
            return
        if not (isinstance(cls.id, int) and 1 <= cls.id <= 255):
            raise TypeError(f"codec {cls.__qualname__}: id {cls.id!r} is not an integer in "
                            "1..255 (the header's codec byte; 0 is never assigned)")
        taken = CODECS.get(cls.id)
        if taken is not None:
            raise TypeError(f"codec {cls.__qualname__} ({cls.name}): id {cls.id} is taken by "
                            f"{type(taken).__qualname__} ({taken.name}); ids are never reused")
        CODECS[cls.id] = cls()

    def __repr__(self) -> str:
        return f"<codec {self.id} {self.name}>"

    def check_flags(self, flags: int, what: str) -> None:
        """Raise WireFormatError unless ``flags`` is a valid value for this codec."""
        if flags:
            raise WireFormatError(f"{what}: flags {flags:#x} set; {self.name} defines none")

    def max_body_length(self, count: int) -> int:
        """The longest body for ``count`` coordinates (the buffer capacity)."""
        raise NotImplementedError

    def encode(self, values: np.ndarray, padded_body: np.ndarray, **options) -> EncodedBody:
        """Write the body for the dense float32 ``values`` into ``padded_body`` (zeroed,
        8-byte padded, at least :meth:`max_body_length` long); return what was written.
        ``options``: a codec's own, all keyword with defaults (see each codec)."""
        raise NotImplementedError

    def decode(self, body: np.ndarray, count: int, flags: int = 0,
               segments=None) -> np.ndarray:
        """Values (float32) of a body whose length the header check accepted, validating;
        ``segments``: the run's tensor sizes, for codecs whose layout has tensors."""
        raise NotImplementedError


class FixedLengthCodec(Codec):
    """A codec whose body length depends on ``count`` only (and ``flags`` is always 0)."""

    def body_length(self, count: int) -> int:
        raise NotImplementedError

    def max_body_length(self, count: int) -> int:
        return self.body_length(count)

    def encoded(self, count: int) -> EncodedBody:
        return EncodedBody(self.id, 0, self.body_length(count))


def corruptible(codec: Codec) -> bool:
    """Whether an adversary can corrupt ``codec``'s bodies (it defines ``corrupt``)."""
    return callable(getattr(codec, "corrupt", None))


def by_id(codec_id: int, *, what: str = "message") -> Codec:
    """The registered codec of id ``codec_id``; WireFormatError naming ``what`` if none."""
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
    header = read_header(raw, what=what)
    codec = by_id(header.codec, what=what)
    if codec.variable_length:
        if header.body_length > codec.max_body_length(header.count):
            raise WireFormatError(f"{what}: body_length {header.body_length} exceeds the "
                                  f"largest {codec.name} body for count {header.count}")
    elif header.body_length != codec.body_length(header.count):
        raise WireFormatError(f"{what}: body_length {header.body_length} does not match "
                              f"{codec.name} with count {header.count} "
                              f"({codec.body_length(header.count)} bytes)")
    if raw.size != HEADER_SIZE + header.body_length:
        raise WireFormatError(f"{what}: {raw.size} bytes, header says "
                              f"{HEADER_SIZE + header.body_length}")
    codec.check_flags(header.flags, what)
    return header, codec.decode(raw[HEADER_SIZE:], header.count, header.flags,
                                segments=segments)
