"""experiments/node_sum_ulps.py: the measurement behind docs/hierarchy.md's case for forwarding
means (a node sum moves the fp32 mean's last bits)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import node_sum_ulps  # noqa: E402


def test_one_node_is_the_flat_order_and_two_nodes_move_last_bits():
    rng = np.random.default_rng(1)
    grads = rng.standard_normal((8, 10_000), dtype=np.float32)
    flat, one_node = node_sum_ulps.means(grads, per_node=8)
    assert np.array_equal(flat.view(np.uint32), one_node.view(np.uint32))
    flat, two_nodes = node_sum_ulps.means(grads, per_node=4)
    ulps = np.abs(node_sum_ulps.ordered(flat) - node_sum_ulps.ordered(two_nodes))
    assert 0.2 < np.mean(ulps > 0) < 0.9 and np.median(ulps) <= 1


def test_ulps_count_float32_steps_across_zero():
    x = np.array([0.0, np.nextafter(np.float32(0), np.float32(1)), -0.0, 1.0], np.float32)
    pos = node_sum_ulps.ordered(x)
    assert pos[1] - pos[0] == 1 and pos[2] == pos[0]
    assert pos[3] - node_sum_ulps.ordered(np.array([np.nextafter(np.float32(1), np.float32(0))],
                                                   np.float32))[0] == 1
