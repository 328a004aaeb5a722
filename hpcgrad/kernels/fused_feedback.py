"""ef-sgd's worker step in one or two passes over memory (issue 19).

The reference (:class:`hpcgrad.algorithms.base.MomentumSGD` ``.update``, then
:class:`hpcgrad.compression.feedback.Residual`, the compressor, its decompression into a
dense vector and ``e <- e - C(e)``) runs about ten NumPy passes over the d floats.  The
kernels here compute the same float32 values, each operation rounded as NumPy rounds it
(a multiply, then an add; no FMA: Numba compiles without fast-math):

    t = x*wd + g              (g alone without parameters)
    b = b*mu + t              the momentum buffer, in place
    u = b*lr                  the local update (not stored: the worker only sends it)
    e = e + u                 the residual, in place: the vector compressed, d = u + e

then, for ``scaled-sign``, the sign bits and ``sum |e|`` (float64, index order) in the same
pass and ``e <- e - scale*sign(e)`` in a second; for a sparse compressor
``e[p] <- e[p] - (0 + sent)`` at the sent entries only (a dense decode of C(e) is 0
elsewhere, and ``e - 0`` is ``e``).

Allocation-free: every output is the caller's array.
"""

from __future__ import annotations

import numpy as np

from .jit import njit
from .sparse.fused_select import emit_candidates

_jit = njit(cache=True, nogil=True, boundscheck=False)


@_jit
def local_step(grad, params, has_params, buffer, memory, mu, wd, lr):
    """``b <- b*mu + (x*wd + g)``, ``e <- e + b*lr``, element by element."""
    for i in range(grad.size):
        t = params[i] * wd + grad[i] if has_params else grad[i]
        b = buffer[i] * mu + t
        buffer[i] = b
        memory[i] = memory[i] + b * lr


@_jit
def local_step_sign(grad, params, has_params, buffer, memory, mu, wd, lr, words):
    """:func:`local_step`, and the sign bits of the new e (1 = negative, 64 a
    little-endian word, zero high bits in the last) into ``words``; returns ``sum |e|`` in
    float64, added in index order (``kernels.cpu.magnitude_sum``).  Per 64 entries the step
    and the word first (vectorized), then the block's magnitudes added, from L1: only the
    additions, whose order is fixed, stay one after the other."""
    n = grad.size
    total = 0.0
    for w in range((n + 63) // 64):
        base = w * 64
        stop = min(64, n - base)
        word = np.uint64(0)
        for j in range(stop):
            i = base + j
            t = params[i] * wd + grad[i] if has_params else grad[i]
            b = buffer[i] * mu + t
            buffer[i] = b
            e = memory[i] + b * lr
            memory[i] = e
            word |= np.uint64(e < 0) << np.uint64(j)
        words[w] = word
        for j in range(stop):
            total += abs(np.float64(memory[base + j]))
    return total


@_jit
def subtract_scaled_signs(memory, words, neg_scale):
    """``e <- e - c`` with c the decoded ``scaled-sign`` value, computed as the decoder does
    (``kernels.cpu.apply_sign_update`` on a zeroed vector, lr = -scale, no weight decay):
    ``c = 0 - (-scale)*(s + 0*0)``, s = -1 where the bit is set, else +1."""
    n = memory.size
    zero = memory.dtype.type(0)
    plus = memory.dtype.type(1)
    minus = memory.dtype.type(-1)
    for w in range((n + 63) // 64):
        word = words[w]
        base = w * 64
        for j in range(min(64, n - base)):
            s = minus if (word >> np.uint64(j)) & np.uint64(1) else plus
            c = zero - neg_scale * (s + zero * zero)
            memory[base + j] = memory[base + j] - c


@_jit
def send_identity(memory, body):
    """``identity``: the body is e itself (fp32), and ``e <- e - e`` (0, or NaN where e is
    not finite), in one pass."""
    for i in range(memory.size):
        e = memory[i]
        body[i] = e
        memory[i] = e - e


@_jit
def subtract_sent(memory, positions, values, nnz):
    """``e[p] <- e[p] - (0 + v)`` for the ``nnz`` sent entries (p, v): what subtracting a
    dense decode (zeroed, then the entries added) changes, and nothing else."""
    zero = memory.dtype.type(0)
    for j in range(nnz):
        p = positions[j]
        memory[p] = memory[p] - (zero + values[j])


@_jit
def subtract_at(memory, positions, values, nnz):
    """``e[p] <- e[p] - v`` for the ``nnz`` entries (p, v) (topk: what it sent; 0 left for
    fp32 values, the fp16 rounding error for fp16), without NumPy's K-sized temporaries."""
    for j in range(nnz):
        p = positions[j]
        memory[p] = memory[p] - values[j]


def warm_up() -> None:
    """Compile (or load from Numba's cache) every kernel before the first timed step."""
    g = np.array([0.5, -2.0, 0.0], dtype=np.float32)
    b, e, body = np.zeros_like(g), np.zeros_like(g), np.zeros_like(g)
    words = np.zeros(1, dtype=np.uint64)
    one = np.float32(1)
    for has in (False, True):
        local_step(g, g, has, b, e, one, one, one)
        local_step_sign(g, g, has, b, e, one, one, one, words)
    subtract_scaled_signs(e, words, np.float32(-1))
    send_identity(e, body)
    subtract_sent(e, np.zeros(1, dtype=np.int64), g, 1)
    subtract_at(e, np.zeros(1, dtype=np.int64), g, 1)
    warm_up_selection()


@_jit
def local_step_sample(grad, params, has_params, buffer, memory, mu, wd, lr, stride, out):
    """``out[j] <- |e + (b*mu + t)*lr|`` at ``i = j*stride``: the magnitudes
    :func:`local_step` will leave there, without taking the step (the selection's sample)."""
    for j in range(out.size):
        i = j * stride
        t = params[i] * wd + grad[i] if has_params else grad[i]
        b = buffer[i] * mu + t
        out[j] = abs(memory[i] + b * lr)


@_jit
def local_step_gather(grad, params, has_params, buffer, memory, mu, wd, lr, threshold,
                      cand_pos, cand_val):
    """:func:`local_step`, and the (index, e) of the new e's entries with ``|e| >
    threshold``, in index order, into ``cand_pos`` / ``cand_val``; their count, or -1 if
    more than the arrays hold (the step is taken everywhere all the same).  64 entries at a
    time: the step and a mask word (vectorized), then the mask's bits."""
    size = grad.size
    n = 0
    for w in range((size + 63) // 64):
        base = w * 64
        word = np.uint64(0)
        for j in range(min(64, size - base)):
            i = base + j
            t = params[i] * wd + grad[i] if has_params else grad[i]
            b = buffer[i] * mu + t
            buffer[i] = b
            e = memory[i] + b * lr
            memory[i] = e
            word |= np.uint64(abs(e) > threshold) << np.uint64(j)
        n = emit_candidates(word, base, memory, cand_pos, cand_val, n)
    return n if n <= cand_pos.size else -1


def warm_up_selection() -> None:
    """Compile the two kernels of ef-sgd's fused top-K step."""
    g = np.array([0.5, -2.0, 0.0], dtype=np.float32)
    b, e, out = np.zeros_like(g), np.zeros_like(g), np.zeros_like(g)
    pos = np.zeros(3, dtype=np.int64)
    one = np.float32(1)
    for has in (False, True):
        local_step_sample(g, g, has, b, e, one, one, one, 1, out)
        local_step_gather(g, g, has, b, e, one, one, one, one, pos, out)
