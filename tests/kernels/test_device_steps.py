"""The device-side top-K selection (hpcgrad/kernels/device_steps.py), run with NumPy arrays,
selects what the CPU path selects: the same positions, in the same order, with the same sign
bits, for both rules -- odd lengths, ties at the K-th magnitude, exact zeros, infinities,
several tensors, tensors large enough for the CPU path's candidate filtering and sampling."""

import numpy as np
import pytest

from hpcgrad.compression.selection import TopKSelector, k_by_fraction
from hpcgrad.kernels.device_steps import DeviceTopKSelector
from hpcgrad.wire.codecs import segment_offsets


def both(values, segments, ks, rule):
    offsets = segment_offsets(segments)
    cpu = TopKSelector(offsets, segments, ks, rule)
    dev = DeviceTopKSelector(offsets, segments, ks, rule)
    cap = cpu.capacity + len(segments)
    got = [(np.zeros(cap, np.int64), np.zeros(cap, np.uint8)) for _ in range(2)]
    n_cpu = cpu.select(values, *got[0])
    n_dev, positions = dev.select(values, *got[1])
    assert n_dev == n_cpu
    np.testing.assert_array_equal(got[1][0][:n_dev], got[0][0][:n_cpu])
    np.testing.assert_array_equal(got[1][1][:n_dev], got[0][1][:n_cpu])
    np.testing.assert_array_equal(positions, got[0][0][:n_cpu])
    return n_cpu


def vectors(seed, n):
    """Gaussian, heavily tied (few distinct magnitudes, zeros), and with +-inf."""
    rng = np.random.default_rng(seed)
    yield rng.standard_normal(n).astype(np.float32)
    yield (rng.integers(-3, 4, n) * np.float32(0.5)).astype(np.float32)
    v = rng.standard_normal(n).astype(np.float32)
    v[rng.integers(0, n, 3)] = np.inf
    v[rng.integers(0, n, 2)] = -np.inf
    yield v
    yield np.zeros(n, np.float32)


@pytest.mark.parametrize("rule", ["exact", "threshold"])
@pytest.mark.parametrize("segments", [(1,), (7,), (13, 1, 30), (1001, 3), (70001,), (200003, 17)])
@pytest.mark.parametrize("sparsity", [0.01, 0.3, 1.0])
def test_selection_equals_the_cpu_path(rule, segments, sparsity):
    ks = k_by_fraction(segments, sparsity)
    for seed in (0, 1):
        for values in vectors(seed, sum(segments)):
            both(values, segments, ks, rule)


def test_ties_at_the_kth_magnitude_are_taken_in_index_order():
    values = np.array([0.5, -1, 1, 0, -1, 1, 0.25], np.float32)
    offsets = segment_offsets((7,))
    positions, negative = np.zeros(8, np.int64), np.zeros(8, np.uint8)
    nnz, _ = DeviceTopKSelector(offsets, (7,), [3]).select(values, positions, negative)
    assert nnz == 3
    np.testing.assert_array_equal(positions[:3], [1, 2, 4])
    np.testing.assert_array_equal(negative[:3], [1, 0, 1])
    assert both(values, (7,), [3], "exact") == 3
