"""``allreduce``: the data-parallel baseline, MPI_Allreduce over all ranks.

No server role and no header: every rank contributes a raw fp32 buffer
(rank 0 contributes zeros, so it can keep a replica, evaluate and log), the
sum is divided by M, and every rank takes the same momentum-SGD step as
``fp32-ps``.  Logged bytes are the Allreduce buffer length (4·d) each way; the
traffic on the links depends on MPI's algorithm (see docs/log-format.md).
"""

from __future__ import annotations

import numpy as np

from ..options import fail
from ..wire.codecs import FP32
from .base import Algorithm, MomentumSGD, f32


class AllreduceSGD(Algorithm):
    name = "allreduce"
    summary = "MPI_Allreduce data parallel, no server role"
    order = 90
    topology = "allreduce"
    state_names = ("sgd.buffer",)
    uplink = downlink = FP32

    @classmethod
    def check_settings(cls, cfg):
        fail(not cfg.record_messages, "record-messages: allreduce sends raw fp32 buffers, not "
             "hpcgrad messages; there is nothing to record")

    def __init__(self, config, num_params, num_workers, segments=None):
        super().__init__(config, num_params, num_workers, segments)
        self.sgd = MomentumSGD(num_params, config.lr, config.momentum, config.weight_decay)

    def worker_step(self, ctx, grad, sendbuf):
        np.copyto(sendbuf, grad)

    def decode(self, ctx, total):
        return total  # the Allreduce's fp32 sum: nothing to decode

    def apply(self, ctx, total):
        total /= f32(self.num_workers)
        self.sgd.step(ctx.params, total)
