"""ef-sgd's worker step where the gradient lives: NumPy or CuPy (``xp``), one code.

The twin of :meth:`hpcgrad.algorithms.ef_sgd.ErrorFeedbackSGD.worker_step` (and of its
fused Numba path, which sends the same bytes), dispatched to at the same single point as
the other algorithms' twins (:func:`hpcgrad.compression.on_device.on_device`):

* the local momentum-SGD step ``u = lr*(mu*b + g + wd*y)`` and ``d = u + e`` run on the
  device (:class:`~hpcgrad.algorithms.base.MomentumSGD` and
  :class:`~hpcgrad.compression.feedback.Residual` are written against ``xp`` already);
* the dense codecs are written where the gradient lives, straight into the message's body
  (the device twin the exchange stages): ``scaled-sign`` (its scale a float64 sum in index
  order, :func:`~hpcgrad.kernels.device_quantize.running_sums`), ``identity`` and ``qsgd``
  (:class:`~hpcgrad.compression.on_device.QuantizeStep`);
* the sparse ones select (``topk``: :class:`~hpcgrad.kernels.device_steps.DeviceTopKSelector`,
  exact) or draw (``randomk``: the host's seeded generator) K positions, gather the K values
  to the host and code them there with the CPU path's encoder;
* ``e <- d - C(d)`` in the decoder's float32 arithmetic: for ``scaled-sign``
  ``c = 0 - (-scale)*s``, for the sparse codecs ``e[p] <- e[p] - (0 + v)``, for ``identity``
  ``e - e``; a ``qsgd`` body is decoded on the host (the CPU decoder: d floats) and the decoded
  vector copied to the device.

The residual and the momentum buffer move to the gradient's device on first use (the
algorithm allocates them on the host; a checkpoint restores them there): :func:`resident`.
"""

from __future__ import annotations

import numpy as np

from ..kernels import array_module, device_quantize
from ..kernels.device_steps import DeviceTopKSelector, to_device, to_host
from ..kernels.generic import packed_length
from ..wire.codecs import FP32, SCALED_SIGN
from .on_device import QuantizeStep, _HostSide


def resident(array, like):
    """``array`` on the device of ``like`` (a copy if it is elsewhere; None stays None)."""
    if array is None or array_module(array) is array_module(like):
        return array
    return array_module(like).asarray(array)


class FeedbackStep:
    """ef-sgd's worker step and update on the device; ``alg`` is the
    :class:`~hpcgrad.algorithms.ef_sgd.ErrorFeedbackSGD` (its compressor, residual, local
    SGD and decoded scratch)."""

    def __init__(self, alg):
        self.alg = alg
        c = alg.compressor
        self.selector = DeviceTopKSelector(c.offsets, c.segments, c.ks, "exact") \
            if c.name == "topk" else None
        self._negative = np.zeros(getattr(c, "capacity", 0), dtype=np.uint8)  # unused signs
        self._quantize = QuantizeStep(c) if c.name == "qsgd" else None
        self._update = self._decoded = None  # u and C(d), where the gradient lives
        self._scale_probe = np.zeros(8, dtype=np.uint8)  # the scale, checked as decoded

    def place_state(self, like) -> None:
        """Move the residual and the momentum buffer to ``like``'s device (first use)."""
        alg = self.alg
        if alg.memory is not None:
            alg.memory.values = resident(alg.memory.values, like)
        alg.sgd.buffer = resident(alg.sgd.buffer, like)

    def __call__(self, ctx, grad, uplink) -> None:
        alg = self.alg
        xp = array_module(grad)
        self.place_state(grad)
        if self._update is None or array_module(self._update) is not xp:
            self._update = xp.zeros_like(grad)
        u = self._update
        alg.sgd.update(alg._decay_point(ctx), grad, u)
        memory = alg.memory
        d = u if memory is None else memory.compensate(u)  # e <- e + u: d in e
        send = getattr(self, "_" + alg.compressor.name.replace("-", "_"))
        send(ctx, xp, d, uplink, memory is not None)

    # One method per compressor: send C(d); with ``feed_back`` also e <- d - C(d) (d is e).
    def _identity(self, ctx, xp, d, uplink, feed_back):
        c = self.alg.compressor
        uplink.padded_body[: 4 * c.count] = d.view(np.uint8)  # fp32 little-endian, as FP32
        uplink.write(FP32.id, 0, FP32.body_length(c.count))
        if feed_back:
            xp.subtract(d, d, out=d)  # 0, or NaN where e is not finite

    def _scaled_sign(self, ctx, xp, d, uplink, feed_back):
        c = self.alg.compressor
        body = uplink.padded_body
        negative = d < 0  # sign(0) = +1
        body[: 8 * ((c.count + 63) // 64)] = 0  # whole words, as the CPU packer writes
        body[: packed_length(c.count)] = xp.packbits(negative, bitorder="little")
        scale = np.float32(device_quantize.running_sums(d)[2] / c.count)
        # The scale's 4 bytes go in as bytes: at ceil(d/8) they need not be 4-byte aligned,
        # and a float32 store there would be a misaligned access on a GPU.
        probe = self._scale_probe
        SCALED_SIGN.write_scale(probe, 0, scale)
        at = packed_length(c.count)
        body[at: at + 4] = to_device(xp, probe[:4])
        uplink.write(SCALED_SIGN.id, 0, SCALED_SIGN.body_length(c.count))
        scale = SCALED_SIGN.check_scale(probe, 0, f"own uplink at step {ctx.step}")  # as decoded
        if feed_back:  # the decoder's c = 0 - (-scale)*(s + 0*0), then e - c
            s = xp.where(negative, np.float32(-1), np.float32(1))
            s *= -scale
            xp.subtract(np.float32(0), s, out=s)
            d -= s

    def _topk(self, ctx, xp, d, uplink, feed_back):
        c = self.alg.compressor
        nnz, sent = self.selector.select(d, c.positions, self._negative)
        self._send_entries(xp, d, sent, nnz, uplink, feed_back, unbiased=False)

    def _randomk(self, ctx, xp, d, uplink, feed_back):
        c = self.alg.compressor
        nnz = c.choose(ctx)
        sent = to_device(xp, c.positions[:nnz])
        self._send_entries(xp, d, sent, nnz, uplink, feed_back, unbiased=True)

    def _send_entries(self, xp, d, sent, nnz, uplink, feed_back, unbiased):
        """The K values at ``sent`` gathered to the host, finished and coded there as
        ``send_at`` does; then ``e[p] <- e[p] - (0 + v)`` (the dense decode's arithmetic)."""
        c = self.alg.compressor
        to_host(d[sent], c.values)
        c.finish_values(nnz, unbiased=unbiased)
        c.write_entries(c.positions, c.values, nnz, _HostSide(uplink))
        if feed_back:
            d[sent] -= np.float32(0) + to_device(xp, c.values[:nnz])

    def _qsgd(self, ctx, xp, d, uplink, feed_back):
        c = self.alg.compressor
        self._quantize(ctx, d, uplink)
        if not feed_back:
            return
        header = uplink.header
        host = getattr(uplink, "host", uplink)
        if host.padded_body is not uplink.padded_body:  # the device twin: its body to host
            to_host(uplink.padded_body[: header.body_length], host.padded_body)
        decoded = self.alg.decoded
        c.decompress(host.padded_body, header, decoded, what=f"own uplink at step {ctx.step}")
        d -= self._on_device(xp, decoded)

    def _on_device(self, xp, host):
        """``host`` copied into a device scratch allocated once (no copy for NumPy)."""
        if xp is np:
            return host
        if self._decoded is None:
            self._decoded = xp.empty(host.shape, dtype=host.dtype)
        self._decoded.set(host)
        return self._decoded

    def apply(self, params, decoded) -> None:
        """Every rank's ``x <- x - (the decoded downlink)``, on the parameters' device."""
        params -= self._on_device(array_module(params), decoded)
