"""The server's aggregation of M sparse vectors: an M-way merge of sorted position lists.

``merge_vote`` sums ternary votes (S3GD-MV), ``merge_sum`` averages real values (top-K);
both walk the workers' lists once, in position order, and write the result in position
order, so it can be encoded again without sorting.
"""

from __future__ import annotations

import numpy as np

from ..jit import njit

_jit = njit(cache=True, nogil=True, boundscheck=False)


@_jit
def _smallest_head(positions, counts, heads):
    """The smallest position at the heads of the M sorted lists; -1 when all are spent."""
    p = -1
    for w in range(counts.size):
        if heads[w] < counts[w]:
            q = positions[w, heads[w]]
            if p < 0 or q < p:
                p = q
    return p


@_jit
def merge_vote(positions, negative, counts, heads, union_out, nonzero_pos, nonzero_neg):
    """Sum the M workers' ternary votes by merging their sorted position lists.

    ``positions``/``negative`` are (M x capacity); ``counts`` their lengths;
    ``heads`` (int64, M) is scratch.
    Writes the non-zero results (sign of the sum, ties -> 0) in position
    order; returns (union size, number of non-zeros)."""
    m = counts.size
    heads[:] = 0
    union = 0
    nnz = 0
    while True:
        p = _smallest_head(positions, counts, heads)
        if p < 0:
            break
        vote = 0
        for w in range(m):
            h = heads[w]
            if h < counts[w] and positions[w, h] == p:
                vote += -1 if negative[w, h] else 1
                heads[w] = h + 1
        union += 1
        if vote != 0:
            nonzero_pos[nnz] = p
            nonzero_neg[nnz] = vote < 0
            nnz += 1
    union_out[0] = union
    return nnz


@_jit
def merge_sum(positions, values, counts, heads, divisor, union_pos, union_val):
    """Mean of the M workers' sparse vectors by merging their sorted position lists.

    ``positions`` (int64) / ``values`` (float32) are (M x capacity); ``counts`` their
    lengths; ``heads`` (int64, M) is scratch.  At each position of the union, the
    workers' values are added in float32 in worker order, then divided by ``divisor``
    (float32: M for the mean).  Writes the union's positions and means in position
    order into ``union_pos``/``union_val`` (capacity >= the union's size, which is at
    most sum(counts)); returns the union's size."""
    m = counts.size
    heads[:] = 0
    union = 0
    while True:
        p = _smallest_head(positions, counts, heads)
        if p < 0:
            break
        total = np.float32(0)
        for w in range(m):
            h = heads[w]
            if h < counts[w] and positions[w, h] == p:
                total += values[w, h]
                heads[w] = h + 1
        union_pos[union] = p
        union_val[union] = total / divisor
        union += 1
    return union


def warm_up() -> None:
    """Compile (or load from cache) both merges before the first timed step."""
    pos = np.array([1, 4, 9], dtype=np.int64)
    neg = np.array([0, 1, 0], dtype=np.uint8)
    values = np.array([0.5, -2.0, 1.0], dtype=np.float32)
    counts = np.array([3, 3], dtype=np.int64)
    union = np.zeros(1, dtype=np.int64)
    merge_vote(np.stack([pos, pos]), np.stack([neg, neg]), counts, counts.copy(), union,
               pos.copy(), neg.copy())
    merge_sum(np.stack([pos, pos]), np.stack([values, values]), counts, counts.copy(),
              np.float32(2), pos.copy(), values.copy())
