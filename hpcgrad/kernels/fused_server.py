"""The server's dense aggregates in one pass: decode every uplink and average, from the
receive buffer, with no per-worker float temporaries.

Each kernel reads all M bodies (rows of the transport's receive buffer) coordinate by
coordinate and writes ``out[i] = (((u_0[i] + u_1[i]) + ...) + u_{M-1}[i]) / M`` in float32:
the same additions, in the same worker order, as decoding worker by worker into ``out`` and
dividing afterwards (:func:`hpcgrad.algorithms.step.decode_into_sum`), so the result is bit
for bit the same -- only the passes over ``d`` floats go from M + 1 (and, for fp16, the
widening casts) to one.  ``divisor`` is ``float32(M)`` for a mean, or 1 for a plain sum.

The worker-by-worker decode's first write is ``out = 0 op value`` for some codecs (the sign
update) and ``out = value`` for others (dense, qsgd); each kernel starts the way the decode
it replaces did, because ``0 + (-0.0)`` is ``+0.0``.

Validation is the codecs' (the same checks, the same order of failure is not promised): a
kernel returns 0, or a negative code naming what it found first in *its* order, after which
the caller decodes worker by worker again to raise the message the unfused path raises.

Every output is the caller's; the only allocation is :func:`qsgd_mean`'s M per-worker
scales, inside Numba (bytes, not a d-sized array).
"""

from __future__ import annotations

import numpy as np

from .jit import njit

_jit = njit(cache=True, nogil=True, boundscheck=False)

#: float32 value of every binary16 bit pattern (index: the uint16): the exact widening
#: (every binary16 is a binary32), built by NumPy's own conversion on first use.
_HALF_TO_FLOAT: np.ndarray | None = None


def half_table() -> np.ndarray:
    """The 65536-entry binary16 -> float32 table (256 KiB, stays in cache)."""
    global _HALF_TO_FLOAT
    if _HALF_TO_FLOAT is None:
        _HALF_TO_FLOAT = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16) \
            .view(np.float16).astype(np.float32)
    return _HALF_TO_FLOAT


# ------------------------------------------------------------------- dense --

@_jit
def fp32_mean(rows, out, divisor):
    """``out[i] = (sum_w rows[w, i]) / divisor``, rows float32 (M x >= d), worker order."""
    m, n = rows.shape[0], out.size
    for i in range(n):
        acc = rows[0, i]
        for w in range(1, m):
            acc = acc + rows[w, i]
        out[i] = acc / divisor


@_jit
def fp16_mean(rows, table, out, divisor):
    """As :func:`fp32_mean` for binary16 bodies given as uint16 (M x >= d): each value widened
    exactly to float32 (``table``, :func:`half_table`), then added in float32."""
    m, n = rows.shape[0], out.size
    for i in range(n):
        acc = table[rows[0, i]]
        for w in range(1, m):
            acc = acc + table[rows[w, i]]
        out[i] = acc / divisor


# --------------------------------------------------------------- scaled-sign --

@_jit
def sign_mean(words, lrs, out, divisor):
    """The ``scaled-sign`` sum: ``out = 0``, then per worker w in order the sign update
    ``out <- out - lrs[w] * (s + 0 * out)`` (``lrs[w] = -scale_w``, ``s = -1`` where bit i
    of ``words[w]`` is set, else +1) -- exactly what
    :meth:`~hpcgrad.compression.compressors.ScaledSign.decompress` does with the sign
    kernel -- and ``out /= divisor``.  ``words``: uint64 (M x >= ceil(d / 64))."""
    m, n = words.shape[0], out.size
    plus = np.float32(1)
    minus = np.float32(-1)
    zero = np.float32(0)
    for k in range((n + 63) // 64):
        base = k * 64
        for j in range(min(64, n - base)):
            bit = np.uint64(j)
            acc = zero
            for w in range(m):
                s = minus if (words[w, k] >> bit) & np.uint64(1) else plus
                acc = acc - lrs[w] * (s + zero * acc)
            out[base + j] = acc / divisor


# ---------------------------------------------------------------------- qsgd --

@_jit
def qsgd_mean(norms, fields, offsets, sections, bits, out, divisor):
    """Dequantize and average M ``qsgd`` bodies of width ``bits`` (2..16).

    ``norms``: float32 (M x L), each body's tensor norms; ``fields``: uint8 (M x >= the
    field sections), each body after its norms; ``offsets`` (int64, L + 1) the tensors in
    the flat vector, ``sections`` (int64, L + 1) where each tensor's fields start in
    ``fields``.  ``out[i] = (sum_w ±float32(l) * (r_w / float32(s))) / divisor`` in worker
    order, the first worker's value written (as :func:`hpcgrad.kernels.quantize.dequantize`
    does with ``accumulate`` false, then true).

    Returns 0, or the codes of :data:`hpcgrad.kernels.quantize.ERRORS`: -1 / -2 a norm not
    finite / negative, -3 a zero level with its sign bit set, -4 padding bits set.
    """
    m = norms.shape[0]
    s = (1 << (bits - 1)) - 1
    level_mask = (1 << (bits - 1)) - 1
    field_mask = (1 << bits) - 1
    scales = np.empty(m, dtype=np.float32)  # r_w / s, once per tensor and worker
    for seg in range(offsets.size - 1):
        for w in range(m):
            r = norms[w, seg]
            if not np.isfinite(r):
                return -1
            if r < np.float32(0) or (r == np.float32(0) and np.signbit(r)):
                return -2
            scales[w] = r / np.float32(s)
        lo, hi = offsets[seg], offsets[seg + 1]
        start = sections[seg] * 8
        for i in range(lo, hi):
            bitpos = start + (i - lo) * bits
            byte = bitpos >> 3
            shift = bitpos & 7
            wide = shift + bits > 8
            wider = shift + bits > 16
            acc = np.float32(0)
            for w in range(m):
                word = np.int64(fields[w, byte])
                if wide:
                    word |= np.int64(fields[w, byte + 1]) << 8
                    if wider:
                        word |= np.int64(fields[w, byte + 2]) << 16
                field = (word >> shift) & field_mask
                level = field & level_mask
                negative = field > level_mask
                if negative and level == 0:
                    return -3
                value = np.float32(level) * scales[w]
                if negative:
                    value = -value
                acc = value if w == 0 else acc + value
            out[i] = acc / divisor
        used = (hi - lo) * bits & 7
        if used:  # the rest of the section's last byte
            last = (start + (hi - lo) * bits) >> 3
            for w in range(m):
                if fields[w, last] >> used:
                    return -4
    return 0


def warm_up() -> None:
    """Compile (or load from Numba's cache) every kernel here."""
    out = np.zeros(3, dtype=np.float32)
    fp32_mean(np.ones((2, 8), dtype=np.float32), out, np.float32(2))
    fp16_mean(np.zeros((2, 8), dtype=np.uint16), half_table(), out, np.float32(2))
    sign_mean(np.zeros((2, 1), dtype=np.uint64), np.ones(2, dtype=np.float32), out,
              np.float32(2))
    qsgd_mean(np.ones((2, 1), dtype=np.float32), np.zeros((2, 8), dtype=np.uint8),
              np.array([0, 3], dtype=np.int64), np.array([0, 2], dtype=np.int64), 4, out,
              np.float32(2))
