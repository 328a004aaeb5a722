"""Top-K selection by a magnitude threshold, one tensor at a time (``compression.selection``).

The threshold itself comes from a partition or a sample (NumPy, in the caller); these loops
count and gather the entries above it and take the K largest, ties in index order.
"""

from __future__ import annotations

import numpy as np

from ..jit import njit

_jit = njit(cache=True, nogil=True, boundscheck=False)


def refine_threshold(count_above, threshold, lo_count, hi_count, max_passes):
    """Bisect ``threshold`` (float32) until ``count_above(threshold)`` entries lie in
    ``[lo_count, hi_count]``, at most ``max_passes`` counts; ``(threshold, count, passes)``.

    The one refinement of the threshold rule: the CPU selector (a Numba count) and the device
    step (an array count) call it with their own counter, so both reach the same float32
    threshold, hence the same bytes.  The caller checks ``count`` against the band and falls
    back to the exact rule when it is outside (heavy ties, say).
    """
    below, above = np.float32(0), np.float32(np.inf)  # thresholds bracketing K
    count = passes = 0
    for _ in range(max_passes):
        count = count_above(threshold)
        passes += 1
        if lo_count <= count <= hi_count:
            break
        if count > hi_count:
            below = max(below, threshold)
        else:
            above = min(above, threshold)
        if np.isfinite(above):
            threshold = np.float32((below + above) / 2)
        else:
            threshold = np.float32(threshold * 2 if threshold > 0 else 1e-30)
    return threshold, count, passes


@_jit
def abs_into(values, out):
    for i in range(values.size):
        out[i] = abs(values[i])


@_jit
def count_above(values, threshold):
    n = 0
    for i in range(values.size):
        if abs(values[i]) > threshold:
            n += 1
    return n


@_jit
def gather_above(values, threshold, out):
    """|v| of the entries with |v| > threshold into ``out``; the count, or -1 if it
    would overflow ``out``."""
    n = 0
    for i in range(values.size):
        a = abs(values[i])
        if a > threshold:
            if n == out.size:
                return -1
            out[n] = a
            n += 1
    return n


@_jit
def take_top(values, threshold, k, offset, positions, negative, start):
    """Append to ``positions[start:]`` the entries of ``values`` with |v| > threshold,
    then those with |v| == threshold in index order, up to ``k`` in all; skip
    exact zeros (sign(0) = 0 sends nothing).  Returns the new end."""
    above = 0
    for i in range(values.size):
        if abs(values[i]) > threshold:
            above += 1
    ties = k - above
    end = start
    for i in range(values.size):
        v = values[i]
        a = abs(v)
        if a > threshold or (a == threshold and ties > 0):
            if a == threshold:
                ties -= 1
            if v != 0:
                positions[end] = offset + i
                negative[end] = v < 0
                end += 1
    return end


def warm_up() -> None:
    """Compile (or load from cache) every kernel before the first timed step."""
    values = np.array([0.5, -2.0, 0.0, 1.0], dtype=np.float32)
    scratch = np.empty(4, dtype=np.float32)
    pos = np.zeros(4, dtype=np.int64)
    neg = np.zeros(4, dtype=np.uint8)
    abs_into(values, scratch)
    count_above(values, np.float32(0.1))
    gather_above(values, np.float32(0.1), scratch)
    take_top(values, np.float32(0.5), 2, 0, pos, neg, 0)
