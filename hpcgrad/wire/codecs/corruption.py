"""The bit-level edits the codecs' ``corrupt`` methods are made of.

Each edit either inverts (``rng`` None: its own inverse) or randomizes (draws from the
``numpy.random.Generator`` it is given, always in the same order, so that a seeded attack
repeats exactly) one part of a body, and leaves every other bit as it was.  The plane and
value edits work on NumPy or CuPy bodies (a device twin of the message); the bit-range edit
and the codecs that parse a body first work on host bodies.
"""

from __future__ import annotations

import numpy as np

from ...kernels import array_module
from ...kernels.generic import packed_length


def random_bits(rng, n: int) -> np.ndarray:
    """``n`` random bits (uint8 0/1): the first ``n`` bits of ``ceil(n/8)`` random bytes."""
    return np.unpackbits(np.frombuffer(rng.bytes(packed_length(n)), np.uint8),
                         count=n, bitorder="little")


def sign_plane(plane, count: int, rng) -> None:
    """Flip (``rng`` None) or randomize the first ``count`` bits of a packed plane."""
    xp = array_module(plane)
    full, rest = divmod(count, 8)
    if rng is None:
        plane[:full] ^= np.uint8(0xFF)
        if rest:
            plane[full: full + 1] ^= np.uint8((1 << rest) - 1)
        return
    noise = np.frombuffer(rng.bytes(packed_length(count)), np.uint8).copy()
    if rest:  # the last byte's padding bits stay as they were
        keep = np.uint8(0xFF ^ ((1 << rest) - 1))
        noise[full] = (noise[full] & ~keep) | (int(plane[full]) & keep)
    plane[...] = xp.asarray(noise)


def signs_where(negative, nonzero, rng) -> None:
    """Flip (``rng`` None) or randomize the bits of ``negative`` where ``nonzero`` is set."""
    xp = array_module(negative)
    if rng is None:
        negative ^= nonzero
        return
    noise = xp.asarray(np.frombuffer(rng.bytes(negative.size), np.uint8))
    negative ^= (noise ^ negative) & nonzero


def ieee_values(body, dtype, rng) -> None:
    """Negate (``rng`` None: flip each IEEE sign bit, zeros and NaNs included) the values
    of ``body`` (bytes), or replace them by Gaussian values of the same L2 norm."""
    xp = array_module(body)
    if rng is None:
        sign = np.uint32(0x80000000) if dtype.itemsize == 4 else np.uint16(0x8000)
        words = body.view(sign.dtype)
        words ^= sign
        return
    values = body.view(dtype)
    norm = float(xp.sqrt(xp.sum(values.astype(xp.float64) ** 2)))
    noise = rng.standard_normal(values.size)
    scale = np.linalg.norm(noise)
    noise *= norm / scale if scale > 0 else 0.0
    values[...] = xp.asarray(noise.astype(dtype))


def bit_range(body, start: int, n: int, rng) -> None:
    """Flip (``rng`` None) or randomize bits ``start .. start+n-1`` of ``body`` (host)."""
    if n == 0:
        return
    first, last = start >> 3, (start + n - 1) >> 3
    chunk = body[first: last + 1]
    plane = np.unpackbits(chunk, bitorder="little")
    lo = start - 8 * first
    if rng is None:
        plane[lo: lo + n] ^= 1
    else:
        plane[lo: lo + n] = random_bits(rng, n)
    chunk[...] = np.packbits(plane, bitorder="little")
