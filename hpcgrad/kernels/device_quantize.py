"""The ``qsgd`` quantizer written once against the array module (``xp``: NumPy or CuPy).

The device-side twin of :func:`hpcgrad.kernels.quantize.quantize_pack`, field for field: the
same per-tensor norm (a float64 sum of squares *in index order*, rounded to float32 and then
up), the same levels ``floor(s*|v|/r) + [u < frac]`` in float64, and the same coins ``u``:
the counter-based SplitMix64 of :mod:`hpcgrad.kernels.quantize`, reproduced in uint64 array
arithmetic (wrapping multiplication, as in C and Numba).  Fields are packed LSB first, one
byte-aligned section per tensor.

The norm's order matters: a float64 sum rounds after every addition, and only the CPU
path's left-to-right order gives its bits.  NumPy's ``cumsum`` adds in that order; CuPy's
is a parallel scan, so on CuPy a one-thread kernel adds in index order
(:func:`sum_of_squares`; slow for very large tensors, and **never run on a GPU yet**).
"""

from __future__ import annotations

import math

import numpy as np

from .generic import _xp
from .quantize import GOLDEN, _M1, _M2, _TWO_M53

_SEQUENTIAL_SUM = None  # the CuPy kernel, compiled on first use
_RUNNING_SUMS = None  # the CuPy kernel of :func:`running_sums`, compiled on first use


def sum_of_squares(values) -> float:
    """``sum v_i**2`` in float64, added in index order (the CPU path's bits)."""
    xp = _xp(values)
    if values.size == 0:
        return 0.0
    if xp is np:
        squares = values.astype(np.float64)
        squares *= squares
        return float(np.cumsum(squares)[-1])
    global _SEQUENTIAL_SUM
    if _SEQUENTIAL_SUM is None:
        _SEQUENTIAL_SUM = xp.RawKernel(r"""
        extern "C" __global__ void sum_sq(const float* v, long long n, double* out) {
            double acc = 0.0;
            for (long long i = 0; i < n; ++i) { double x = (double)v[i]; acc += x * x; }
            out[0] = acc;
        }""", "sum_sq", options=("--fmad=false",))
    out = xp.zeros(1, dtype=np.float64)
    _SEQUENTIAL_SUM((1,), (1,), (xp.ascontiguousarray(values), np.int64(values.size), out))
    return float(out.get()[0])


def running_sums(values) -> tuple[float, float, float]:
    """``(sum v_i, sum v_i**2, sum |v_i|)`` in float64, each added in index order: the
    Numba loops' bits (terngrad's mean and variance, the ``scaled-sign`` scale).  On CuPy a
    one-thread kernel, as :func:`sum_of_squares` (**never run on a GPU yet**)."""
    xp = _xp(values)
    if values.size == 0:
        return 0.0, 0.0, 0.0
    if xp is np:
        x = values.astype(np.float64)
        total = float(np.cumsum(x)[-1])
        magnitude = float(np.cumsum(np.abs(x))[-1])
        x *= x  # exact: a float32 squared fits a float64
        return total, float(np.cumsum(x)[-1]), magnitude
    global _RUNNING_SUMS
    if _RUNNING_SUMS is None:
        _RUNNING_SUMS = xp.RawKernel(r"""
        extern "C" __global__ void running_sums(const float* v, long long n, double* out) {
            double s = 0.0, s2 = 0.0, sa = 0.0;
            for (long long i = 0; i < n; ++i) {
                double x = (double)v[i]; s += x; s2 += x * x; sa += fabs(x);
            }
            out[0] = s; out[1] = s2; out[2] = sa;
        }""", "running_sums", options=("--fmad=false",))
    out = xp.zeros(3, dtype=np.float64)
    _RUNNING_SUMS((1,), (1,), (xp.ascontiguousarray(values), np.int64(values.size), out))
    total, squares, magnitude = (float(x) for x in out.get())
    return total, squares, magnitude


def _mix(z):
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def uniform(xp, key, start: int, stop: int):
    """Coins ``start .. stop-1`` of SplitMix64(``key``) as float64 in [0, 1)."""
    index = xp.arange(start, stop, dtype=np.uint64)
    z = _mix(np.uint64(key) + (index + np.uint64(1)) * GOLDEN)
    return (z >> np.uint64(11)).astype(np.float64) * _TWO_M53


def norm_float32(values):
    """The tensor's norm as the CPU path sends it (float32, rounded up), or None when it is
    not finite in float32."""
    r64 = math.sqrt(sum_of_squares(values))
    with np.errstate(over="ignore"):  # an overflow is the answer None, not a warning
        r = np.float32(r64)
    if not np.isfinite(r):
        return None
    if np.float64(r) < r64:  # round up: |v_i| <= r, so every level is <= s
        r = np.nextafter(r, np.float32(np.inf))
    return r


def quantize_section(values, start: int, bits: int, key, norm):
    """The packed field section (uint8, ``ceil(b*n/8)`` bytes) of one tensor ``values``
    whose first coordinate has flat index ``start``, at norm ``norm`` (float32)."""
    xp = _xp(values)
    n = values.size
    s = float((1 << (bits - 1)) - 1)
    rd = np.float64(norm)
    v = values.astype(np.float64)
    fields = xp.zeros(n, dtype=np.uint64)
    if rd > 0.0 and n:
        x = s * xp.abs(v) / rd
        level = xp.floor(x)
        capped = level >= s
        level += (~capped) & (uniform(xp, key, start, start + n) < x - level)
        level[capped] = s
        level[v == 0.0] = 0.0
        fields = level.astype(np.uint64)
        negative = (v < 0.0) & (fields > 0)
        fields |= negative.astype(np.uint64) << np.uint64(bits - 1)
    shifts = xp.arange(bits, dtype=np.uint64)
    planes = ((fields[:, None] >> shifts) & np.uint64(1)).astype(np.uint8)
    return xp.packbits(planes.ravel(), bitorder="little")


def _pack_fields(xp, fields, bits: int):
    """``fields`` (uint64, one per coordinate) packed ``bits`` a field, LSB first."""
    shifts = xp.arange(bits, dtype=np.uint64)
    planes = ((fields[:, None] >> shifts) & np.uint64(1)).astype(np.uint8)
    return xp.packbits(planes.ravel(), bitorder="little")


def ternarize_section(values, start: int, bound: float, top: float, key):
    """TernGrad's packed 2-bit section (``ceil(n/4)`` bytes) of one tensor ``values`` whose
    first coordinate has flat index ``start``: :func:`hpcgrad.algorithms.terngrad.
    ternarize_pack`'s fields, ``a = min(|v|, bound)`` sent as sign * [a >= top or u < a/top]
    (bit 0 the level, bit 1 the sign), in float64, with the same coins."""
    xp = _xp(values)
    n = values.size
    fields = xp.zeros(n, dtype=np.uint64)
    if top > 0.0 and n:
        v = values.astype(np.float64)
        a = xp.minimum(xp.abs(v), np.float64(bound))
        sent = (v != 0.0) & ((a >= top) | (uniform(xp, key, start, start + n) < a / top))
        fields = sent.astype(np.uint64) * xp.where(v < 0.0, np.uint64(3), np.uint64(1))
    return _pack_fields(xp, fields, 2)
