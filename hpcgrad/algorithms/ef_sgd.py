"""Error feedback around any compressor: EF, step-ahead EF and error averaging
(Xu, Huo and Huang, AAAI 2021; ``docs/algorithms/error-feedback.md``).

Worker m, step t (``--feedback``; C is ``--compressor``, :mod:`hpcgrad.compression.compressors`)::

    g = grad f_m(x)                 none, ef
    g = grad f_m(x - e)             step-ahead: the gradient at the error-corrected point
    b <- mu*b + (g + wd*y)          local momentum SGD (mu = --momentum, wd = --weight-decay),
                                    y = x (none, ef) or y = x - e (step-ahead)
    u = lr*b                        the local update, in parameter units
    d = u + e                       (d = u for none)
    send C(d);  e <- d - C(d)       (e stays 0 for none)

every P steps (``--error-averaging P``), after the update: e <- mean over workers of e,
an fp32 ``MPI_Allreduce`` on a communicator of the workers only.

Server: a = (C(d_1) + ... + C(d_M)) / M in float32, worker order; broadcast a in fp32,
or with ``--server-feedback`` C(a + e_s) with its own residual e_s <- a + e_s - C(a + e_s).
Every rank: x <- x - (the decoded downlink).

Step-ahead takes its weight decay at the same point as its gradient, x - e: the authors'
code (``anxuthu/SAEF``, ``main.py``) moves the model to x - e, runs backward and calls
``torch.optim.SGD.step`` there, so PyTorch's ``wd*p`` is ``wd*(x - e)``; their update
``u + e`` is then measured from x.  The point is recomputed as ``x - e`` in float32, the
same rounding as the gradient's point.

The residuals e and e_s are :class:`hpcgrad.compression.feedback.Residual` memories (the
one helper topk and s3gd-mv use too).  State (``state_names``, saved by checkpoints): the
residual e, the momentum b and e_s (paths ``residual`` and ``server_residual``, as before
the memories moved into the helper).
"""

from __future__ import annotations

import numpy as np

from ..compression import compressors
from ..compression.compressors import COMPRESSORS
from ..compression.feedback import Residual, residual_of
from ..compression.on_device import on_device
from ..compression.on_device_feedback import FeedbackStep
from ..compression.fused_selection import CompensatedTopK, LocalStepUpdate
from ..kernels import array_module, fused_feedback
from ..wire.codecs import FP32, SCALED_SIGN
from ..options import Option, fail
from .base import Algorithm, MomentumSGD
from .step import decode_into_mean

FEEDBACK_MODES = ("none", "ef", "step-ahead")

COMPRESSOR = Option("compressor", str, None, choices=tuple(COMPRESSORS),
                    help="what the workers send: " + "; ".join(
                        f"{name} = {cls.summary}" for name, cls in COMPRESSORS.items())
                    + " (qsgd and identity are ours, not the SAEF paper's)",
                    strict=True)
FEEDBACK = Option("feedback", str, None, choices=FEEDBACK_MODES,
                  help="none = send C(u) of the local momentum-SGD update u; ef = send "
                       "C(u + e), keep e = u + e - C(u + e); step-ahead = ef with the gradient "
                       "taken at x - e",
                  strict=True)
ERROR_AVERAGING = Option("error_averaging", int, None, bounds=">= 1", metavar="P",
                         default_help="never",
                         help="every P steps replace the workers' residuals by their mean (an "
                              "fp32 Allreduce among the workers, logged as bytes_average and "
                              "phase average)",
                         strict=True)
SERVER_FEEDBACK = Option("server_feedback", bool, False,
                         help="the server compresses its mean back with the same compressor "
                              "and its own residual, instead of broadcasting fp32",
                         strict=True)


class ErrorFeedbackSGD(Algorithm):
    name = "ef-sgd"
    summary = "error feedback (ef, step-ahead, error averaging) around a --compressor"
    order = 60
    docs = "docs/algorithms/error-feedback.md"
    options = (COMPRESSOR, FEEDBACK, ERROR_AVERAGING, SERVER_FEEDBACK)
    # ef-sgd refused the other algorithms' settings before they were declared: it still does.
    refuses_others = True
    hints = {"k_per_worker": "use --sparsity",
             "selection": "the topk compressor always selects exactly",
             "topk_values": "the topk compressor sends fp32 values",
             "residual": "ef-sgd keeps its residual with --feedback",
             "quantize_downlink": "use --server-feedback to compress the downlink"}
    defaults = {"lr": 0.1, "momentum": 0.9, "compressor": "scaled-sign", "feedback": "ef",
                "sparsity": 0.01, "bits": 4}
    step_fields = {"bytes_average": (True, np.int64)}
    state_names = ("residual", "sgd.buffer", "server_residual")
    residual = residual_of("memory")
    server_residual = residual_of("server_memory")

    @classmethod
    def parts(cls, cfg):
        return (COMPRESSORS[cfg.compressor],) if cfg.compressor in COMPRESSORS else ()

    @classmethod
    def check_settings(cls, cfg):
        fail(cfg.error_averaging is None or cfg.feedback != "none",
             "error-averaging averages the workers' residuals; --feedback none keeps none")

    def __init__(self, config, num_params, num_workers, segments=None):
        super().__init__(config, num_params, num_workers, segments)
        self.compressor = compressors.create(config, self.segments, self.offsets)
        self.feedback = config.feedback
        self.average_every = config.error_averaging or 0
        self.server_feedback = bool(config.server_feedback)
        self.variable_length = self.compressor.variable_length
        self.uplink = self.compressor.codec
        #: What the downlink carries: C(a + e_s), or the mean a itself in fp32.
        self.down_compressor = self.compressor if self.server_feedback else \
            compressors.Identity(config, self.segments, self.offsets)
        self.downlink = self.down_compressor.codec
        # The workers' local momentum SGD: its update u = lr*b is sent, not applied.
        self.sgd = MomentumSGD(num_params, config.lr, config.momentum, config.weight_decay)
        d = num_params
        #: e: what C left out of the worker's last uplinks (None for --feedback none).
        self.memory = Residual(size=d) if self.feedback != "none" else None
        #: e_s: what C left out of the server's downlinks (--server-feedback).
        self.server_memory = Residual(size=d) if self.server_feedback else None
        self.update = np.zeros(d, dtype=np.float32)   # u, then the aggregate a
        self.decoded = np.zeros(d, dtype=np.float32)  # C(d) as the receiver decodes it
        self._saved = None  # step-ahead: x, while the gradient is taken at x - e
        self.device_step = FeedbackStep(self)  # CuPy gradients

    def metadata(self) -> dict:
        # segments (every compressor) and k_per_segment (topk, randomk): a decoder of the
        # logged messages needs them -- a qsgd body has one norm and one section per tensor,
        # and a sparse body's entries fall K_l to a tensor (docs/log-format.md).
        sizes = {"segments": self.segments}
        if hasattr(self.compressor, "ks"):
            sizes["k_per_segment"] = list(self.compressor.ks)
        return {"compressor": self.compressor.name, "feedback": self.feedback,
                "error_averaging": self.average_every,
                "server_feedback": self.server_feedback, **sizes}

    def uplink_codecs(self):
        return self.compressor.codecs()

    def downlink_codecs(self):
        return self.down_compressor.codecs()

    # ---------------------------------------------------------------- worker
    def before_gradient(self, ctx):
        if self.feedback == "step-ahead":
            params = ctx.params
            if on_device(params):  # e is allocated on the host: to the model's device
                self.device_step.place_state(params)
            if self._saved is None:
                self._saved = array_module(params).empty_like(params)
            self._saved[...] = params
            params -= self.residual

    def after_gradient(self, ctx):
        if self.feedback == "step-ahead":
            ctx.params[...] = self._saved  # a copy back: x - e + e need not round to x

    def _decay_point(self, ctx):
        """Where the weight decay is taken: x, or x - e for step-ahead (as the gradient)."""
        if self.feedback != "step-ahead" or not self.sgd.wd or ctx.params is None:
            return ctx.params
        if self._saved is None:  # before_gradient did not run (a step without a model)
            self._saved = array_module(ctx.params).empty_like(ctx.params)
        # _saved held x for the backward pass; x is back in ctx.params, so it is free.
        return array_module(ctx.params).subtract(ctx.params, self.residual, out=self._saved)

    #: Worker steps through the fused kernels (issue 19); False: the reference path, the
    #: same bytes (bench micro times both).
    fused = True
    #: The topk compressor's selection without the three reference passes (first use).
    _fused_topk = None

    def worker_step(self, ctx, grad, uplink):
        if on_device(grad):
            return self.device_step(ctx, grad, uplink)
        if self._fused_worker_step(ctx, grad, uplink):
            return
        u = self.update
        self.sgd.update(self._decay_point(ctx), grad, u)
        d = u if self.memory is None else self.memory.compensate(u)  # e <- e + u: d in e
        sent = self.compressor.compress(ctx, d, uplink)
        if self.memory is not None:
            self.compressor.decompress(uplink.padded_body, sent, self.decoded,
                                       what=f"own uplink at step {ctx.step}")
            self.memory.subtract(self.decoded)  # e <- d - C(d)

    def _fused_worker_step(self, ctx, grad, uplink) -> bool:
        """:meth:`worker_step` with error feedback in one or two passes over memory
        (:mod:`hpcgrad.kernels.fused_feedback`), the same bytes and state; False where it does
        not apply (``fused`` off, no residual, a GPU array, weight decay without parameters:
        the reference path, which also raises what it raises)."""
        memory, sgd, params = self.memory, self.sgd, ctx.params
        if not self.fused or memory is None or not isinstance(grad, np.ndarray) \
                or (params is None and sgd.wd):
            return False
        c = self.compressor
        if sgd.buffer is None:  # a checkpoint may have restored it already
            sgd.buffer = np.zeros_like(grad)
        e = memory._allocated(grad)
        decay_point = None if params is None else self._decay_point(ctx)  # x, or x - e
        x = grad if params is None else decay_point
        args = (grad, x, params is not None, sgd.buffer, e, sgd.mu, sgd.wd, sgd.lr)
        body = uplink.padded_body
        if c.name == "scaled-sign":
            words = body[: 8 * ((c.count + 63) // 64)].view(np.uint64)
            total = fused_feedback.local_step_sign(*args, words)
            scale = np.float32(total / c.count)
            SCALED_SIGN.write_scale(body, c.count, scale)
            sent = uplink.write(SCALED_SIGN.id, 0, SCALED_SIGN.body_length(c.count))
            SCALED_SIGN.check_flags(sent.flags, f"own uplink at step {ctx.step}")
            scale = SCALED_SIGN.check_scale(body, c.count, f"own uplink at step {ctx.step}")
            fused_feedback.subtract_scaled_signs(e, words, -scale)
            return True
        if c.name == "topk":  # the local step inside the selection's gathering pass
            if self._fused_topk is None:
                self._fused_topk = CompensatedTopK(c.selector)
            update = LocalStepUpdate(grad, decay_point, sgd.buffer, e, sgd.mu, sgd.wd, sgd.lr)
            c.send_at(e, self._fused_topk.select(update, c.positions, c._negative), uplink)
            fused_feedback.subtract_sent(e, c.positions, c.values, c.nnz)
            return True
        fused_feedback.local_step(*args)
        if c.name == "identity":
            fused_feedback.send_identity(e, body[: 4 * c.count].view("<f4"))
            uplink.write(FP32.id, 0, FP32.body_length(c.count))
        elif c.name == "randomk":
            c.compress(ctx, e, uplink)
            fused_feedback.subtract_sent(e, c.positions, c.values, c.nnz)
        else:  # qsgd: its own two-pass kernel; decoded and subtracted as the reference does
            sent = c.compress(ctx, e, uplink)
            c.decompress(body, sent, self.decoded, what=f"own uplink at step {ctx.step}")
            memory.subtract(self.decoded)
        return True

    def residual_to_average(self, ctx):
        """The array to replace by the workers' mean after this step's update, or None."""
        if self.average_every and self.memory is not None \
                and (ctx.step + 1) % self.average_every == 0:
            return self.memory.values
        return None

    # ---------------------------------------------------------------- server
    def server_step(self, ctx, uplinks, downlink):
        a, step = self.update, ctx.step
        decode_into_mean(uplinks, self.compressor, a)
        if self.server_memory is not None:
            a = self.server_memory.compensate(a)  # e_s <- e_s + a: a + e_s in e_s
        sent = self.down_compressor.compress(ctx, a, downlink)
        if self.server_memory is not None:
            self.compressor.decompress(downlink.padded_body, sent, self.decoded,
                                       what=f"downlink at step {step}")
            self.server_memory.subtract(self.decoded)  # e_s <- a + e_s - C(a + e_s)
        # What each worker passes to the error-averaging Allreduce (config: feedback on).
        bytes_average = 4 * self.num_params if self.average_every \
            and (step + 1) % self.average_every == 0 else 0
        self.step_stats = {"bytes_average": np.full(self.num_workers, bytes_average)}

    # ---------------------------------------------------------- every rank
    def decode(self, ctx, downlink):
        """The step to take, ``C(a + e_s)`` or ``a``, decoded into ``self.decoded``."""
        self.down_compressor.decompress(downlink.padded_body, downlink.header, self.decoded,
                                        what=f"downlink message at step {ctx.step}")
        return self.decoded

    def apply(self, ctx, decoded):
        if on_device(ctx.params):
            return self.device_step.apply(ctx.params, decoded)
        ctx.params -= decoded
