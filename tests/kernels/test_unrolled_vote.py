"""The straight-line vote for small M (kernels/unrolled_vote.py) equals the reference.

cpu.majority_vote takes it for M <= MAX_WORKERS and the blocked kernel above; both
read the rows in place when they lie in 8-byte-aligned slots (the transport's layout)
and from a contiguous copy otherwise.
"""

import numpy as np
import pytest

from hpcgrad.kernels import cpu, generic, unrolled_vote
from hpcgrad.kernels.generic import TIE_POSITIVE, TIE_RANDOM, TIE_ZERO
from hpcgrad.wire import round_up

LENGTHS = [1, 63, 64, 65, 1000, 4099, 70001]
WORKERS = list(range(1, unrolled_vote.MAX_WORKERS + 1)) + [17, 18]


def _rows(n, workers, slot_gap, seed):
    """Random packed messages in slots of a transport-like buffer (zero padding bits)."""
    rng = np.random.default_rng(seed)
    body = round_up((n + 7) // 8)
    slot = body + slot_gap
    raw = np.zeros(workers * slot, dtype=np.uint8)
    rows = raw.reshape(workers, slot)[:, slot_gap:]
    signs = rng.standard_normal((workers, n)).astype(np.float32)
    signs[1::2] = np.abs(signs[0]) * rng.choice([1, -1], n)  # correlated rows: ties occur
    for k in range(workers):
        generic.sign_pack(signs[k], rows[k])
    return rows


@pytest.mark.parametrize("workers", WORKERS)
@pytest.mark.parametrize("tie", [TIE_POSITIVE, TIE_ZERO, TIE_RANDOM])
@pytest.mark.parametrize("slot_gap", [0, 32, 8])
def test_vote_matches_reference_every_small_m(workers, tie, slot_gap):
    for n in LENGTHS:
        rows = _rows(n, workers, slot_gap, seed=n + workers)
        pad = rows.shape[1]
        tie_bits = np.random.default_rng(n).integers(0, 256, pad, dtype=np.uint8)  # dirty tail
        got = [np.full(pad, 0xAA, np.uint8) for _ in range(2)]
        want = [np.zeros(pad, np.uint8) for _ in range(2)]
        cpu.majority_vote(rows, n, tie, tie_bits, got[0], got[1])
        generic.majority_vote(np.ascontiguousarray(rows), n, tie, tie_bits, want[0], want[1])
        nbytes = (n + 7) // 8
        assert got[0][:nbytes].tobytes() == want[0][:nbytes].tobytes(), n
        assert not got[0][nbytes:round_up(nbytes)].any()  # tail bits of the last word are 0
        if tie == TIE_ZERO:
            assert got[1][:nbytes].tobytes() == want[1][:nbytes].tobytes(), n


def test_vote_of_unaligned_or_strided_rows_uses_a_copy():
    n, workers = 1000, 5
    rows = _rows(n, workers, 0, seed=1)
    wide = np.zeros((workers, rows.shape[1] * 2), np.uint8)
    wide[:, ::2] = rows  # byte stride 2: not viewable as words
    a, b = np.zeros(rows.shape[1], np.uint8), np.zeros(rows.shape[1], np.uint8)
    cpu.majority_vote(wide[:, ::2], n, TIE_POSITIVE, a, a, a)
    generic.majority_vote(rows, n, TIE_POSITIVE, b, b, b)
    assert a.tobytes() == b.tobytes()


def test_source_is_straight_line():
    src = unrolled_vote.source(4)
    assert src.count("for ") == 3  # one loop over words per tie rule, none over workers
    with pytest.raises(ValueError):
        unrolled_vote.kernel(unrolled_vote.MAX_WORKERS + 1)
