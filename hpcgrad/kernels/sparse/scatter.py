"""Sparse entries written into dense arrays: zeroing, scattering, and the sparse update.

The last step of the sparse algorithms: a sorted list of positions (and signs or values)
applied to the parameters, a residual or a dense direction, without a dense temporary.
"""

from __future__ import annotations

import numpy as np

from ..jit import njit

_jit = njit(cache=True, nogil=True, boundscheck=False)


@_jit
def zero_at(values, positions, start, end):
    for i in range(start, end):
        values[positions[i]] = 0


@_jit
def scatter_values(positions, values, nnz, out):
    """``out[positions[i]] = values[i]`` for i < nnz (``out`` zeroed by the caller)."""
    for i in range(nnz):
        out[positions[i]] = values[i]


@_jit
def sparse_sign_update(params, positions, negative, nnz, lr):
    """``x[p] <- x[p] - lr*t`` for the ternary direction t (weight decay 0)."""
    for i in range(nnz):
        p = positions[i]
        params[p] = params[p] - (-lr if negative[i] else lr)


@_jit
def scatter_direction(positions, negative, nnz, direction):
    """``direction`` (zeroed) <- the dense ternary vector, float32."""
    for i in range(nnz):
        direction[positions[i]] = -1.0 if negative[i] else 1.0


@_jit
def ternary_planes(positions, negative, nnz, nonzero_plane, negative_plane):
    """Set the ``ternary2`` bit planes (zeroed) of a sparse direction."""
    for i in range(nnz):
        p = positions[i]
        bit = np.uint8(1 << (p & 7))
        nonzero_plane[p >> 3] |= bit
        if negative[i]:
            negative_plane[p >> 3] |= bit


def warm_up() -> None:
    """Compile (or load from cache) every kernel before the first timed step."""
    pos = np.array([1, 4, 9], dtype=np.int64)
    neg = np.array([0, 1, 0], dtype=np.uint8)
    values = np.array([0.5, -2.0, 0.0, 1.0], dtype=np.float32)
    planes = np.zeros(16, dtype=np.uint8)
    zero_at(values.copy(), pos, 0, 1)
    scatter_values(pos, values[:3], 3, np.zeros(12, dtype=np.float32))
    sparse_sign_update(values, pos[:1], neg, 1, np.float32(0.1))
    ternary_planes(pos, neg, 3, planes[:8], planes[8:16])
    scatter_direction(pos, neg, 3, np.zeros(12, dtype=np.float32))
