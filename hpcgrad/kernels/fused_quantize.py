"""QSGD's quantize + pack, 64 coordinates at a time (the worker's encode; issue 19).

:func:`hpcgrad.kernels.quantize.quantize_pack` draws a coin only where it is needed and
packs each field as it is made, so its loop neither vectorizes nor keeps the 64-bit
multiplies of the coin generator busy.  Here each tensor's coordinates go in blocks of 64:
the fields of a block are computed branch-free (every coin drawn; the generator is
counter-based, so drawing a coin that is not used changes nothing), which vectorizes, and
then packed: 64 fields of b bits are exactly 8b bytes, so every block starts on a byte.
The tail of a tensor (< 64 coordinates) is packed field by field as before.

Same norms (float64 sum of squares in index order, rounded up to float32), same levels
(``floor(s*|v|/r)`` in float64, plus the coin), same bytes: the reference is
:func:`~hpcgrad.kernels.quantize.quantize_pack` (tests/kernels/test_fused_quantize.py).
"""

from __future__ import annotations

import math

import numpy as np

from . import quantize
from .jit import njit
from .quantize import GOLDEN, _TWO_M53, _mix, norm_rounded_up

# error_model "numpy": a float division by zero is IEEE, not a Python exception, so the
# division by the norm needs no check in the loop (the norm is known > 0 there).
_jit = njit(cache=True, nogil=True, boundscheck=False, error_model="numpy")

BLOCK = 64


@_jit
def _block_fields(values, base, sf, rd, key, sign_bit, fields):
    """The b-bit fields of ``values[base: base + 64]`` into ``fields`` (uint64, 64)."""
    for j in range(BLOCK):
        i = base + j
        v = np.float64(values[i])
        x = sf * abs(v) / rd
        level = math.floor(x)
        z = _mix(key + (np.uint64(i) + np.uint64(1)) * GOLDEN)
        coin = np.float64(z >> np.uint64(11)) * _TWO_M53
        up = level + 1.0 if coin < x - level else level
        level = sf if level >= sf else up
        f = np.uint64(level)
        fields[j] = f | sign_bit if v < 0.0 and level > 0.0 else f


@_jit
def quantize_pack(values, offsets, bits, key, norms, out, scratch):
    """:func:`hpcgrad.kernels.quantize.quantize_pack`'s result, blockwise; ``scratch`` is a
    uint64 array of 64 entries.  Returns 0, or -1 if a norm is not finite in float32."""
    s = (1 << (bits - 1)) - 1
    sf = np.float64(s)
    sign_bit = np.uint64(1) << np.uint64(bits - 1)
    ub = np.uint64(bits)
    pos = 0
    for seg in range(offsets.size - 1):
        lo, hi = offsets[seg], offsets[seg + 1]
        r = norm_rounded_up(values, lo, hi)
        if not np.isfinite(r):
            return -1
        norms[seg] = r
        rd = np.float64(r)
        n = hi - lo
        if rd == 0.0:  # every field 0
            for b in range(pos, pos + (bits * n + 7) // 8):
                out[b] = 0
            pos += (bits * n + 7) // 8
            continue
        blocks = n // BLOCK
        per_word = 64 // bits if 64 % bits == 0 else 0
        for blk in range(blocks):
            _block_fields(values, lo + blk * BLOCK, sf, rd, key, sign_bit, scratch)
            if per_word:  # b divides 64: whole fields per word, no carries
                for w in range(bits):
                    word = np.uint64(0)
                    for f in range(per_word):
                        word |= scratch[w * per_word + f] << np.uint64(f * bits)
                    for t in range(8):
                        out[pos + t] = np.uint8((word >> np.uint64(8 * t)) & np.uint64(0xFF))
                    pos += 8
                continue
            acc = np.uint64(0)
            nbits = np.uint64(0)
            for j in range(BLOCK):
                acc |= scratch[j] << nbits
                nbits += ub
                if nbits >= np.uint64(64):
                    for t in range(8):
                        out[pos + t] = np.uint8((acc >> np.uint64(8 * t)) & np.uint64(0xFF))
                    pos += 8
                    nbits -= np.uint64(64)
                    acc = scratch[j] >> (ub - nbits) if nbits > np.uint64(0) else np.uint64(0)
        # The tail, field by field, as the reference packs it.
        acc = np.uint64(0)
        nbits = np.uint64(0)
        for i in range(lo + blocks * BLOCK, hi):
            v = np.float64(values[i])
            x = sf * abs(v) / rd
            level = math.floor(x)
            z = _mix(key + (np.uint64(i) + np.uint64(1)) * GOLDEN)
            coin = np.float64(z >> np.uint64(11)) * _TWO_M53
            if level >= sf:
                level = sf
            elif coin < x - level:
                level += 1.0
            field = np.uint64(level)
            if v < 0.0 and level > 0.0:
                field |= sign_bit
            acc |= field << nbits
            nbits += ub
            while nbits >= np.uint64(8):
                out[pos] = np.uint8(acc & np.uint64(0xFF))
                pos += 1
                acc >>= np.uint64(8)
                nbits -= np.uint64(8)
        if nbits > np.uint64(0):
            out[pos] = np.uint8(acc & np.uint64(0xFF))
            pos += 1
    return 0


def warm_up() -> None:
    """Compile (or load from Numba's cache) the kernel before the first timed step."""
    values = np.linspace(-1, 1, 200).astype(np.float32)
    offsets = np.array([0, 130, 200], dtype=np.int64)
    norms = np.zeros(2, dtype=np.float32)
    out = np.zeros(200, dtype=np.uint8)
    quantize_pack(values, offsets, 4, np.uint64(1), norms, out, np.zeros(BLOCK, np.uint64))


def encode(values, offsets, bits: int, key, padded_body, norms, scratch) -> int:
    """The ``qsgd`` body of ``values`` at ``bits`` into ``padded_body`` (norms, then the
    field sections), as :func:`hpcgrad.wire.codecs.quantized.encode_qsgd` writes it; returns
    the body length, or -1 where the reference would raise (a norm not finite in float32,
    a body longer than the buffer): the caller then runs the reference for its error."""
    nseg = offsets.size - 1
    length = 4 * nseg + sum(quantize.section_lengths(np.diff(offsets), bits))
    if length > padded_body.size:
        return -1
    if quantize_pack(values, offsets, bits, key, norms, padded_body[4 * nseg:], scratch) < 0:
        return -1
    padded_body[: 4 * nseg] = norms[:nseg].view(np.uint8)
    return length
