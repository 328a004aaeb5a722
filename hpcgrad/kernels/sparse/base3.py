"""The ``base3`` body (``docs/wire-format.md`` §4.7): a ternary vector, five trits per byte.

Byte ``j`` is ``sum_i t_i 3**i`` over coordinates ``5j .. 5j+4``, trit 0 = zero, 1 = +1,
2 = -1.  The decoder validates and returns a negative code of :data:`ERRORS` instead of
raising (Numba).
"""

from __future__ import annotations

import numpy as np

from ..jit import njit

_jit = njit(cache=True, nogil=True, boundscheck=False)

ERRORS = {
    -7: "the body is longer than its bitstream",
    -8: "a base3 byte is above 242 (3**5 - 1)",
    -9: "a base3 trit past the last coordinate is not zero",
    -11: "it holds more entries than any message of this run can",
}

_POW3 = np.array([1, 3, 9, 27, 81], dtype=np.uint8)


@_jit
def encode_base3(positions, negative, nnz, out):
    """Trits into zeroed ``out``: 0 = zero, 1 = +1, 2 = -1; byte = sum t_i 3^i."""
    for i in range(nnz):
        p = positions[i]
        out[p // 5] += np.uint8((2 if negative[i] else 1) * _POW3[p % 5])


@_jit
def decode_base3(body, count, positions, negative):
    nnz = 0
    for j in range(body.size):
        b = np.int64(body[j])
        if b > 242:
            return -8
        for i in range(5):
            t = b % 3
            b //= 3
            if t:
                p = 5 * j + i
                if p >= count:
                    return -9
                if nnz == positions.size:
                    return -11
                positions[nnz] = p
                negative[nnz] = t == 2
                nnz += 1
    return nnz


def warm_up() -> None:
    """Compile (or load from cache) both kernels before the first timed step."""
    pos = np.array([1, 4, 9], dtype=np.int64)
    neg = np.array([0, 1, 0], dtype=np.uint8)
    out = np.zeros(8, dtype=np.uint8)
    encode_base3(pos, neg, 3, out)
    decode_base3(out[:3], 12, pos.copy(), neg.copy())
