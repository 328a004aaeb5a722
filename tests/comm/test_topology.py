"""Nodes and leaders of ``--hierarchy node`` (hpcgrad/comm/topology.py) without MPI, and the
settings' bad input.  The communicators and the exchange run under mpiexec in
tests/training/test_hierarchy_mpi.py."""

from __future__ import annotations

import pytest

from hpcgrad.comm.topology import Topology, block_keys, check, groups_from_keys
from hpcgrad.errors import ConfigError
from hpcgrad.training.config import TrainConfig


@pytest.mark.parametrize("world, k, groups", [
    (5, 2, ((1,), (2, 3), (4,))),
    (5, 3, ((1, 2), (3, 4))),
    (9, 5, ((1, 2, 3, 4), (5, 6, 7, 8))),
    (9, 2, ((1,), (2, 3), (4, 5), (6, 7), (8,))),   # the last node smaller
    (4, 10, ((1, 2, 3),)),                           # K past the world: one node
])
def test_blocks_of_k_ranks_leave_the_server_out(world, k, groups):
    topology = Topology(groups_from_keys(block_keys(world, k)), f"--ranks-per-node {k}")
    assert topology.groups == groups
    assert topology.leaders == tuple(g[0] for g in groups)
    assert topology.workers == world - 1 and topology.consecutive()


def test_nodes_in_any_placement_are_ordered_by_their_lowest_rank():
    # a round-robin placement: ranks 0, 2, 4 on one node, 1, 3, 5 on the other
    topology = Topology(groups_from_keys([0, 1, 0, 1, 0, 1]), "MPI_COMM_TYPE_SHARED")
    assert topology.groups == ((1, 3, 5), (2, 4)) and not topology.consecutive()
    assert topology.node_of(4) == 1 and topology.describe().startswith("2 nodes of 3+2")


def test_a_hierarchy_with_nothing_to_combine_is_refused():
    with pytest.raises(ConfigError, match="every node has one worker .*nothing to combine; "
                                          "use the flat exchange"):
        check(Topology(groups_from_keys(block_keys(5, 1)), "--ranks-per-node 1"))
    with pytest.raises(ConfigError, match="at least 1"):
        block_keys(5, 0)
    check(Topology(groups_from_keys(block_keys(5, 2)), "--ranks-per-node 2"))  # one pair: ok


@pytest.mark.parametrize("settings, message", [
    ({"ranks_per_node": 2}, "--ranks-per-node 2 emulates nodes for --hierarchy node; this "
                            "run uses --hierarchy flat"),
    ({"hierarchy": "node", "ranks_per_node": -1}, "ranks-per-node must be an integer >= 0"),
    ({"hierarchy": "tree"}, "hierarchy"),
    ({"hierarchy": "node", "algorithm": "allreduce"}, "--algorithm allreduce has no server"),
])
def test_bad_hierarchy_settings_are_named(settings, message):
    with pytest.raises(ConfigError, match=message.replace("-1", "-?1")):
        TrainConfig(**settings).resolved()
