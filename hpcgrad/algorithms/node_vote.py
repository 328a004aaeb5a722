"""signum-mv's vote combined on the node (``--hierarchy node``, the combining mode).

A node leader holds its node's ``m`` uplinks (``sign1``, or ``ternary2`` with ``--tie
zero``) and sends the server one ``vote-counts`` message instead: the exact number of
negative votes per coordinate (``bit_length(m)`` bit planes), or with ``ternary2`` the signed
sum shifted by ``m`` (``bit_length(2m)`` planes).  The server adds the nodes' counts and takes
the majority with :class:`~hpcgrad.algorithms.signum_mv.SignumMV`'s rule -- tie ``positive``
votes +1, ``random`` takes the same (seed, step) coins (``SignumMV.tie_coins``), ``zero``
leaves a tied coordinate at 0 -- so the downlink is byte for byte the flat vote's, and so are
the parameters.  The counts are exact integers: adding them in any order gives the same sum,
which is why the vote, unlike an fp32 mean, can be combined on the node bit-identically.

Adversaries (``--adversaries``) corrupt their own uplink before the leader counts it, exactly
as in the flat run.
"""

from __future__ import annotations

from ..kernels import vote_counts
from ..kernels.generic import TIE_RANDOM, TIE_ZERO
from ..wire import Header
from ..wire.codecs import TERNARY2, VOTE_COUNTS
from .signum_mv import SignumMV


def supports(alg) -> bool:
    """Whether ``alg``'s aggregation can be combined on the node (else it is forwarded)."""
    return type(alg) is SignumMV


class NodeVote:
    """The combine (leader) and the vote from the nodes' counts (server) of one
    :class:`SignumMV`."""

    def __init__(self, alg: SignumMV):
        self.alg = alg
        self.signed = alg.tie == TIE_ZERO
        self.node_levels = []
        vote_counts.warm_up()

    def node_header(self, voters: int, leader: int) -> Header:
        """The header of a node's message: ``voters`` workers counted, sent by ``leader``."""
        flags = VOTE_COUNTS.flags_for(voters, self.signed)
        d = self.alg.num_params
        return Header(VOTE_COUNTS.id, d, VOTE_COUNTS.body_length(d, flags), 0, leader, flags)

    def combine(self, rows, message) -> None:
        """Leader: the counts of the node's bodies ``rows`` (m x padded body) into the
        fixed-length ``message`` (a ``MessageBuffer`` with this node's header)."""
        vote_counts.count_votes(rows, self.alg.num_params, self.signed, message.padded_body)

    def server_step(self, ctx, node_rows, downlink) -> None:
        """Server: the flat vote's downlink body from the nodes' counts (``node_rows``: one
        padded ``vote-counts`` body per node, in node order, headers already checked)."""
        alg, d = self.alg, self.alg.num_params
        levels = self.node_levels
        if self.signed:
            nonzero, negative = TERNARY2.planes(downlink.padded_body, d)
            vote_counts.vote_from_counts(node_rows, levels, d, alg.num_workers, True,
                                         alg.tie, alg.tie_bits, nonzero, negative)
            return
        tie_bits = alg.tie_coins(ctx) if alg.tie == TIE_RANDOM else alg.tie_bits
        vote_counts.vote_from_counts(node_rows, levels, d, alg.num_workers, False, alg.tie,
                                     tie_bits, downlink.padded_body, downlink.padded_body)

    def set_nodes(self, headers) -> None:
        """The node headers (node order) the server receives: its planes per node."""
        self.node_levels = [VOTE_COUNTS.levels(h.flags) for h in headers]
