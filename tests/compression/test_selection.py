"""The K rules and the shared top-K selector (hpcgrad.compression.selection)."""

import numpy as np
import pytest

from hpcgrad.compression.selection import (TopKSelector, k_by_fraction, k_by_votes,
                                           require_k_below_d)
from hpcgrad.errors import ConfigError


def test_k_by_fraction_is_ceil_and_within_one_and_n():
    assert k_by_fraction([100, 10, 1], 0.01) == [1, 1, 1]
    assert k_by_fraction([100, 10], 0.25) == [25, 3]
    assert k_by_fraction([7], 1.0) == [7]


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
