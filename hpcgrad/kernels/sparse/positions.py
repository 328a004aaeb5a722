"""Sorted position lists as one LSB-first bitstream (``docs/wire-format.md`` §4.6, §4.9).

The count and position part of the ``sparse-sign`` and ``sparse-values`` bodies: an
Elias-gamma ``nnz + 1``, then the positions as raw fixed-width integers, a bitmap over the
``count`` coordinates, or Golomb-Rice coded gaps (:func:`position_bits` picks the shortest),
and, for ``sparse-sign``, one sign bit per entry.  The encoders write into zeroed buffers;
the decoders validate every field and return a negative code of :data:`ERRORS` instead of
raising (Numba), which :mod:`hpcgrad.wire.codecs` turns into a message.
"""

from __future__ import annotations

import numpy as np

from ..jit import njit

_jit = njit(cache=True, nogil=True, boundscheck=False)

RAW, BITMAP, RICE = 0, 1, 2
CODING_NAMES = {RAW: "raw", BITMAP: "bitmap", RICE: "rice"}

ERRORS = {
    -1: "the bitstream ends before its last field",
    -2: "a position is not below the message's count",
    -3: "positions are not strictly increasing",
    -4: "the count of entries exceeds the message's count",
    -5: "the bitmap's set bits differ from the entry count",
    -6: "padding bits after the bitstream are not zero",
    -7: "the body is longer than its bitstream",
    -10: "an Elias-gamma count is malformed",
    -11: "it holds more entries than any message of this run can",
}


def raw_width(count: int) -> int:
    """Bits of one raw position for ``count`` coordinates."""
    return max(1, int(count - 1).bit_length())


# ---------------------------------------------------------------- bit I/O --

@_jit
def _put(out, bitpos, value, nbits):
    """OR the low ``nbits`` (<= 57) of ``value`` into ``out`` at bit ``bitpos``."""
    while nbits > 0:
        byte = bitpos >> 3
        shift = bitpos & 7
        take = min(8 - shift, nbits)
        out[byte] |= np.uint8((value & ((1 << take) - 1)) << shift)
        value >>= take
        bitpos += take
        nbits -= take
    return bitpos


@_jit
def _get(body, bitpos, nbits, limit):
    """Read ``nbits`` (<= 57) at ``bitpos``; -1 if past ``limit`` bits."""
    if bitpos + nbits > limit:
        return -1
    value = 0
    got = 0
    while got < nbits:
        byte = bitpos >> 3
        shift = bitpos & 7
        take = min(8 - shift, nbits - got)
        value |= ((np.int64(body[byte]) >> shift) & ((1 << take) - 1)) << got
        got += take
        bitpos += take
    return value


@_jit
def _gamma_bits(n):
    # Elias gamma of n >= 1: (L - 1) zeros, then the L bits of n, most significant first.
    length = 0
    m = n
    while m:
        length += 1
        m >>= 1
    return 2 * length - 1


@_jit
def _put_gamma(out, bitpos, n):
    length = 0
    m = n
    while m:
        length += 1
        m >>= 1
    bitpos += length - 1  # zeros: the buffer is zeroed
    for i in range(length - 1, -1, -1):
        bitpos = _put(out, bitpos, (n >> i) & 1, 1)
    return bitpos


@_jit
def _get_gamma(body, bitpos, limit):
    """(value, new bitpos); value -1 if truncated, -10 if malformed."""
    zeros = 0
    while True:
        bit = _get(body, bitpos, 1, limit)
        if bit < 0:
            return -1, bitpos
        bitpos += 1
        if bit == 1:
            break
        zeros += 1
        if zeros > 62:
            return -10, bitpos
    value = 1
    for _ in range(zeros):
        bit = _get(body, bitpos, 1, limit)
        if bit < 0:
            return -1, bitpos
        value = (value << 1) | bit
        bitpos += 1
    return value, bitpos


# ------------------------------------------------------------ size models --

@_jit
def rice_bits(positions, nnz, k):
    """Bits of the Rice-coded gaps of ``positions[:nnz]`` with parameter ``k``."""
    total = nnz * (k + 1)
    prev = -1
    for i in range(nnz):
        gap = positions[i] - prev - 1
        total += gap >> k
        prev = positions[i]
    return total


@_jit
def best_rice_parameter(positions, nnz, count):
    """The k in [0, 24] minimizing the Rice-coded length (searched around the
    optimum for geometric gaps of mean count/nnz).  24 bounds the encoder's
    register accumulator; it is ample for any gap a message can hold."""
    if nnz == 0:
        return 0, 0
    mean = count / nnz
    k0 = 0
    while (1 << (k0 + 1)) <= mean * 0.69:  # 2^k ~ ln(2)·mean gap
        k0 += 1
    best_k, best = -1, 0
    for k in range(min(24, max(0, k0 - 2)), min(25, k0 + 3)):
        bits = rice_bits(positions, nnz, k)
        if best_k < 0 or bits < best:
            best_k, best = k, bits
    return best_k, best


@_jit
def position_bits(positions, nnz, count, raw_bits):
    """(coding, rice k, bits) of the smallest position coding for this set; k is 0 unless
    the coding is Rice (the flags of a raw or bitmap body must not carry one)."""
    k, rice = best_rice_parameter(positions, nnz, count)
    raw = nnz * raw_bits
    coding, bits = RICE, rice
    if count < bits:
        coding, bits, k = BITMAP, count, 0
    if raw < bits:
        coding, bits, k = RAW, raw, 0
    return coding, k, bits


# ------------------------------------------------- encoders and decoders --

_TRAILING_ONES = np.array([(~b & (b + 1)).bit_length() - 1 for b in range(256)], dtype=np.int64)


@_jit
def _peek(body, bitpos):
    """56 or more bits of ``body`` from ``bitpos``, LSB first; zeros past the end."""
    byte = bitpos >> 3
    word = 0
    stop = min(byte + 8, body.size)
    for j in range(byte, stop):
        word |= np.int64(body[j]) << (8 * (j - byte))
    return (word >> (bitpos & 7)) & ((1 << 56) - 1)


@_jit
def _store(out, bitpos, acc, fill):
    """OR the ``fill`` (< 64) low bits of ``acc`` into ``out`` at ``bitpos``, whole bytes
    at a time; the caller keeps bits that do not fill a byte."""
    byte = bitpos >> 3
    for _ in range(fill >> 3):
        out[byte] |= np.uint8(acc & 0xFF)
        acc >>= 8
        byte += 1
    return acc


@_jit
def encode_positions(positions, nnz, count, coding, k, raw_bits, out):
    """Write the count and position part of the bitstream (shared by ``sparse-sign`` and
    ``sparse-values``) into zeroed ``out``; return its length in bits."""
    bitpos = _put_gamma(out, 0, nnz + 1)
    if coding == RAW:
        for i in range(nnz):
            bitpos = _put(out, bitpos, positions[i], raw_bits)
    elif coding == BITMAP:
        for i in range(nnz):
            p = bitpos + positions[i]
            out[p >> 3] |= np.uint8(1 << (p & 7))
        bitpos += count
    else:
        # A register accumulator: flush whole bytes once it holds 32 bits or more.
        base = bitpos & ~7  # byte-aligned start of the accumulator
        acc = np.int64(out[base >> 3]) & ((1 << (bitpos & 7)) - 1)
        out[base >> 3] = 0
        fill = bitpos & 7
        prev = -1
        mask = (1 << k) - 1
        for i in range(nnz):
            gap = positions[i] - prev - 1
            prev = positions[i]
            q = gap >> k
            while q >= 24:  # unary quotient: q one-bits, then a zero bit
                acc |= ((1 << 24) - 1) << fill
                fill += 24
                q -= 24
                if fill >= 32:
                    acc = _store(out, base, acc, fill)
                    base += fill & ~7
                    fill &= 7
            acc |= ((1 << q) - 1) << fill
            fill += q + 1
            if fill >= 32:
                acc = _store(out, base, acc, fill)
                base += fill & ~7
                fill &= 7
            acc |= (gap & mask) << fill
            fill += k
            if fill >= 32:
                acc = _store(out, base, acc, fill)
                base += fill & ~7
                fill &= 7
        acc = _store(out, base, acc, fill + 7)  # the partial last byte too
        bitpos = base + fill
    return bitpos


@_jit
def encode_sparse_sign(positions, negative, nnz, count, coding, k, raw_bits, out):
    """Write the bitstream into zeroed ``out``; return its length in bits."""
    bitpos = encode_positions(positions, nnz, count, coding, k, raw_bits, out)
    for i in range(nnz):
        if negative[i]:
            out[bitpos >> 3] |= np.uint8(1 << (bitpos & 7))
        bitpos += 1
    return bitpos


@_jit
def decode_positions(body, count, coding, k, raw_bits, positions):
    """Parse and validate the count and position part of a body; fill ``positions``;
    return (nnz or an error code, the bit after the positions)."""
    limit = body.size * 8
    value, bitpos = _get_gamma(body, 0, limit)
    if value < 0:
        return value, bitpos
    nnz = value - 1
    if nnz > count:
        return -4, bitpos
    if nnz > positions.size:
        return -11, bitpos
    if coding == RAW:
        prev = -1
        for i in range(nnz):
            p = _get(body, bitpos, raw_bits, limit)
            if p < 0:
                return -1, bitpos
            if p >= count:
                return -2, bitpos
            if p <= prev:
                return -3, bitpos
            positions[i] = p
            prev = p
            bitpos += raw_bits
    elif coding == BITMAP:
        if bitpos + count > limit:
            return -1, bitpos
        found = 0
        for j in range(count):
            p = bitpos + j
            if (body[p >> 3] >> (p & 7)) & 1:
                if found == nnz:
                    return -5, bitpos
                positions[found] = j
                found += 1
        if found != nnz:
            return -5, bitpos
        bitpos += count
    else:
        prev = -1
        mask = (1 << k) - 1
        for i in range(nnz):
            # One 56-bit window per entry in the common case: the unary quotient's
            # one-bits counted a byte at a time from a table, then the k remainder bits.
            window = _peek(body, bitpos)
            used = 0
            q = 0
            while True:
                ones = _TRAILING_ONES[(window >> used) & 0xFF]
                q += ones
                used += ones
                if ones < 8:
                    break
                if q > count:
                    return -2, bitpos
                if used > 48:
                    bitpos += used
                    used = 0
                    if bitpos > limit:
                        return -1, bitpos
                    window = _peek(body, bitpos)
            used += 1  # the terminating zero
            # p = prev + 1 + (q << k | r) must stay below count: bound q before shifting
            # (a corrupt q << k could overflow into a negative position).
            if q > ((count - prev - 2) >> k):
                return -2, bitpos
            if used + k > 56:
                bitpos += used
                used = 0
                window = _peek(body, bitpos)
            r = (window >> used) & mask
            bitpos += used + k
            if bitpos > limit:
                return -1, bitpos
            p = prev + 1 + ((q << k) | r)
            positions[i] = p
            prev = p
    return nnz, bitpos


@_jit
def decode_sparse_sign(body, count, coding, k, raw_bits, positions, negative):
    """Parse and validate a body; fill ``positions``/``negative``; return nnz or an error."""
    limit = body.size * 8
    nnz, bitpos = decode_positions(body, count, coding, k, raw_bits, positions)
    if nnz < 0:
        return nnz
    if bitpos + nnz > limit:
        return -1
    for i in range(0, nnz, 56):
        window = _peek(body, bitpos)
        for j in range(min(56, nnz - i)):
            negative[i + j] = (window >> j) & 1
        bitpos += min(56, nnz - i)
    if (bitpos + 7) // 8 != body.size:
        return -7
    if bitpos & 7 and body[bitpos >> 3] >> (bitpos & 7):
        return -6
    return nnz


def sparse_sign_bits(nnz: int, position_bits: int) -> int:
    """Bitstream length: gamma(nnz + 1) + positions + one sign bit per entry."""
    return int(_gamma_bits(nnz + 1)) + position_bits + nnz


def warm_up() -> None:
    """Compile (or load from cache) every kernel before the first timed step."""
    pos = np.array([1, 4, 9], dtype=np.int64)
    neg = np.array([0, 1, 0], dtype=np.uint8)
    out = np.zeros(64, dtype=np.uint8)
    for coding in (RAW, BITMAP, RICE):
        bits = encode_sparse_sign(pos, neg, 3, 12, coding, 1, 4, out)
        decode_sparse_sign(out[: (bits + 7) // 8], 12, coding, 1, 4, pos.copy(), neg.copy())
        out[:] = 0
        bits = encode_positions(pos, 3, 12, coding, 1, 4, out)
        decode_positions(out[: (bits + 7) // 8], 12, coding, 1, 4, pos.copy())
        out[:] = 0
    position_bits(pos, 3, 12, 4)
