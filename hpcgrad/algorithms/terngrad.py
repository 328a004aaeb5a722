"""TernGrad: ternary gradients with a per-tensor scale (``terngrad``).

Wen, Xu, Yan, Wu, Wang, Chen, Li, "TernGrad: Ternary Gradients to Reduce Communication in
Distributed Deep Learning", NeurIPS 2017 (``docs/algorithms/terngrad.md``).

Worker m at step n, per parameter tensor l (a segment of the flat vector):
    clip (``--terngrad-clip C``, 0 = off):   g_i <- max(-C*sigma_l, min(g_i, C*sigma_l))
    s_l = max_i |g_i|                         (float32: exactly one of the |g_i|)
    b_i ~ Bernoulli(|g_i| / s_l)              counter-based coin (seed, step, rank, i)
    send s_l and, per coordinate, sign(g_i) * b_i in {-1, 0, +1}
    unbiased for the clipped gradient: E[s_l * sign(g_i) * b_i] = g_i
Server:
    mean = ((u_1 + u_2) + ... + u_M) / M   of the decoded uplinks, float32, rank order
    downlink: the mean in fp32
Every rank:
    PyTorch SGD step on the mean (momentum, weight decay), as ``qsgd`` and ``fp32-ps``.

Wire: a TernGrad uplink *is* a 2-bit ``qsgd`` body (``docs/wire-format.md`` §4.8) whose
per-tensor "norm" field carries the scale s_l: with b = 2 a field is one level bit and a sign
bit, s = 2**(b-1) - 1 = 1, and it decodes to sign * level * s_l.  So the server decodes
TernGrad with the qsgd compressor's decoder, and adversaries corrupt it as any qsgd body;
TernGrad needs no codec of its own, only its own quantizer (below): the max norm and the
clipping instead of QSGD's L2 norm.  32 + 4 L + sum_l ceil(d_l / 4) bytes up, 4 d down.

**Our reading** where the paper leaves a choice to the implementation:
* sigma_l is the standard deviation of the tensor's gradient (population, float64); a tensor
  whose gradient is constant (sigma_l = 0, e.g. a one-element bias) is not clipped, so it is
  not zeroed.  The paper clips at C = 2.5 (the default here).
* Scales are per worker (the paper's "scaler sharing" of one s across workers serves an
  all-gather of ternary vectors; a parameter server averages decoded fp32 values instead).
* The downlink is the fp32 mean, as qsgd's default: TernGrad ternarizes what workers send.
"""

from __future__ import annotations

import math

import numpy as np

from ..compression.compressors import QSGDCompressor
from ..compression.on_device import TernaryStep, on_device
from ..errors import NonFiniteError
from ..kernels import quantize
from ..kernels.jit import njit
from ..kernels.quantize import uniform
from ..options import Option
from ..wire.codecs import FP32, QSGDCodec
from .base import Algorithm, MomentumSGD
from .step import decode_into_mean

#: One level bit and a sign bit: levels {0, 1}, s = 1.
TERNARY_BITS = 2

TERNGRAD_CLIP = Option("terngrad_clip", float, 2.5, bounds=">= 0", metavar="C",
                       help="clip each tensor's gradient to +-C*sigma (sigma: its standard "
                            "deviation) before ternarizing, as the paper does; 0 = no "
                            "clipping (then unbiased)")


@njit(cache=True, nogil=True, boundscheck=False)
def ternarize_pack(values, offsets, clip, key, scales, fields):
    """Clip, scale and ternarize ``values`` (float32) tensor by tensor into 2-bit qsgd fields.

    ``offsets`` (int64, L + 1) delimit the tensors; ``scales`` (float32, L) receives each
    s_l, ``fields`` (uint8) the sections one after the other, ``ceil(d_l / 4)`` bytes each,
    written whole.  A field is bit 0 the level b_i, bit 1 the sign (only with b_i = 1).
    Returns 0, or -1 - l if tensor l holds a value that is not finite.
    """
    out = 0
    for seg in range(offsets.size - 1):
        lo, hi = offsets[seg], offsets[seg + 1]
        n = hi - lo
        total = 0.0
        total2 = 0.0
        for i in range(lo, hi):
            x = np.float64(values[i])
            total += x
            total2 += x * x
        if not np.isfinite(total2):
            return -1 - seg
        bound = np.inf
        if clip > 0.0 and n > 0:
            mean = total / n
            variance = max(total2 / n - mean * mean, 0.0)
            if variance > 0.0:
                bound = np.float64(np.float32(clip * math.sqrt(variance)))
        top = 0.0
        for i in range(lo, hi):
            a = min(abs(np.float64(values[i])), bound)
            if a > top:
                top = a
        scales[seg] = np.float32(top)
        acc = 0
        nbits = 0
        for i in range(lo, hi):
            v = np.float64(values[i])
            field = 0
            if top > 0.0 and v != 0.0:
                a = min(abs(v), bound)
                if a >= top or uniform(key, i) < a / top:
                    field = 3 if v < 0.0 else 1
            acc |= field << nbits
            nbits += 2
            if nbits == 8:
                fields[out] = np.uint8(acc)
                out += 1
                acc = 0
                nbits = 0
        if nbits > 0:
            fields[out] = np.uint8(acc)
            out += 1
    return 0


class TernGrad(Algorithm):
    name = "terngrad"
    summary = "per-tensor max scale + stochastic ternary {-1, 0, +1}, mean (Wen et al. 2017)"
    order = 55
    docs = "docs/algorithms/terngrad.md"
    options = (TERNGRAD_CLIP,)
    defaults = {"lr": 0.1, "momentum": 0.9}
    variable_length = True  # the header's flags carry the width, as for any qsgd body
    state_names = ("sgd.buffer",)

    def __init__(self, config, num_params, num_workers, segments=None):
        super().__init__(config, num_params, num_workers, segments)
        self.seed = int(config.seed)
        self.clip = float(config.terngrad_clip)
        #: Decodes the uplinks: a TernGrad body is a 2-bit qsgd body.
        self.compressor = QSGDCompressor(config, self.segments, self.offsets,
                                         bits=TERNARY_BITS, widest=TERNARY_BITS)
        self.uplink = self.compressor.codec
        self.downlink = FP32
        nseg = len(self.segments)
        self.scales = np.zeros(nseg, dtype=np.float32)
        self.up_length = 4 * nseg + sum(quantize.section_lengths(self.segments, TERNARY_BITS))
        self.mean = np.zeros(num_params, dtype=np.float32)
        self.sgd = MomentumSGD(num_params, config.lr, config.momentum, config.weight_decay)
        self.device_step = TernaryStep(self)  # CuPy gradients

    def metadata(self) -> dict:
        return {"segments": self.segments, "terngrad_clip": self.clip}

    # ---------------------------------------------------------------- worker
    def worker_step(self, ctx, grad, uplink):
        if on_device(grad):
            return self.device_step(ctx, grad, uplink)
        body = uplink.padded_body
        nseg = len(self.segments)
        key = quantize.stream_key(self.seed, ctx.step, ctx.rank)
        failed = ternarize_pack(grad, self.offsets, self.clip, key, self.scales,
                                body[4 * nseg:])
        if failed:
            raise NonFiniteError(f"terngrad: tensor {-1 - failed} of rank {ctx.rank}'s "
                                 f"gradient at step {ctx.step} is not finite")
        body[: 4 * nseg] = self.scales.view(np.uint8)
        uplink.write(QSGDCodec.id, QSGDCodec.flags(TERNARY_BITS), self.up_length)

    # ---------------------------------------------------------------- server
    def server_step(self, ctx, uplinks, downlink):
        # The fp32 downlink is the mean itself: averaged straight into the body (every rank,
        # the server too, reads it back in decode).
        d = self.num_params
        decode_into_mean(uplinks, self.compressor, downlink.padded_body[: 4 * d].view("<f4"))
        downlink.write(FP32.id, 0, 4 * d)

    # ---------------------------------------------------------- every rank
    def decode(self, ctx, downlink):
        # The transport checked the header (codec fp32, count d, length 4 d) on receipt.
        self.mean[...] = downlink.padded_body[: 4 * self.num_params].view("<f4")
        return self.mean

    def apply(self, ctx, mean):
        if on_device(ctx.params):
            return self.device_step.apply(self.sgd, ctx.params, mean)
        self.sgd.step(ctx.params, mean)
