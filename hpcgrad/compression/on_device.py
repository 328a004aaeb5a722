"""Worker steps that run where the gradient lives: NumPy or CuPy (``xp``), one code.

An algorithm whose worker step has a device-side twin here dispatches to it at one point,
``if on_device(grad)``: a CuPy gradient (``--device cuda``), or any gradient when the
test-only environment variable ``HPCGRAD_TEST_XP_WORKER=1`` forces the twin on NumPy arrays
(read once, here), so that CI, which has no GPU, proves the twin's bytes equal the CPU
path's in real ``mpiexec`` runs.

The split of the work: residuals, momentum and top-K selection (:mod:`hpcgrad.kernels.
device_steps`) run on the device, over d entries; the selection comes back compacted -- K
positions and signs or values -- and the variable-length coding (raw / bitmap / Rice
positions, fp16 rounding) runs on the host from those K entries with the CPU path's own
encoder, so the bytes cannot drift.  The body is written into the message's host buffer
and copied into the device twin the exchange stages (``StagedMessage``), which the
exchange copies back before ``Gatherv``: a round trip of one body, K entries, not d.
"""

from __future__ import annotations

import math
import os

import numpy as np

from ..errors import NonFiniteError, WireFormatError
from ..kernels import array_module, device_quantize, generic, quantize
from ..kernels.device_steps import DeviceTopKSelector, to_device
from ..wire.codecs import QSGDCodec

#: Test-only: run the device-side worker steps on NumPy arrays too (``HPCGRAD_TEST_XP_WORKER=1``).
FORCE_XP = os.environ.get("HPCGRAD_TEST_XP_WORKER", "") == "1"


def on_device(array) -> bool:
    """Whether a worker step on ``array`` takes its device-side twin here."""
    return FORCE_XP or not isinstance(array, np.ndarray)


class _HostSide:
    """The host half of a message: its host body buffer, and the header ``write``."""

    def __init__(self, message):
        self.message = message
        host = getattr(message, "host", message)  # a StagedMessage, or a plain MessageBuffer
        self.padded_body = host.padded_body

    def write(self, codec, flags, body_length):
        header = self.message.write(codec, flags, body_length)
        twin = self.message.padded_body
        if twin is not self.padded_body:  # the device twin the exchange stages from
            if isinstance(twin, np.ndarray):
                twin[:body_length] = self.padded_body[:body_length]
            else:
                twin[:body_length].set(self.padded_body[:body_length])
        return header


class SignTopKStep:
    """S3GD-MV's worker step: ``a <- rho*a + g``; the signs of the top-K of ``|a|`` (the
    algorithm's ``--selection``); ``a[sent] <- 0``.  ``up`` is the algorithm's
    :class:`~hpcgrad.compression.compressors.TopKSigns` (its host arrays and coder)."""

    def __init__(self, up, selection: str, band: float = 0.1):
        self.up = up
        self.selector = DeviceTopKSelector(up.offsets, up.segments, up.ks, selection, band)
        self._direction = None  # the update's dense scratch, where the parameters live

    def __call__(self, memory, grad, uplink) -> None:
        a = grad if memory is None else memory.compensate(grad)
        up = self.up
        up.nnz, sent = self.selector.select(a, up.positions, up.negative)
        up.write_entries(up.positions, up.negative, up.nnz, _HostSide(uplink))
        if memory is not None:
            memory.values[sent] = 0

    def apply(self, alg, params, nnz: int) -> None:
        """S3GD-MV's update on the device from the algorithm's decoded downlink."""
        if self._direction is None and (alg.sgd is not None or alg.wd != 0):
            self._direction = array_module(params).zeros(alg.num_params, dtype=np.float32)
        apply_sparse_signs(params, alg.direction_pos, alg.direction_neg, nnz, alg.lr, alg.wd,
                           alg.sgd, self._direction)


def apply_sparse_signs(params, positions, negative, nnz: int, lr, weight_decay, sgd,
                       direction):
    """S3GD-MV's update on the device from the decoded downlink (host ``positions`` /
    ``negative``, ``nnz`` entries), in the CPU path's float32 arithmetic: with ``sgd``
    (momentum) ``MomentumSGD`` on the dense direction; with weight decay 0 ``x[p] <- x[p] -
    (+-lr)`` at the voted entries; else ``x <- x - lr*(t + wd*x)`` over every coordinate.
    ``direction`` is a dense float32 scratch on the device (zeroed here)."""
    xp = array_module(params)
    pos = to_device(xp, positions[:nnz])
    neg = to_device(xp, negative[:nnz]) != 0
    if sgd is None and weight_decay == 0:
        params[pos] = params[pos] - xp.where(neg, -lr, lr).astype(np.float32)
        return
    direction[...] = 0
    direction[pos] = xp.where(neg, np.float32(-1), np.float32(1))
    if sgd is not None:
        sgd.step(params, direction)
    else:
        generic.apply_direction(params, direction, lr, weight_decay)


class ValueTopKStep:
    """topk's worker step: ``r <- r + g``; the values of ``r`` at the top-K of the rule's
    scores (or at positions every worker shares); ``r[sent] <- r[sent] - sent`` (0 for fp32,
    the fp16 rounding error otherwise).  ``alg`` is the :class:`~hpcgrad.algorithms.topk.
    TopKEF` (its rule, previous union and aggregate, and its host-side compressor)."""

    def __init__(self, alg):
        self.alg = alg
        up = alg.up
        self.selector = DeviceTopKSelector(up.offsets, up.segments, up.ks, "exact")
        self._negative = np.zeros(up.capacity, dtype=np.uint8)  # sign output, unused
        self._score = self._aggregate = None

    def _scores(self, xp, r, step):
        """The CPU path's ``TopKEF._scores``, in ``xp``: the same float32 operations."""
        alg = self.alg
        if alg.rule not in ("union-boost", "aggregate-hint") or step == 0:
            return r
        if self._score is None:
            self._score = xp.empty_like(r)
        score = self._score
        xp.abs(r, out=score)
        if alg.rule == "union-boost":
            union = to_device(xp, alg.union_pos[: alg.union_nnz])
            score[union] *= np.float32(1) + alg.weight
        else:
            score += alg.hint * xp.abs(to_device(xp, alg.aggregate))
        return score

    def __call__(self, ctx, grad, uplink) -> None:
        alg, up = self.alg, self.alg.up
        xp = array_module(grad)
        r = grad if alg.memory is None else alg.memory.compensate(grad)
        nnz = alg._shared_positions(ctx.step, ctx.rank)
        if nnz is None:
            nnz, sent = self.selector.select(self._scores(xp, r, ctx.step), up.positions,
                                             self._negative)
        else:
            sent = to_device(xp, up.positions[:nnz])
        # _Sparse.send_at's value rules, on the host from the K gathered entries.
        vals = up.values[:nnz]
        picked = r[sent]
        vals[...] = picked if xp is np else picked.get()
        if alg.unbiased:
            bounds = np.searchsorted(up.positions[:nnz], up.offsets)
            for l, (n, k) in enumerate(zip(up.segments, up.ks)):
                vals[bounds[l]: bounds[l + 1]] *= np.float32(n / k)
        if up.fp16:
            np.clip(vals, np.float32(-65504), np.float32(65504), out=vals)
            vals[...] = vals.astype(np.float16)
        up.nnz = nnz
        up.write_entries(up.positions, up.values, nnz, _HostSide(uplink))
        if alg.memory is not None:
            r[sent] -= to_device(xp, vals)

    def apply(self, params, nnz: int) -> None:
        """topk's update on the device: the aggregate scattered from the downlink's ``nnz``
        union entries (decoded on the host), then the algorithm's ``MomentumSGD``."""
        alg = self.alg
        xp = array_module(params)
        if self._aggregate is None:
            self._aggregate = xp.zeros(alg.num_params, dtype=np.float32)
        aggregate = self._aggregate
        aggregate[...] = 0
        aggregate[to_device(xp, alg.union_pos[:nnz])] = to_device(xp, alg.union_val[:nnz])
        alg.sgd.step(params, aggregate)


class QuantizeStep:
    """qsgd's and dq-sgd's worker step: the ``qsgd`` body at the compressor's width, packed
    where the gradient lives (:mod:`hpcgrad.kernels.device_quantize`) straight into the
    message's body (the device twin on a GPU rank: a dense body, no host coding).  ``up`` is
    the algorithm's :class:`~hpcgrad.compression.compressors.QSGDCompressor`."""

    def __init__(self, up):
        self.up = up
        self._mean = None  # the update's copy of the decoded mean, where the parameters live

    def __call__(self, ctx, values, message) -> None:
        up = self.up
        bits, offsets = up.bits, up.offsets
        key = quantize.stream_key(up.seed, ctx.step, ctx.rank)
        nseg = len(up.segments)
        norms = up.norms
        for l in range(nseg):
            norm = device_quantize.norm_float32(values[offsets[l]: offsets[l + 1]])
            if norm is None:
                raise NonFiniteError(f"the L2 norm of tensor {l} is not finite in float32; it "
                                     "cannot be quantized")
            norms[l] = norm
        body = message.padded_body
        xp = array_module(body)
        length = 4 * nseg + sum(quantize.section_lengths(up.segments, bits))
        if length > body.size:
            raise WireFormatError(f"a {bits}-bit qsgd body of {length} bytes does not fit the "
                                  f"{body.size}-byte buffer")
        body[: 4 * nseg] = to_device(xp, norms[:nseg].view(np.uint8))
        at = 4 * nseg
        for l in range(nseg):
            lo, hi = int(offsets[l]), int(offsets[l + 1])
            section = device_quantize.quantize_section(values[lo:hi], lo, bits, key, norms[l])
            body[at: at + section.size] = section
            at += section.size
        message.write(QSGDCodec.id, QSGDCodec.flags(bits, 0), length)

    def apply(self, sgd, params, mean) -> None:
        """The update on the device: ``MomentumSGD`` on the mean decoded on the host."""
        xp = array_module(params)
        if xp is np:
            return sgd.step(params, mean)
        if self._mean is None:
            self._mean = xp.empty(mean.shape, dtype=np.float32)
        self._mean.set(mean)
        sgd.step(params, self._mean)


class TernaryStep:
    """terngrad's worker step: per tensor the clipping bound from the gradient's mean and
    variance (float64 sums in index order, :func:`~hpcgrad.kernels.device_quantize.
    running_sums`), the scale ``s_l = max min(|g|, bound)``, and the 2-bit section packed
    where the gradient lives straight into the message's body, as :class:`QuantizeStep`.
    ``alg`` is the :class:`~hpcgrad.algorithms.terngrad.TernGrad`."""

    def __init__(self, alg):
        self.alg = alg
        self._quantize = QuantizeStep(alg.compressor)  # its update: the same SGD on the mean

    def __call__(self, ctx, grad, message) -> None:
        alg = self.alg
        offsets, scales, clip = alg.offsets, alg.scales, alg.clip
        key = quantize.stream_key(alg.seed, ctx.step, ctx.rank)
        nseg = len(alg.segments)
        body = message.padded_body
        xp = array_module(body)
        at = 4 * nseg
        for l in range(nseg):
            lo, hi = int(offsets[l]), int(offsets[l + 1])
            values = grad[lo:hi]
            total, squares, _ = device_quantize.running_sums(values)
            if not np.isfinite(squares):
                raise NonFiniteError(f"terngrad: tensor {l} of rank {ctx.rank}'s gradient at "
                                     f"step {ctx.step} is not finite")
            n = hi - lo
            bound = math.inf
            if clip > 0.0 and n > 0:
                mean = total / n
                variance = max(squares / n - mean * mean, 0.0)
                if variance > 0.0:
                    bound = float(np.float32(clip * math.sqrt(variance)))
            top = 0.0  # the bound is a float32 (or inf): min(|v|, bound) is exact in float32
            if n:
                top = max(top, float(xp.minimum(xp.abs(values), np.float32(bound)).max()))
            scales[l] = np.float32(top)
            section = device_quantize.ternarize_section(values, lo, bound, top, key)
            body[at: at + section.size] = section
            at += section.size
        body[: 4 * nseg] = to_device(xp, scales.view(np.uint8))
        message.write(QSGDCodec.id, QSGDCodec.flags(alg.compressor.bits), alg.up_length)

    def apply(self, sgd, params, mean) -> None:
        """The update on the device: ``MomentumSGD`` on the fp32 mean of the downlink."""
        self._quantize.apply(sgd, params, mean)
