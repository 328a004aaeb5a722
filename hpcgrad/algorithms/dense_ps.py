"""Uncompressed parameter-server SGD baselines: ``fp32-ps`` and ``fp16-ps``.

Worker: uplink the raw gradient (fp32, or rounded to fp16).  Server: the mean
of the M gradients, accumulated in fp32 in rank order, sent back in the same
precision.  Every rank then takes the same momentum-SGD step.  A fair
compression study compares against 16-bit as well as 32-bit.
"""

from __future__ import annotations

import numpy as np

from .. import kernels
from ..kernels import fused_fp16, fused_server
from ..wire.codecs import FP16, FP32
from .base import Algorithm, MomentumSGD, f32


class DensePS(Algorithm):
    codec = FP32
    state_names = ("sgd.buffer",)

    def __init__(self, config, num_params, num_workers, segments=None):
        super().__init__(config, num_params, num_workers, segments)
        self.uplink = self.downlink = self.codec
        self.mean = None  # fp32 scratch, allocated where it is used (host or GPU)
        self.sgd = MomentumSGD(num_params, config.lr, config.momentum, config.weight_decay)
        if self.codec is FP16:
            fused_fp16.warm_up()  # compiled now, not inside the first timed step

    def _values(self, body):
        return body[: self.codec.body_length(self.num_params)].view(self.codec.dtype)

    #: Worker steps through the fused kernels (issue 19); False: the reference path, the
    #: same bytes (bench micro times both).
    fused = True

    def worker_step(self, ctx, grad, uplink):
        if self.fused and self.codec is FP16 and isinstance(grad, np.ndarray):
            # NumPy's bits in one vectorized pass (NumPy's own cast is scalar, ~10x a copy).
            fused_fp16.round_to_fp16(grad, uplink.padded_body[: 2 * grad.size].view(np.uint16))
        else:
            self.codec.encode(grad, uplink.padded_body)

    def _scratch(self, like):
        if self.mean is None:
            self.mean = kernels.array_module(like).zeros(self.num_params, dtype=np.float32)
        return self.mean

    def server_step(self, ctx, uplinks, downlink):
        # The mean of the M bodies in one pass over the receive buffer, added in worker order
        # in float32 (kernels/fused_server.py): fp32's straight into the downlink body, which
        # is that mean; fp16's into self.mean, then rounded into the body.
        d, divisor = self.num_params, f32(self.num_workers)
        if self.codec is FP32:
            fused_server.fp32_mean(uplinks.values(FP32.dtype, d),
                                   downlink.padded_body[: 4 * d].view(FP32.dtype), divisor)
            return
        fused_server.fp16_mean(uplinks.values(np.uint16, d), self._scratch(uplinks.rows),
                               divisor)
        self.codec.encode(self.mean, downlink.padded_body)

    def decode(self, ctx, downlink):
        mean = self._scratch(ctx.params)
        mean[...] = self._values(downlink.padded_body)
        return mean

    def apply(self, ctx, mean):
        self.sgd.step(ctx.params, mean)


class FP32PS(DensePS):
    name = "fp32-ps"
    summary = "uncompressed parameter server, fp32 each way"
    order = 70
    codec = FP32


class FP16PS(DensePS):
    name = "fp16-ps"
    summary = "uncompressed parameter server, fp16 each way"
    order = 80
    codec = FP16
