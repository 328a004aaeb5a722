"""Residual + top-K selection in one pass (hpcgrad/compression/fused_selection.py) against the
reference ``selector.select(residual.compensate(g))``: the same positions, sign bits and
residual, bit for bit, over several steps."""

import numpy as np
import pytest

from hpcgrad.compression.feedback import Residual
from hpcgrad.compression.fused_selection import CompensatedTopK, NoUpdate, ResidualUpdate
from hpcgrad.compression.selection import TopKSelector, k_by_fraction
from hpcgrad.kernels import sparse
from hpcgrad.wire.codecs import segment_offsets


def run(grads, segments, ks, rho, forget, fused):
    """Select from every gradient in turn; the (positions, signs) of each step and the
    final residual (the gradient itself without one)."""
    offsets = segment_offsets(segments)
    selector = TopKSelector(offsets, segments, ks, "exact")
    memory = Residual(rho) if rho else None
    cap = sum(ks)
    pos, neg = np.zeros(cap, np.int64), np.zeros(cap, np.uint8)
    chosen = []
    helper = CompensatedTopK(selector) if fused else None
    for g in grads:
        if fused:
            update = NoUpdate(g) if memory is None else ResidualUpdate(memory, g)
            n = helper.select(update, pos, neg, forget=forget and memory is not None)
        else:
            v = g if memory is None else memory.compensate(g)
            n = selector.select(v, pos, neg)
            if forget and memory is not None:
                sparse.zero_at(memory.values, pos, 0, n)
        chosen.append((pos[:n].tobytes(), neg[:n].tobytes()))
    return chosen, (None if memory is None else memory.values.tobytes()), helper


def gradients(d, steps, seed, kind="normal"):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        if kind == "normal":
            g = rng.standard_normal(d).astype(np.float32)
            g[::7] = 0.0
            g[3::13] = -0.0
        elif kind == "ties":  # few distinct magnitudes: ties at the K-th everywhere
            g = rng.integers(-3, 4, d).astype(np.float32)
        else:  # "spiky": a few huge entries, the rest tiny (the sample misjudges K)
            g = (rng.standard_normal(d) * 1e-6).astype(np.float32)
            g[rng.integers(0, d, 50)] = 1e3
        out.append(g)
    return out


@pytest.mark.parametrize("segments", [[200_003], [70_001, 17, 131_101], [65_536, 65_537]])
@pytest.mark.parametrize("rho,forget", [(1.0, True), (0.9, True), (1.0, False), (0.0, False)])
def test_same_selection_and_residual_as_the_reference(segments, rho, forget):
    ks = k_by_fraction(segments, 0.01)
    grads = gradients(sum(segments), 3, sum(segments))
    ref, ref_e, _ = run(grads, segments, ks, rho, forget, fused=False)
    got, got_e, helper = run(grads, segments, ks, rho, forget, fused=True)
    assert got == ref
    assert got_e == ref_e
    assert helper.fallbacks == 0  # the fused path itself was measured, not the fallback


@pytest.mark.parametrize("kind", ["ties", "spiky"])
@pytest.mark.parametrize("fraction", [0.001, 0.05, 0.5])
def test_ties_and_misjudged_samples_match_the_reference(kind, fraction):
    segments = [100_001, 99_999]
    ks = k_by_fraction(segments, fraction)
    grads = gradients(sum(segments), 3, 5, kind)
    ref, ref_e, _ = run(grads, segments, ks, 1.0, True, fused=False)
    got, got_e, _ = run(grads, segments, ks, 1.0, True, fused=True)
    assert got == ref
    assert got_e == ref_e


def test_residual_restored_before_the_first_step_is_used():
    segments, ks = [100_000], [100]
    g = gradients(100_000, 1, 3)[0]
    restored = np.random.default_rng(4).standard_normal(100_000).astype(np.float32)
    results = []
    for fused in (False, True):
        memory = Residual(1.0)
        memory.values = restored.copy()
        selector = TopKSelector(segment_offsets(segments), segments, ks, "exact")
        pos, neg = np.zeros(100, np.int64), np.zeros(100, np.uint8)
        if fused:
            n = CompensatedTopK(selector).select(ResidualUpdate(memory, g), pos, neg,
                                                 forget=True)
        else:
            n = selector.select(memory.compensate(g), pos, neg)
            sparse.zero_at(memory.values, pos, 0, n)
        results.append((pos[:n].tobytes(), memory.values.tobytes()))
    assert results[0] == results[1]
