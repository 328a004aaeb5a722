"""Reference kernels in plain array expressions, for NumPy and CuPy alike.

These define the bytes: :mod:`hpcgrad.kernels.cpu` must produce exactly the
same output, and tests check that it does.  Every function takes its output
buffer (a uint8 array padded to a multiple of 8 bytes) and writes it in place.

Sign bit convention (wire format v1): element ``i`` lives in byte ``i // 8``,
bit ``i % 8`` counted from the least significant bit; a 1 means negative
(-1), a 0 means non-negative (+1; zero counts as +1).  Bits past the last
element are 0.

Floating point: every update is evaluated in float32 in the order the formula
is written, with no fused multiply-add, so that every backend gives the same
bits.
"""

from __future__ import annotations

import numpy as np

TIE_POSITIVE = 0
TIE_ZERO = 1
TIE_RANDOM = 2


def _xp(array):
    if type(array).__module__.startswith("cupy"):
        import cupy
        return cupy
    return np


def packed_length(count: int) -> int:
    """Bytes of one packed bit plane of ``count`` elements."""
    return (count + 7) // 8


def _unpack(xp, packed, count):
    return xp.unpackbits(packed[: packed_length(count)], bitorder="little")[:count]


def sign_pack(values, out) -> None:
    """Pack the signs of ``values`` (1 = negative) into ``out``."""
    xp = _xp(values)
    out[: packed_length(values.size)] = xp.packbits(values < 0, bitorder="little")


def momentum_sign_pack(grad, momentum, beta, one_minus_beta, out) -> None:
    """``momentum <- beta*momentum + (1-beta)*grad``, then pack its signs into ``out``.

    ``beta`` and ``one_minus_beta`` are float32 scalars; beta == 0 copies grad.
    """
    if beta == 0:
        momentum[...] = grad
    else:
        momentum *= beta
        momentum += one_minus_beta * grad
    sign_pack(momentum, out)


def ternary_pack(values, nz_out, neg_out) -> None:
    """Pack ``values`` as two planes: non-zero (v != 0) and negative (v < 0)."""
    xp = _xp(values)
    nbytes = packed_length(values.size)
    nz_out[:nbytes] = xp.packbits(values != 0, bitorder="little")
    neg_out[:nbytes] = xp.packbits(values < 0, bitorder="little")


def momentum_ternary_pack(grad, momentum, beta, one_minus_beta, nz_out, neg_out) -> None:
    """The momentum update of :func:`momentum_sign_pack`, sending sign(0) = 0."""
    if beta == 0:
        momentum[...] = grad
    else:
        momentum *= beta
        momentum += one_minus_beta * grad
    ternary_pack(momentum, nz_out, neg_out)


def ternary_vote(rows, count, plane_stride, nz_out, neg_out) -> None:
    """Majority vote over ternary messages: ``sign(sum of -1/0/+1 votes)``, sign(0) = 0.

    ``rows`` holds one ternary body per worker: the non-zero plane, then the
    negative plane at byte ``plane_stride``.  Writes the ternary result planes.
    """
    xp = _xp(rows)
    workers = rows.shape[0]
    nbytes = packed_length(count)

    def plane(start):
        bits = xp.unpackbits(xp.ascontiguousarray(rows[:, start:start + nbytes]).ravel(),
                             bitorder="little")
        return bits.reshape(workers, nbytes * 8)[:, :count].astype(np.int32)

    nonzero, negative = plane(0), plane(plane_stride)
    total = (nonzero * (1 - 2 * negative)).sum(axis=0)
    nz_out[:nbytes] = xp.packbits(total != 0, bitorder="little")
    neg_out[:nbytes] = xp.packbits(total < 0, bitorder="little")


def majority_vote(rows, count, tie, tie_bits, neg_out, nz_out) -> None:
    """Majority vote over the packed sign messages in ``rows`` (M x padded bytes).

    Writes the packed negative plane to ``neg_out``; with ``tie == TIE_ZERO``
    also the packed non-zero plane to ``nz_out`` (0 where the vote is tied).
    With ``TIE_RANDOM`` a tied coordinate takes its bit from ``tie_bits``.
    """
    xp = _xp(rows)
    workers = rows.shape[0]
    nbytes = packed_length(count)
    bits = xp.unpackbits(xp.ascontiguousarray(rows[:, :nbytes]).ravel(), bitorder="little")
    negatives = bits.reshape(workers, nbytes * 8)[:, :count].sum(axis=0, dtype=np.int32)
    negative = 2 * negatives > workers
    tied = 2 * negatives == workers
    if tie == TIE_RANDOM:
        negative |= tied & _unpack(xp, tie_bits, count).astype(bool)
    neg_out[:nbytes] = xp.packbits(negative, bitorder="little")
    if tie == TIE_ZERO:
        nz_out[:nbytes] = xp.packbits(~tied, bitorder="little")


def decode_signs(packed, count, dtype=np.float32):
    """+1/-1 values of a packed sign plane."""
    xp = _xp(packed)
    return (1 - 2 * _unpack(xp, packed, count).astype(np.int8)).astype(dtype)


def decode_ternary(nonzero, negative, count, dtype=np.float32):
    """-1/0/+1 values of a non-zero plane and a negative plane."""
    xp = _xp(nonzero)
    nz = _unpack(xp, nonzero, count).astype(np.int8)
    neg = _unpack(xp, negative, count).astype(np.int8)
    return (nz * (1 - 2 * neg)).astype(dtype)


def magnitude_sum(values) -> float:
    """``sum |v_i|`` in float64, added in index order (a running sum: NumPy's ``sum``
    adds pairwise, which may round differently)."""
    xp = _xp(values)
    if values.size == 0:
        return 0.0
    return float(xp.cumsum(xp.abs(values), dtype=xp.float64)[-1])


def apply_direction(params, direction, lr, weight_decay) -> None:
    """``params <- params - lr*(direction + weight_decay*params)`` in float32."""
    step = weight_decay * params
    step = direction + step
    step = lr * step
    params -= step


def apply_sign_update(params, packed, lr, weight_decay) -> None:
    """Decoupled sign step straight from a packed sign plane."""
    apply_direction(params, decode_signs(packed, params.size, params.dtype), lr, weight_decay)


def apply_ternary_update(params, nonzero, negative, lr, weight_decay) -> None:
    """Decoupled ternary step (unvoted coordinates only decay) from two planes."""
    apply_direction(params, decode_ternary(nonzero, negative, params.size, params.dtype),
                    lr, weight_decay)
