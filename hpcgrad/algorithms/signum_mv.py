"""signSGD / Signum with majority vote (Bernstein et al., ICLR 2019).

Worker: ``m <- beta*m + (1-beta)*g``; uplink ``sign(m)``.  beta = 0 is plain
signSGD.  Server: ``v = sum_m sign(m_m)``; downlink ``sign(v)``.

The tie rule is the convention for sign(0), both for a zero entry of ``m`` and
for a tied vote (as many + as - votes):

* ``positive`` -- sign(0) = +1, as in the majority-vote paper's packing:
  1 bit per coordinate each way (``sign1``);
* ``random``   -- zero entries send +1; a tied vote takes a coin seeded by
  (seed, step): 1 bit each way.  *Our invention*, in neither paper;
* ``zero``     -- sign(0) = 0, as in the 2018 experiments: a zero entry votes 0
  and a tied coordinate does not move.  A 1-bit body cannot carry 0, so both
  directions use ``ternary2`` (2 bits per coordinate).

Every rank: ``x <- x - lr*(sign(v) + wd*x)`` (weight decay after the vote),
fused with decoding the packed downlink (so the ``decode`` phase is empty).
"""

from __future__ import annotations

import numpy as np

from .. import kernels
from ..wire.codecs import SIGN1, TERNARY2
from ..kernels.generic import TIE_POSITIVE, TIE_RANDOM, TIE_ZERO
from ..options import Option
from ..wire import round_up
from .base import Algorithm, f32

TIE_CODES = {"positive": TIE_POSITIVE, "zero": TIE_ZERO, "random": TIE_RANDOM}

TIE = Option("tie", str, "positive", choices=tuple(TIE_CODES),
             unknown="unknown tie rule {value!r}; choose one of: " + ", ".join(TIE_CODES),
             help="the vote for a tied coordinate (even worker count): positive = +1 (the "
                  "2019 paper's packing), random = seeded coin (ours), zero = no move, as "
                  "in the 2018 paper (needs a 2-bit downlink)")


class SignumMV(Algorithm):
    name = "signum-mv"
    summary = "Signum / signSGD with majority vote, 1 bit per coordinate each way"
    order = 10
    docs = "docs/algorithms/signum-mv.md"
    options = (TIE,)
    # A sign step moves every coordinate by lr: far smaller than SGD's lr.
    defaults = {"lr": 0.001, "momentum": 0.9}
    state_names = ("momentum",)

    def __init__(self, config, num_params, num_workers, segments=None):
        super().__init__(config, num_params, num_workers, segments)
        self.beta = f32(config.momentum)
        self.one_minus_beta = f32(1.0 - config.momentum)
        self.lr, self.wd = f32(config.lr), f32(config.weight_decay)
        self.tie = TIE_CODES[config.tie]
        self.uplink = self.downlink = TERNARY2 if self.tie == TIE_ZERO else SIGN1
        self.momentum = None  # worker state, allocated on first use
        self.tie_bits = np.zeros(round_up(SIGN1.body_length(num_params)), dtype=np.uint8)
        kernels.warm_up(self.tie_bits)
        # The server's vote is compiled per worker count: do it now, not inside step 0.
        rows = np.zeros((num_workers, 16), np.uint8)
        a, b = np.zeros(8, np.uint8), np.zeros(8, np.uint8)
        if self.tie == TIE_ZERO:
            kernels.for_array(rows).ternary_vote(rows, 1, 8, a, b)
        else:
            kernels.for_array(rows).majority_vote(rows, 1, self.tie, a, a, b)

    def worker_step(self, ctx, grad, uplink):
        if self.momentum is None:
            self.momentum = kernels.array_module(grad).zeros_like(grad)
        k = kernels.for_array(grad)
        if self.uplink is TERNARY2:
            nonzero, negative = TERNARY2.planes(uplink.padded_body, self.num_params)
            k.momentum_ternary_pack(grad, self.momentum, self.beta, self.one_minus_beta,
                                    nonzero, negative)
        else:
            k.momentum_sign_pack(grad, self.momentum, self.beta, self.one_minus_beta,
                                 uplink.padded_body)

    def tie_coins(self, ctx) -> np.ndarray:
        """``--tie random``: the coins of step ``ctx.step`` (bit i: a tied coordinate i votes
        negative), seeded by (seed, step), into ``self.tie_bits``; also the node-aware vote's
        (hpcgrad/algorithms/node_vote.py).

        The coin of coordinate i is bit i of the step's byte stream, i counted in the whole
        flat vector: a shard (``--servers``) starting at a word takes its bytes from start/8
        on, so every coordinate gets the coin it gets with one server."""
        rng = np.random.default_rng([self.config.seed, ctx.step, 0x7E])
        nbytes, first = SIGN1.body_length(self.num_params), ctx.shard.start // 8
        self.tie_bits[:nbytes] = np.frombuffer(rng.bytes(first + nbytes), dtype=np.uint8,
                                               offset=first)
        return self.tie_bits

    def server_step(self, ctx, uplinks, downlink):
        d = self.num_params
        if self.tie == TIE_RANDOM:
            self.tie_coins(ctx)
        k = kernels.for_array(uplinks.rows)
        if self.tie == TIE_ZERO:
            nonzero, negative = TERNARY2.planes(downlink.padded_body, d)
            k.ternary_vote(uplinks.rows, d, TERNARY2.plane_stride(d), nonzero, negative)
        else:
            k.majority_vote(uplinks.rows, d, self.tie, self.tie_bits, downlink.padded_body,
                            downlink.padded_body)

    def decode(self, ctx, downlink):
        return downlink.padded_body  # the update kernel decodes the packed signs itself

    def apply(self, ctx, body):
        params = ctx.params
        k = kernels.for_array(params)
        if self.downlink is TERNARY2:
            nonzero, negative = TERNARY2.planes(body, self.num_params)
            k.apply_ternary_update(params, nonzero, negative, self.lr, self.wd)
        else:
            k.apply_sign_update(params, body, self.lr, self.wd)
