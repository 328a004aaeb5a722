"""hpcgrad/compression/selection.py: the K rules, ``TopK``'s two selection rules per tensor and
the ``TopKSelector`` every top-K user shares.

``exact`` is checked against NumPy (``argpartition``'s set where magnitudes are distinct, a
full sort by |v| then index where they tie), on both of its paths (a partition of |v| for
small tensors, candidate filtering for large ones); ``threshold`` against ``exact`` within
its band, and its fall-back to ``exact`` when ties defeat the band.
"""

import math

import numpy as np
import pytest

from hpcgrad.compression.selection import (TopK, TopKSelector, k_by_fraction, k_by_votes,
                                           require_k_below_d)
from hpcgrad.errors import ConfigError


def select(selector, values, start=0, positions=None, negative=None):
    """Run ``selector`` on ``values``; return (positions, negative flags) it appended."""
    n = selector.size
    positions = np.full(start + n, -1, np.int64) if positions is None else positions
    negative = np.full(start + n, 2, np.uint8) if negative is None else negative
    end = selector.select(values, positions, negative, start)
    return positions[start:end], negative[start:end]


@pytest.mark.parametrize("n, k", [(10, 1), (1000, 10), (1000, 999), (70_000, 700),
                                  (300_000, 3_000)])  # the last two filter candidates
def test_exact_selection_is_argpartitions_set_sorted_with_signs(n, k):
    rng = np.random.default_rng(n + k)
    values = (rng.permutation(np.arange(1, n + 1)) * rng.choice([-1.0, 1.0], n))
    values = (values / n).astype(np.float32)  # distinct magnitudes
    assert np.unique(np.abs(values)).size == n
    positions, negative = select(TopK(0, n, k), values)
    expected = np.sort(np.argpartition(-np.abs(values), k - 1)[:k])
    np.testing.assert_array_equal(positions, expected)
    np.testing.assert_array_equal(negative, values[expected] < 0)


def test_exact_selection_breaks_ties_by_index_and_skips_zeros():
    values = np.array([0, 2, -2, 1, 2, 0, 0], dtype=np.float32)
    pos = np.zeros(7, dtype=np.int64)
    neg = np.zeros(7, dtype=np.uint8)
    end = TopK(0, 7, 2).select(values, pos, neg, 0)
    np.testing.assert_array_equal(pos[:end], [1, 2])
    end = TopK(0, 7, 6).select(values, pos, neg, 0)  # K reaches the zeros: not sent
    np.testing.assert_array_equal(pos[:end], [1, 2, 3, 4])
    np.testing.assert_array_equal(neg[:end], [0, 1, 0, 0])


@pytest.mark.parametrize("magnitudes", ["distinct", "ties"])
def test_exact_selection_by_candidate_filtering_equals_a_full_sort(magnitudes):
    n, k = 300_000, 3_000  # large enough for the candidate-filtering path
    rng = np.random.default_rng(7)
    if magnitudes == "ties":  # 50 distinct magnitudes: the K-th is tied many times over
        values = rng.integers(1, 51, n).astype(np.float32)
    else:
        values = rng.standard_normal(n).astype(np.float32)
    values *= rng.choice([-1, 1], n).astype(np.float32)
    pos, neg = np.zeros(n, np.int64), np.zeros(n, np.uint8)
    end = TopK(0, n, k).select(values, pos, neg, 0)
    order = np.lexsort((np.arange(n), -np.abs(values)))  # by |v| down, then index up
    np.testing.assert_array_equal(pos[:end], np.sort(order[:k]))


@pytest.mark.parametrize("rule", ["exact", "threshold"])
def test_segments_append_global_positions_after_each_other(rule):
    """Each selector covers ``[offset, offset + size)`` of the flat vector: its positions are
    global and land after what the previous segment wrote."""
    rng = np.random.default_rng(3)
    sizes, ks = [50, 20_000, 7], [5, 200, 1]
    flat = rng.standard_normal(sum(sizes)).astype(np.float32)
    positions = np.full(sum(ks) * 2, -1, np.int64)
    negative = np.zeros(sum(ks) * 2, np.uint8)
    end, offset, expected = 0, 0, []
    for n, k in zip(sizes, ks):
        selector = TopK(offset, n, k, rule)
        end = selector.select(flat[offset:offset + n], positions, negative, end)
        expected.append(offset + np.sort(np.argsort(-np.abs(flat[offset:offset + n]))[:k]))
        offset += n
    got = positions[:end]
    assert np.all(np.diff(got) > 0)
    if rule == "exact":
        np.testing.assert_array_equal(got, np.concatenate(expected))
    else:  # the small segments are exact; the large one's count is within the band
        np.testing.assert_array_equal(got[:5], expected[0])
        np.testing.assert_array_equal(got[-1:], expected[2])
        assert 180 <= end - 6 <= 220
    np.testing.assert_array_equal(negative[:end], flat[got] < 0)


@pytest.mark.parametrize("n, k", [(200_000, 200), (200_000, 2_000), (200_000, 20_000),
                                  (50_000, 5_000), (1000, 10)])
def test_threshold_selection_agrees_with_exact_within_the_band(n, k):
    rng = np.random.default_rng(n + k)
    magnitudes = rng.permutation(np.arange(1, n + 1)) ** 2.0  # distinct, skewed: no ties
    values = (magnitudes * rng.choice([-1.0, 1.0], n)).astype(np.float32)
    assert np.unique(np.abs(values)).size == n
    pos_e, neg_e = np.zeros(n, np.int64), np.zeros(n, np.uint8)
    pos_t, neg_t = np.zeros(n, np.int64), np.zeros(n, np.uint8)
    exact = set(pos_e[: TopK(0, n, k).select(values, pos_e, neg_e, 0)])
    end = TopK(0, n, k, rule="threshold", band=0.1).select(values, pos_t, neg_t, 0)
    fast = set(pos_t[:end])
    assert math.floor(0.9 * k) <= len(fast) <= math.ceil(1.1 * k)
    assert (exact <= fast) if len(fast) >= k else (fast <= exact)
    assert np.all(np.diff(pos_t[:end]) > 0)
    np.testing.assert_array_equal(neg_t[:end], values[pos_t[:end]] < 0)


def test_threshold_selection_falls_back_to_exact_when_ties_defeat_the_band():
    n, k = 100_000, 1000
    values = np.ones(n, dtype=np.float32)  # every magnitude ties: no threshold splits them
    values[::3] = -1
    pos, neg = np.zeros(n, np.int64), np.zeros(n, np.uint8)
    sel = TopK(0, n, k, rule="threshold")
    end = sel.select(values, pos, neg, 0)
    assert end == k and sel.fallbacks == 1
    np.testing.assert_array_equal(pos[:end], np.arange(k))  # ties in index order


@pytest.mark.parametrize("k", [0, 8])
def test_a_k_outside_the_tensor_is_refused(k):
    with pytest.raises(ValueError, match=f"K = {k} is not within 1..7"):
        TopK(0, 7, k)


def test_k_by_fraction_is_ceil_and_within_one_and_n():
    assert k_by_fraction([100, 10, 1], 0.01) == [1, 1, 1]
    assert k_by_fraction([100, 10], 0.25) == [25, 3]
    assert k_by_fraction([7], 1.0) == [7]
    assert k_by_fraction([1001], 0.05) == [51]  # ceil(50.05)


def test_k_by_votes_is_c_d_over_m_and_names_the_setting():
    assert k_by_votes([1000, 10], 1.0, 4, "s3gd-mv") == [250, 3]
    with pytest.raises(ConfigError, match="s3gd-mv: --votes-per-coordinate 6.0 over 4 "
                                          "workers asks K = 1500 entries of a tensor of 1000"):
        k_by_votes([1000], 6.0, 4, "s3gd-mv")


def test_top_k_needs_k_below_d():
    assert require_k_below_d([1, 2], [5, 5], "topk", "--sparsity 0.3") == [1, 2]
    with pytest.raises(ConfigError, match="topk: --sparsity 1.0 selects K = 10 of d = 10 "
                                          "coordinates; top-K needs K < d"):
        require_k_below_d([5, 5], [5, 5], "topk", "--sparsity 1.0")


def test_the_selector_takes_k_per_tensor_in_global_positions():
    values = np.array([5, -1, 2, 0, -7, 3, 1], np.float32)
    selector = TopKSelector(np.array([0, 3, 7]), [3, 4], [1, 2])
    assert selector.capacity == 3
    pos, neg = np.zeros(3, np.int64), np.zeros(3, np.uint8)
    end = selector.select(values, pos, neg)
    assert pos[:end].tolist() == [0, 4, 5] and neg[:end].tolist() == [0, 1, 0]


def test_threshold_capacity_and_unknown_rule():
    assert TopKSelector(np.array([0, 1000]), [1000], [100], "threshold").capacity == 110
    with pytest.raises(ConfigError, match="unknown selection 'fastest'"):
        TopKSelector(np.array([0, 10]), [10], [1], "fastest")
