"""Compiled CPU kernels: one pass over memory each, no temporaries.

Numba compiles these on first use and caches the machine code beside this
module (``cache=True``), so later processes start in milliseconds.  Each
function has the signature and the exact output bytes of its twin in
:mod:`hpcgrad.kernels.generic`.

Why Numba rather than a C extension: it is a well-kept wheel on every
platform PyPI serves, needs no compiler on the user's machine, and the
kernels stay readable Python next to their NumPy reference.
"""

from __future__ import annotations

import numpy as np
from .jit import njit
from numpy.lib.stride_tricks import as_strided

from . import unrolled_vote
from .generic import TIE_POSITIVE, TIE_RANDOM, TIE_ZERO, packed_length

__all__ = [
    "TIE_POSITIVE", "TIE_RANDOM", "TIE_ZERO", "packed_length", "sign_pack",
    "momentum_sign_pack", "ternary_pack", "momentum_ternary_pack", "majority_vote",
    "ternary_vote", "apply_sign_update", "apply_ternary_update", "magnitude_sum", "warm_up",
]

_jit = njit(cache=True, nogil=True, boundscheck=False)


@_jit
def _pack_words(values, words):
    # 64 elements per little-endian word; the tail word keeps zero high bits.
    n = values.size
    full = n // 64
    for w in range(full):
        base = w * 64
        word = np.uint64(0)
        for j in range(64):
            word |= np.uint64(values[base + j] < 0) << np.uint64(j)
        words[w] = word
    if n % 64:
        word = np.uint64(0)
        for j in range(n - full * 64):
            word |= np.uint64(values[full * 64 + j] < 0) << np.uint64(j)
        words[full] = word


@_jit
def _momentum_pack_words(grad, momentum, beta, one_minus_beta, words):
    # Full words with a fixed 64-trip inner loop (it vectorizes, like _pack_words), then the tail.
    n = grad.size
    full = n // 64
    for w in range(full):
        base = w * 64
        word = np.uint64(0)
        for j in range(64):
            m = beta * momentum[base + j] + one_minus_beta * grad[base + j]
            momentum[base + j] = m
            word |= np.uint64(m < 0) << np.uint64(j)
        words[w] = word
    if n % 64:
        base = full * 64
        word = np.uint64(0)
        for i in range(base, n):
            m = beta * momentum[i] + one_minus_beta * grad[i]
            momentum[i] = m
            word |= np.uint64(m < 0) << np.uint64(i - base)
        words[full] = word


@_jit
def _momentum_ternary_words(grad, momentum, beta, one_minus_beta, use_momentum,
                            nz_words, neg_words):
    n = grad.size
    zero = grad.dtype.type(0)
    for w in range((n + 63) // 64):
        base = w * 64
        stop = min(base + 64, n)
        nz = np.uint64(0)
        neg = np.uint64(0)
        for i in range(base, stop):
            m = beta * momentum[i] + one_minus_beta * grad[i] if use_momentum else grad[i]
            momentum[i] = m
            shift = np.uint64(i - base)
            nz |= np.uint64(m != zero) << shift
            neg |= np.uint64(m < zero) << shift
        nz_words[w] = nz
        neg_words[w] = neg


def _words(padded):
    return padded.view(np.uint64)


def sign_pack(values, out) -> None:
    _pack_words(values, _words(out))


@_jit
def _copy_pack_words(grad, momentum, words):
    # beta == 0: momentum <- grad and the signs packed, in one pass.
    n = grad.size
    full = n // 64
    for w in range(full):
        base = w * 64
        word = np.uint64(0)
        for j in range(64):
            g = grad[base + j]
            momentum[base + j] = g
            word |= np.uint64(g < 0) << np.uint64(j)
        words[w] = word
    if n % 64:
        base = full * 64
        word = np.uint64(0)
        for i in range(base, n):
            g = grad[i]
            momentum[i] = g
            word |= np.uint64(g < 0) << np.uint64(i - base)
        words[full] = word


def momentum_sign_pack(grad, momentum, beta, one_minus_beta, out) -> None:
    if beta == 0:
        _copy_pack_words(grad, momentum, _words(out))
    else:
        _momentum_pack_words(grad, momentum, beta, one_minus_beta, _words(out))


_BLOCK = 256  # words per block: the counter planes stay in L1 and the inner loops vectorize


@_jit
def _add_to_counter(planes, carry, first_level, width):
    # Ripple-carry add of one bit per coordinate (carry) into the bit-sliced
    # counter planes, starting at plane first_level; consumes carry.
    for b in range(first_level, planes.shape[0]):
        for j in range(width):
            t = planes[b, j] & carry[j]
            planes[b, j] ^= carry[j]
            carry[j] = t


@_jit
def _compare_counter(planes, threshold, width, greater, equal):
    # greater[j] / equal[j]: per coordinate, counter > threshold / == threshold,
    # compared plane by plane from the most significant.
    for j in range(width):
        greater[j] = 0
        equal[j] = ~np.uint64(0)
    for b in range(planes.shape[0] - 1, -1, -1):
        if (threshold >> b) & 1:
            for j in range(width):
                equal[j] &= planes[b, j]
        else:
            for j in range(width):
                greater[j] |= equal[j] & planes[b, j]
                equal[j] &= ~planes[b, j]


def ternary_pack(values, nz_out, neg_out) -> None:
    _momentum_ternary_words(values, values, values.dtype.type(0), values.dtype.type(1), False,
                            _words(nz_out), _words(neg_out))


def momentum_ternary_pack(grad, momentum, beta, one_minus_beta, nz_out, neg_out) -> None:
    _momentum_ternary_words(grad, momentum, beta, one_minus_beta, beta != 0,
                            _words(nz_out), _words(neg_out))


@_jit
def _ternary_vote_words(nz_rows, neg_rows, count, nz_out, neg_out):
    # Each worker adds (vote + 1) in {0, 1, 2} to a bit-sliced counter C, so
    # C = sum(votes) + M: C > M is +1, C == M is 0, C < M is -1.  (vote + 1)
    # has bit 0 = "zero vote" and bit 1 = "positive vote".
    workers = nz_rows.shape[0]
    nwords = (count + 63) // 64
    levels = 1
    while (1 << levels) <= 2 * workers:
        levels += 1
    planes = np.zeros((levels, _BLOCK), dtype=np.uint64)
    carry = np.zeros(_BLOCK, dtype=np.uint64)
    greater = np.zeros(_BLOCK, dtype=np.uint64)
    equal = np.zeros(_BLOCK, dtype=np.uint64)
    ones = ~np.uint64(0)
    for start in range(0, nwords, _BLOCK):
        width = min(_BLOCK, nwords - start)
        planes[:, :width] = 0
        for k in range(workers):
            for first in range(2):
                for j in range(width):
                    nz = nz_rows[k, start + j]
                    carry[j] = ~nz if first == 0 else nz & ~neg_rows[k, start + j]
                _add_to_counter(planes, carry, first, width)
        _compare_counter(planes, workers, width, greater, equal)
        for j in range(width):
            w = start + j
            valid = ones
            if w == nwords - 1 and count % 64:
                valid = (np.uint64(1) << np.uint64(count % 64)) - np.uint64(1)
            nz_out[w] = ~equal[j] & valid
            neg_out[w] = ~equal[j] & ~greater[j] & valid


def ternary_vote(rows, count, plane_stride, nz_out, neg_out) -> None:
    nwords = (count + 63) // 64
    nz_rows = rows[:, : nwords * 8].view(np.uint64)
    neg_rows = rows[:, plane_stride: plane_stride + nwords * 8].view(np.uint64)
    _ternary_vote_words(nz_rows, neg_rows, count, _words(nz_out), _words(neg_out))


@_jit
def _vote_words(rows, count, tie, tie_words, neg_words, nz_words):
    # Bit-sliced counter: planes[b, j] holds bit b of the number of negative
    # votes for the 64 coordinates of word j of the current block.
    workers = rows.shape[0]
    nwords = (count + 63) // 64
    levels = 1
    while (1 << levels) <= workers:
        levels += 1
    planes = np.zeros((levels, _BLOCK), dtype=np.uint64)
    carry = np.zeros(_BLOCK, dtype=np.uint64)
    greater = np.zeros(_BLOCK, dtype=np.uint64)
    equal = np.zeros(_BLOCK, dtype=np.uint64)
    half = workers // 2
    odd = workers % 2 == 1
    ones = ~np.uint64(0)
    for start in range(0, nwords, _BLOCK):
        width = min(_BLOCK, nwords - start)
        planes[:, :width] = 0
        for k in range(workers):
            for j in range(width):
                carry[j] = rows[k, start + j]
            _add_to_counter(planes, carry, 0, width)
        _compare_counter(planes, half, width, greater, equal)
        for j in range(width):
            tied = np.uint64(0) if odd else equal[j]
            w = start + j
            valid = ones
            if w == nwords - 1 and count % 64:
                valid = (np.uint64(1) << np.uint64(count % 64)) - np.uint64(1)
            negative = greater[j]
            if tie == TIE_RANDOM:
                negative |= tied & tie_words[w]
            neg_words[w] = negative & valid
            if tie == TIE_ZERO:
                nz_words[w] = ~tied & valid


def _row_words(rows, nwords):
    """The rows as one 1-D uint64 array (row k at word k*stride): a view of the
    transport's receive buffer (8-byte-aligned slots), else a contiguous copy."""
    workers, (s0, s1) = rows.shape[0], rows.strides
    width = nwords * 8
    if (s1 == 1 and s0 % 8 == 0 and s0 >= width and rows.shape[1] >= width
            and rows.ctypes.data % 8 == 0):
        span = (workers - 1) * s0 + width
        return as_strided(rows, shape=(span,), strides=(1,)).view(np.uint64), s0 // 8
    copy = np.zeros((workers, width), dtype=np.uint8)
    copy[:, : min(width, rows.shape[1])] = rows[:, :width]
    return copy.reshape(-1).view(np.uint64), nwords


def majority_vote(rows, count, tie, tie_bits, neg_out, nz_out) -> None:
    nwords = (count + 63) // 64
    workers = rows.shape[0]
    tie_words = _words(tie_bits) if tie == TIE_RANDOM else _words(neg_out)
    nz_words = _words(nz_out) if tie == TIE_ZERO else _words(neg_out)
    if nwords == 0:
        return
    if workers > unrolled_vote.MAX_WORKERS:
        rows_words = rows[:, : nwords * 8].view(np.uint64)
        _vote_words(rows_words, count, tie, tie_words, _words(neg_out), nz_words)
        return
    # Small M: the counter in registers, one straight-line (vectorized) pass.
    words, stride = _row_words(rows, nwords)
    neg_words = _words(neg_out)
    unrolled_vote.vote(words, stride, workers, nwords, tie, tie_words, neg_words, nz_words)
    if count % 64:
        valid = np.uint64((1 << (count % 64)) - 1)
        neg_words[nwords - 1] &= valid
        if tie == TIE_ZERO:
            nz_words[nwords - 1] &= valid


@_jit
def _sign_update(params, words, lr, weight_decay):
    n = params.size
    plus = params.dtype.type(1)
    minus = params.dtype.type(-1)
    for w in range((n + 63) // 64):
        word = words[w]
        base = w * 64
        for j in range(min(64, n - base)):
            s = minus if (word >> np.uint64(j)) & np.uint64(1) else plus
            x = params[base + j]
            params[base + j] = x - lr * (s + weight_decay * x)


@_jit
def _ternary_update(params, nz_words, neg_words, lr, weight_decay):
    n = params.size
    plus = params.dtype.type(1)
    minus = params.dtype.type(-1)
    zero = params.dtype.type(0)
    for w in range((n + 63) // 64):
        nz = nz_words[w]
        neg = neg_words[w]
        base = w * 64
        for j in range(min(64, n - base)):
            shift = np.uint64(j)
            if (nz >> shift) & np.uint64(1):
                s = minus if (neg >> shift) & np.uint64(1) else plus
            else:
                s = zero
            x = params[base + j]
            params[base + j] = x - lr * (s + weight_decay * x)


def apply_sign_update(params, packed, lr, weight_decay) -> None:
    _sign_update(params, _words(packed), lr, weight_decay)


@_jit
def magnitude_sum(values):
    """``sum |v_i|`` in float64, added in index order (the ``scaled-sign`` scale)."""
    total = 0.0
    for i in range(values.size):
        total += abs(np.float64(values[i]))
    return total


def apply_ternary_update(params, nonzero, negative, lr, weight_decay) -> None:
    _ternary_update(params, _words(nonzero), _words(negative), lr, weight_decay)


def warm_up() -> None:
    """Compile (or load from Numba's cache) every kernel now, not inside a timed step."""
    values = np.array([1.0, -2.0, 0.0], dtype=np.float32)
    padded = np.zeros(8, dtype=np.uint8)
    other = np.zeros(8, dtype=np.uint8)
    sign_pack(values, padded)
    magnitude_sum(values)
    ternary_pack(values, padded, other)
    momentum_ternary_pack(values, values.copy(), np.float32(0.5), np.float32(0.5), padded, other)
    ternary_vote(np.zeros((3, 16), dtype=np.uint8), values.size, 8, padded, other)
    momentum_sign_pack(values, values.copy(), np.float32(0.5), np.float32(0.5), padded)
    rows = np.zeros((3, 8), dtype=np.uint8)
    for tie in (TIE_POSITIVE, TIE_ZERO, TIE_RANDOM):
        majority_vote(rows, values.size, tie, other, padded, other)
    apply_sign_update(values, padded, np.float32(0.1), np.float32(0.0))
    apply_ternary_update(values, padded, other, np.float32(0.1), np.float32(0.0))
