"""The compiled CPU kernels produce exactly the bytes of the generic reference."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from hpcgrad.kernels import cpu, generic
from hpcgrad.kernels.generic import TIE_POSITIVE, TIE_RANDOM, TIE_ZERO
from hpcgrad.wire import round_up

LENGTHS = [0, 1, 7, 8, 9, 63, 64, 65, 127, 128, 1000, 4099]
floats = st.floats(width=32, allow_nan=False, allow_infinity=False)


def padded(count):
    return np.zeros(round_up((count + 7) // 8) or 8, dtype=np.uint8)


def values(n, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n).astype(np.float32)
    x[::5] = 0.0
    x[1::11] = -0.0
    return x


@pytest.mark.parametrize("n", LENGTHS)
def test_sign_pack_matches_reference(n):
    x = values(n)
    a, b = padded(n), padded(n)
    cpu.sign_pack(x, a)
    generic.sign_pack(x, b)
    assert a.tobytes() == b.tobytes()
    assert not a[(n + 7) // 8:].any()


@pytest.mark.parametrize("n", LENGTHS)
def test_magnitude_sum_adds_in_index_order_in_float64(n):
    x = values(n) * np.float32(1e3)
    running = 0.0
    for v in x.tolist():
        running += abs(v)
    assert cpu.magnitude_sum(x) == generic.magnitude_sum(x) == running


def test_sign_layout_is_lsb_first_one_is_negative():
    x = np.array([0.5, -1, 0, -2, 3, -0.0, 7, -8, 1], dtype=np.float32)
    out = padded(x.size)
    cpu.sign_pack(x, out)
    # bits 1, 3 and 7 of byte 0 are negative; -0.0 and 0 count as +1
    assert out[0] == 0b10001010 and out[1] == 0


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("workers", [1, 2, 3, 4, 5, 8, 15, 16])
@pytest.mark.parametrize("tie", [TIE_POSITIVE, TIE_ZERO, TIE_RANDOM])
def test_majority_vote_matches_reference(n, workers, tie):
    rng = np.random.default_rng(n * 100 + workers)
    rows = np.zeros((workers, padded(n).size), dtype=np.uint8)
    for k in range(workers):
        # correlated signs so that ties and majorities both occur
        generic.sign_pack(values(n, seed=k % 3) * rng.choice([1, -1], n).astype(np.float32)
                          if k % 2 else values(n), rows[k])
    tie_bits = padded(n)
    generic.sign_pack(rng.standard_normal(n).astype(np.float32), tie_bits)
    outs = [padded(n) for _ in range(4)]
    cpu.majority_vote(rows, n, tie, tie_bits, outs[0], outs[1])
    generic.majority_vote(rows, n, tie, tie_bits, outs[2], outs[3])
    assert outs[0].tobytes() == outs[2].tobytes()
    if tie == TIE_ZERO:
        assert outs[1].tobytes() == outs[3].tobytes()


def test_vote_reads_strided_rows_in_place():
    # rows as the transport lays them out: every slot 8-byte aligned, with a header gap
    n, workers, slot = 1000, 5, 32 + round_up(125)
    raw = np.zeros(workers * slot, dtype=np.uint8)
    rows = raw.reshape(workers, slot)[:, 32:]
    for k in range(workers):
        generic.sign_pack(values(n, seed=k), rows[k])
    a, b = padded(n), padded(n)
    cpu.majority_vote(rows, n, TIE_POSITIVE, a, a, a)
    generic.majority_vote(np.ascontiguousarray(rows), n, TIE_POSITIVE, b, b, b)
    assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("beta", [0.0, 0.9])
def test_momentum_sign_pack_matches_reference(n, beta):
    g, m0 = values(n, 1), values(n, 2)
    m1, m2 = m0.copy(), m0.copy()
    a, b = padded(n), padded(n)
    beta32, omb = np.float32(beta), np.float32(1 - beta)
    cpu.momentum_sign_pack(g, m1, beta32, omb, a)
    generic.momentum_sign_pack(g, m2, beta32, omb, b)
    assert a.tobytes() == b.tobytes()
    assert m1.tobytes() == m2.tobytes()


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_fused_updates_match_reference_bitwise(n, wd):
    lr, wd = np.float32(0.003), np.float32(wd)
    signs, negs = padded(n), padded(n)
    generic.sign_pack(values(n, 3), signs)
    generic.sign_pack(values(n, 4), negs)
    nonzero = padded(n)
    generic.sign_pack(-np.abs(values(n, 5)), nonzero)
    negs &= nonzero
    for update, planes in ((cpu.apply_sign_update, (signs,)),
                           (cpu.apply_ternary_update, (nonzero, negs))):
        x1, x2 = values(n, 6), values(n, 6)
        update(x1, *planes, lr, wd)
        getattr(generic, update.__name__)(x2, *planes, lr, wd)
        assert x1.tobytes() == x2.tobytes()


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, st.integers(0, 300), elements=floats))
def test_sign_pack_property(x):
    a, b = padded(x.size), padded(x.size)
    cpu.sign_pack(x, a)
    generic.sign_pack(x, b)
    assert a.tobytes() == b.tobytes()
    decoded = generic.decode_signs(a, x.size)
    assert np.array_equal(decoded, np.where(x < 0, -1, 1).astype(np.float32))


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("workers", [1, 2, 3, 4, 7, 8])
def test_ternary_pack_and_vote_match_reference(n, workers):
    stride = round_up((n + 7) // 8)
    width = stride + (stride or 8)
    rows = np.zeros((workers, width), dtype=np.uint8)
    for k in range(workers):
        v = np.sign(values(n, seed=k % 4)).astype(np.float32)
        if k % 3 == 2:
            v = -v
        cpu.ternary_pack(v, rows[k, :stride], rows[k, stride:])
        a = np.zeros(width, np.uint8)
        generic.ternary_pack(v, a[:stride], a[stride:])
        assert a.tobytes() == rows[k].tobytes()
    outs = [padded(n) for _ in range(4)]
    cpu.ternary_vote(rows, n, stride, outs[0], outs[1])
    generic.ternary_vote(rows, n, stride, outs[2], outs[3])
    assert outs[0].tobytes() == outs[2].tobytes() and outs[1].tobytes() == outs[3].tobytes()


@pytest.mark.parametrize("n", [0, 5, 64, 1000])
@pytest.mark.parametrize("beta", [0.0, 0.9])
def test_momentum_ternary_pack_matches_reference(n, beta):
    g, m0 = values(n, 1), values(n, 2)
    m1, m2 = m0.copy(), m0.copy()
    a, b = padded(n), padded(n)
    c, e = padded(n), padded(n)
    cpu.momentum_ternary_pack(g, m1, np.float32(beta), np.float32(1 - beta), a, c)
    generic.momentum_ternary_pack(g, m2, np.float32(beta), np.float32(1 - beta), b, e)
    assert (a.tobytes(), c.tobytes()) == (b.tobytes(), e.tobytes())
    assert m1.tobytes() == m2.tobytes()
