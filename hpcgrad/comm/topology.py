"""Nodes of a parameter-server job: which workers share a node, their leader, and the
communicators a node-aware exchange runs on (``--hierarchy node``).

A node is a set of ranks that share memory: ``MPI_Comm_split_type(MPI_COMM_TYPE_SHARED)``
on the world, or, with ``--ranks-per-node K``, consecutive blocks of K world ranks
(``0..K-1``, ``K..2K-1``, ...; the last block is smaller when K does not divide the world
size), which lets one machine stand in for several.  Rank 0, the server, lives on the first
node like any rank, but it takes part in no node's combine: a node's **workers** are its
ranks other than 0.  A node with no worker (rank 0 alone on its node) has no group.

For each node with workers, the **leader** is its lowest worker rank.  Two kinds of
communicator are made, each by one ``MPI_Comm_split`` of the world (collective, every rank):

* ``node`` -- the workers of this rank's node, ordered by world rank, so the leader is rank
  0 of it; ``MPI_COMM_NULL`` (None here) on the server;
* ``leaders`` -- the server and every leader, ordered by world rank, so the server is rank 0
  of it and leader of node ``i`` is rank ``i + 1``; None on the other workers.

:class:`Topology` is the same on every rank (it is computed from one ``allgather`` of the
node keys), so every rank reaches the same verdict on bad input.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..options import Option

HIERARCHIES = ("flat", "node")

HIERARCHY = Option(
    "hierarchy", str, "flat", choices=HIERARCHIES,
    help="flat = every worker sends to the server; node = workers combine on their node "
         "first and one leader per node talks to the server: signum-mv sends its node's exact "
         "vote counts (combining), every other algorithm forwards its node's messages "
         "unchanged; the result is bit-identical to flat either way (docs/hierarchy.md)")
RANKS_PER_NODE = Option(
    "ranks_per_node", int, 0, bounds=">= 0", metavar="K",
    help="with --hierarchy node: nodes are consecutive blocks of K world ranks (rank 0, the "
         "server, is in the first; the last block may be smaller), to emulate nodes on one "
         "machine; 0 = the nodes MPI reports (MPI_COMM_TYPE_SHARED)")


def check_settings(cfg) -> None:
    """Rules between the hierarchy's settings and the others (every rank, before MPI)."""
    if cfg.ranks_per_node and cfg.hierarchy != "node":
        raise ConfigError(f"--ranks-per-node {cfg.ranks_per_node} emulates nodes for "
                          "--hierarchy node; this run uses --hierarchy flat")
    algorithm = type(cfg).ALGORITHMS.get(cfg.algorithm)
    if cfg.hierarchy == "node" and getattr(algorithm, "topology", "") == "allreduce":
        raise ConfigError(f"--hierarchy node: --algorithm {cfg.algorithm} has no server to "
                          "aggregate at; it runs MPI_Allreduce, whose MPI implementation "
                          "already chooses its own node-aware algorithm")


@dataclass(frozen=True)
class Topology:
    """Which workers share a node, the same on every rank.

    ``groups[i]`` are the world ranks of node ``i``'s workers, ascending; nodes are ordered
    by their lowest rank, and nodes without workers are left out.  ``leaders[i]`` is
    ``groups[i][0]``."""

    groups: tuple
    #: How the nodes were found: "MPI_COMM_TYPE_SHARED" or "ranks-per-node K".
    source: str

    @property
    def leaders(self) -> tuple:
        return tuple(g[0] for g in self.groups)

    @property
    def workers(self) -> int:
        return sum(len(g) for g in self.groups)

    def node_of(self, rank: int) -> int:
        """The node index of worker ``rank``."""
        for i, group in enumerate(self.groups):
            if rank in group:
                return i
        raise ValueError(f"rank {rank} is no worker of this topology")

    def consecutive(self) -> bool:
        """True when the nodes, in order, hold the workers 1..M in rank order: a leader's
        node messages then fill one contiguous run of the server's slots."""
        return [r for g in self.groups for r in g] == list(range(1, self.workers + 1))

    def describe(self) -> str:
        sizes = [len(g) for g in self.groups]
        same = len(set(sizes)) == 1
        nodes = f"{len(sizes)} node{'s' if len(sizes) > 1 else ''}"
        shape = (f"{nodes} of {sizes[0]} worker{'s' if sizes[0] > 1 else ''}" if same
                 else f"{nodes} of {'+'.join(map(str, sizes))} workers")
        return f"{shape} ({self.source})"


def groups_from_keys(keys) -> tuple:
    """``keys[r]`` is the node of world rank ``r``: the worker groups (rank 0 left out)."""
    nodes: dict = {}
    for rank, key in enumerate(keys):
        if rank:
            nodes.setdefault(key, []).append(rank)
    return tuple(tuple(g) for g in sorted(nodes.values(), key=lambda g: g[0]))


def block_keys(world_size: int, ranks_per_node: int) -> list:
    """``--ranks-per-node K``: world rank ``r`` is on node ``r // K``."""
    if ranks_per_node < 1:
        raise ConfigError(f"--ranks-per-node must be at least 1, got {ranks_per_node}")
    return [rank // ranks_per_node for rank in range(world_size)]


def check(topology: Topology) -> None:
    """A hierarchy that combines nothing is refused."""
    if all(len(g) == 1 for g in topology.groups):
        raise ConfigError(f"--hierarchy node: every node has one worker "
                          f"({topology.describe()}): nothing to combine; use the flat "
                          "exchange (--hierarchy flat) or more ranks per node")


def discover(comm, ranks_per_node: int = 0) -> Topology:
    """Collective over ``comm``: the nodes of its ranks.  ``ranks_per_node`` 0 asks MPI
    (``MPI_COMM_TYPE_SHARED``; a node's key is the lowest rank on it, one ``MPI_Allreduce``
    of MIN on the shared communicator), otherwise blocks of that many ranks."""
    from mpi4py import MPI

    rank = comm.Get_rank()
    if ranks_per_node:
        keys = block_keys(comm.Get_size(), ranks_per_node)
        source = f"--ranks-per-node {ranks_per_node}"
    else:
        shared = comm.Split_type(MPI.COMM_TYPE_SHARED, key=rank)
        try:
            key = shared.allreduce(rank, op=MPI.MIN)
        finally:
            shared.Free()
        keys = comm.allgather(key)
        source = "MPI_COMM_TYPE_SHARED"
    return Topology(groups_from_keys(keys), source)


class NodeComms:
    """This rank's communicators of a :class:`Topology` (construct on every rank of
    ``comm``: two ``MPI_Comm_split`` calls, collective).

    ``node``: the workers of this rank's node (leader = rank 0), None on the server;
    ``leaders``: the server (rank 0) and the leaders in node order, None on other workers;
    ``is_leader``, ``node_index`` (None on the server)."""

    def __init__(self, comm, topology: Topology):
        from mpi4py import MPI

        rank = comm.Get_rank()
        self.topology = topology
        self.node_index = None if rank == 0 else topology.node_of(rank)
        self.is_leader = rank in topology.leaders
        node = comm.Split(MPI.UNDEFINED if rank == 0 else self.node_index, rank)
        self.node = None if node == MPI.COMM_NULL else node
        in_leaders = rank == 0 or self.is_leader
        leaders = comm.Split(0 if in_leaders else MPI.UNDEFINED, rank)
        self.leaders = None if leaders == MPI.COMM_NULL else leaders

    def free(self) -> None:
        for c in (self.node, self.leaders):
            if c is not None:
                c.Free()
        self.node = self.leaders = None
