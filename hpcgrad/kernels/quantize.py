"""Compiled CPU kernels of the ``qsgd`` codec (QSGD and DQ-SGD).

Layout (``docs/wire-format.md`` §4.8): per tensor (segment of the flat
vector) one float32 L2 norm, then per tensor a byte-aligned LSB-first
bitstream of ``b``-bit fields, one per coordinate: bits ``0 .. b-2`` the
level ``l`` (LSB first), bit ``b-1`` the sign (1 = negative, only set when
``l > 0``).  ``s = 2**(b-1) - 1``; a field decodes to ``sign * l * (r / s)``
in float32.

Quantizer: ``l = floor(s*|v|/r) + [u < frac]`` with ``r`` the tensor's norm
rounded *up* to float32 (so ``s*|v|/r <= s``) and ``u`` uniform in [0, 1)
from a counter-based generator: the ``i``-th number (``i`` the coordinate's
flat index) of the SplitMix64 sequence seeded with
``key = mix(mix(mix(seed + G) ^ step + G) ^ rank + G)``.  Nothing is drawn
from a stateful generator, so a message depends only on (values, seed,
step, rank) and runs repeat exactly.

Every function is allocation-free: outputs go to caller-provided arrays.
Decoders return a negative error code instead of raising (Numba); the codec
in :mod:`hpcgrad.wire.codecs` turns codes into messages with :data:`ERRORS`.
"""

from __future__ import annotations

import math

import numpy as np
from .jit import njit

_jit = njit(cache=True, nogil=True, boundscheck=False)

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_TWO_M53 = 1.0 / 9007199254740992.0  # 2**-53

ERRORS = {
    -1: "a tensor's norm is not finite",
    -2: "a tensor's norm is negative",
    -3: "a zero level has its sign bit set",
    -4: "padding bits after a tensor's last field are not zero",
}


def levels(bits: int) -> int:
    """``s = 2**(b-1) - 1``: the largest level of a ``b``-bit field."""
    return (1 << (bits - 1)) - 1


def section_lengths(segments, bits: int) -> list[int]:
    """Bytes of each tensor's field section: ``ceil(b * d_l / 8)``."""
    return [-(-bits * int(n) // 8) for n in segments]


def body_length(segments, bits: int) -> int:
    """``4 L + sum_l ceil(b d_l / 8)`` (``bits = 0``: ``4 d``, the fp32 form)."""
    if bits == 0:
        return 4 * sum(int(n) for n in segments)
    return 4 * len(segments) + sum(section_lengths(segments, bits))


# ------------------------------------------------------------------ random --

@_jit
def _mix(z):
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


@_jit
def _stream_key(seed, step, rank):
    k = _mix(seed + GOLDEN)
    k = _mix((k ^ step) + GOLDEN)
    return _mix((k ^ rank) + GOLDEN)


def stream_key(seed: int, step: int, rank: int) -> np.uint64:
    """The SplitMix64 seed of one message's coins (all arguments < 2**64)."""
    return np.uint64(_stream_key(np.uint64(seed), np.uint64(step), np.uint64(rank)))


@_jit
def uniform(key, index):
    """The ``index``-th (0-based) number of SplitMix64(key), as a 53-bit fraction in [0, 1)."""
    z = _mix(key + (np.uint64(index) + np.uint64(1)) * GOLDEN)
    return np.float64(z >> np.uint64(11)) * _TWO_M53


# ---------------------------------------------------------------- encoder --

@_jit
def norm_rounded_up(values, lo, hi):
    """The L2 norm of ``values[lo:hi]``, summed in float64, as the float32 at or above it
    (rounded up so ``|v_i| <= r`` and every level is at most ``s``); not finite when the
    float32 overflows or a value is NaN or infinite."""
    acc2 = 0.0
    for i in range(lo, hi):
        x = np.float64(values[i])
        acc2 += x * x
    r64 = math.sqrt(acc2)
    r = np.float32(r64)
    if np.isfinite(r) and np.float64(r) < r64:
        r = np.nextafter(r, np.float32(np.inf))
    return r


@_jit
def quantize_pack(values, offsets, bits, key, norms, fields):
    """Quantize ``values`` (float32, the flat vector) tensor by tensor and pack.

    ``offsets`` (int64, L + 1) delimit the tensors; ``norms`` (float32, L)
    receives each tensor's norm, ``fields`` (uint8) the field sections, one
    after the other, each ``ceil(b d_l / 8)`` bytes (written whole: no need to
    zero it first).  Returns 0, or -1 if a norm is not finite in float32.
    """
    s = (1 << (bits - 1)) - 1
    sf = np.float64(s)
    sign_bit = np.uint64(1) << np.uint64(bits - 1)
    ub = np.uint64(bits)
    out = 0
    for seg in range(offsets.size - 1):
        lo, hi = offsets[seg], offsets[seg + 1]
        r = norm_rounded_up(values, lo, hi)
        if not np.isfinite(r):
            return -1
        norms[seg] = r
        rd = np.float64(r)
        acc = np.uint64(0)
        nbits = np.uint64(0)
        for i in range(lo, hi):
            v = np.float64(values[i])
            field = np.uint64(0)
            if rd > 0.0 and v != 0.0:
                x = sf * abs(v) / rd
                level = math.floor(x)
                if level >= sf:
                    level = sf
                elif uniform(key, i) < x - level:
                    level += 1.0
                if level > 0.0:
                    field = np.uint64(level)
                    if v < 0.0:
                        field |= sign_bit
            acc |= field << nbits
            nbits += ub
            while nbits >= np.uint64(8):
                fields[out] = np.uint8(acc & np.uint64(0xFF))
                out += 1
                acc >>= np.uint64(8)
                nbits -= np.uint64(8)
        if nbits > np.uint64(0):
            fields[out] = np.uint8(acc & np.uint64(0xFF))
            out += 1
    return 0


# ---------------------------------------------------------------- decoder --

@_jit
def dequantize(norms, fields, offsets, bits, out, accumulate):
    """Decode every tensor's fields into ``out`` (float32), validating.

    ``accumulate``: ``out[i] = out[i] + value`` (float32), else ``out[i] =
    value``.  ``value = ±(float32(l) * (r / float32(s)))`` in float32.
    Returns 0 or a negative code of :data:`ERRORS` (``out`` is then partly
    written).
    """
    s = (1 << (bits - 1)) - 1
    level_mask = (np.uint64(1) << np.uint64(bits - 1)) - np.uint64(1)
    sign_shift = np.uint64(bits - 1)
    field_mask = (np.uint64(1) << np.uint64(bits)) - np.uint64(1)
    ub = np.uint64(bits)
    pos = 0
    for seg in range(offsets.size - 1):
        r = norms[seg]
        if not np.isfinite(r):
            return -1
        if r < np.float32(0) or (r == np.float32(0) and np.signbit(r)):
            return -2
        scale = r / np.float32(s)
        lo, hi = offsets[seg], offsets[seg + 1]
        acc = np.uint64(0)
        nbits = np.uint64(0)
        for i in range(lo, hi):
            while nbits < ub:
                acc |= np.uint64(fields[pos]) << nbits
                pos += 1
                nbits += np.uint64(8)
            field = acc & field_mask
            acc >>= ub
            nbits -= ub
            level = field & level_mask
            negative = (field >> sign_shift) != np.uint64(0)
            if negative and level == np.uint64(0):
                return -3
            value = np.float32(level) * scale
            if negative:
                value = -value
            if accumulate:
                out[i] = out[i] + value
            else:
                out[i] = value
        if acc != np.uint64(0):  # the rest of the section's last byte
            return -4
    return 0


def warm_up() -> None:
    """Compile (or load from cache) every kernel before the first timed step."""
    values = np.array([0.5, -2.0, 0.0, 1.0, 3.0], dtype=np.float32)
    offsets = np.array([0, 3, 5], dtype=np.int64)
    norms = np.zeros(2, dtype=np.float32)
    fields = np.zeros(16, dtype=np.uint8)
    out = np.zeros(5, dtype=np.float32)
    key = stream_key(0, 0, 1)
    quantize_pack(values, offsets, 4, key, norms, fields)
    dequantize(norms, fields, offsets, 4, out, False)
    dequantize(norms, fields, offsets, 4, out, True)
