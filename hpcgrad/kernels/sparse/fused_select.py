"""Residual update and top-K selection in one pass over memory (s3gd-mv, topk; issue 19).

The reference path (:mod:`hpcgrad.compression.feedback` then
:class:`hpcgrad.compression.selection.TopK`) makes four passes over a tensor's d floats:
``e <- rho*e + g``, gathering the magnitudes above a sampled threshold, and two in
:func:`~hpcgrad.kernels.sparse.magnitude.take_top` (count, then take).  Here the first
two are one loop that also records *where* the candidates are, so the take runs over the
candidates only (O(K)): every entry with ``|e| >= T`` (T, the K-th largest magnitude, is
above the gathering threshold) is a candidate, and candidates are gathered in index order,
so ties at T are taken in index order as before.  Same float32 arithmetic (a multiply,
then an add, each rounded; no FMA: Numba compiles without fast-math), same entries, same
order.

Allocation-free: outputs go to the caller's arrays.
"""

from __future__ import annotations

import numpy as np

from ..jit import njit

_jit = njit(cache=True, nogil=True, boundscheck=False)


#: ctz by de Bruijn multiplication: the index of the lowest set bit of a 64-bit word.
_DEBRUIJN = np.uint64(0x03F79D71B4CB0A89)
_CTZ = np.zeros(64, dtype=np.int64)
for _i in range(64):
    _CTZ[((1 << _i) * 0x03F79D71B4CB0A89 % 2**64) >> 58] = _i


@_jit
def emit_candidates(word, base, values, cand_pos, cand_val, n):
    """Append (i, values[i]) for every set bit j of ``word`` (i = base + j, in index order)
    while there is room; returns the new count (which may pass the arrays' size: then the
    caller reports an overflow)."""
    cap = cand_pos.size
    while word != np.uint64(0):
        low = word & (~word + np.uint64(1))
        i = base + _CTZ[(low * _DEBRUIJN) >> np.uint64(58)]
        if n < cap:
            cand_pos[n] = i
            cand_val[n] = values[i]
        n += 1
        word ^= low
    return n


@_jit
def compensated_sample(memory, grad, rho, decay, stride, out):
    """``out[j] <- |rho*e + g|`` at ``i = j*stride`` (``decay`` False: ``|e + g|``), the
    values the reference samples after compensating, without compensating yet."""
    for j in range(out.size):
        i = j * stride
        e = memory[i] * rho if decay else memory[i]
        out[j] = abs(e + grad[i])


@_jit
def compensate_gather(memory, grad, rho, decay, threshold, cand_pos, cand_val):
    """``e <- rho*e + g`` over the whole tensor (``decay`` False: ``e <- e + g``), and the
    (index, e) of the entries with ``|e| > threshold``, in index order, into
    ``cand_pos`` / ``cand_val``.  Returns their count, or -1 if there are more than the
    arrays hold (every entry is compensated all the same).  64 entries at a time: the
    update and a mask word of the entries above (vectorized), then the mask's bits."""
    size = memory.size
    n = 0
    for w in range((size + 63) // 64):
        base = w * 64
        word = np.uint64(0)
        for j in range(min(64, size - base)):
            i = base + j
            e = memory[i] * rho if decay else memory[i]
            e = e + grad[i]
            memory[i] = e
            word |= np.uint64(abs(e) > threshold) << np.uint64(j)
        n = emit_candidates(word, base, memory, cand_pos, cand_val, n)
    return n if n <= cand_pos.size else -1


@_jit
def gather_positions(values, threshold, cand_pos, cand_val):
    """As :func:`compensate_gather` without a residual (s3gd-mv with ``rho = 0``)."""
    size = values.size
    n = 0
    for w in range((size + 63) // 64):
        base = w * 64
        word = np.uint64(0)
        for j in range(min(64, size - base)):
            word |= np.uint64(abs(values[base + j]) > threshold) << np.uint64(j)
        n = emit_candidates(word, base, values, cand_pos, cand_val, n)
    return n if n <= cand_pos.size else -1


@_jit
def magnitudes_of(cand_val, found, out):
    """``out[j] <- |cand_val[j]|`` for j < found (what the K-th magnitude is taken of)."""
    for j in range(found):
        out[j] = abs(cand_val[j])


@_jit
def take_top_candidates(values, cand_pos, cand_val, found, threshold, k, offset, positions,
                        negative, start, forget):
    """:func:`~hpcgrad.kernels.sparse.magnitude.take_top` over the candidates (every entry
    with ``|v| >= threshold`` is one; index ``cand_pos[j]``, value ``cand_val[j]``, in
    index order), read sequentially rather than gathered from ``values``: the entries above
    ``threshold``, then ties at it in index order, up to ``k``; exact zeros skipped.
    ``forget``: ``values[i] <- 0`` at every entry taken (s3gd-mv's ``a[picked] <- 0``).
    Returns the new end of ``positions``."""
    above = 0
    for j in range(found):
        if abs(cand_val[j]) > threshold:
            above += 1
    ties = k - above
    end = start
    for j in range(found):
        v = cand_val[j]
        a = abs(v)
        if a > threshold or (a == threshold and ties > 0):
            if a == threshold:
                ties -= 1
            if v != 0:
                i = cand_pos[j]
                positions[end] = offset + i
                negative[end] = v < 0
                end += 1
                if forget:
                    values[i] = 0
    return end


@_jit
def compensate(memory, grad, rho, decay):
    """``e <- rho*e + g`` (``decay`` False: ``e <- e + g``) alone: small tensors."""
    for i in range(memory.size):
        e = memory[i] * rho if decay else memory[i]
        memory[i] = e + grad[i]


def warm_up() -> None:
    """Compile (or load from Numba's cache) every kernel before the first timed step."""
    e = np.array([0.5, -2.0, 0.0, 1.0], dtype=np.float32)
    g = np.array([0.25, 1.0, 0.0, -3.0], dtype=np.float32)
    pos = np.zeros(4, dtype=np.int64)
    mag = np.zeros(4, dtype=np.float32)
    neg = np.zeros(4, dtype=np.uint8)
    rho = np.float32(0.5)
    for decay in (False, True):
        compensated_sample(e, g, rho, decay, 2, mag[:2])
        found = compensate_gather(e, g, rho, decay, np.float32(0.1), pos, mag)
        compensate(e, g, rho, decay)
    gather_positions(e, np.float32(0.1), pos, mag)
    magnitudes_of(mag, found, mag.copy())
    for forget in (False, True):
        take_top_candidates(e, pos, mag, found, np.float32(0.5), 2, 0, pos.copy(), neg, 0,
                            forget)
