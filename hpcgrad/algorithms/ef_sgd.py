"""Error feedback around any compressor: EF, step-ahead EF and error averaging
(Xu, Huo and Huang, AAAI 2021; ``docs/algorithms/error-feedback.md``).

Worker m, step t (``--feedback``; C is ``--compressor``, :mod:`hpcgrad.compression.compressors`)::

    g = grad f_m(x)                 none, ef
    g = grad f_m(x - e)             step-ahead: the gradient at the error-corrected point
    b <- mu*b + (g + wd*x)          local momentum SGD (mu = --momentum, wd = --weight-decay)
    u = lr*b                        the local update, in parameter units
    d = u + e                       (d = u for none)
    send C(d);  e <- d - C(d)       (e stays 0 for none)

every P steps (``--error-averaging P``), after the update: e <- mean over workers of e,
an fp32 ``MPI_Allreduce`` on a communicator of the workers only.

Server: a = (C(d_1) + ... + C(d_M)) / M in float32, worker order; broadcast a in fp32,
or with ``--server-feedback`` C(a + e_s) with its own residual e_s <- a + e_s - C(a + e_s).
Every rank: x <- x - (the decoded downlink).

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
from ..options import Option, fail
from .base import Algorithm, MomentumSGD
from .step import decode_into_mean

FEEDBACK_MODES = ("none", "ef", "step-ahead")

COMPRESSOR = Option("compressor", str, None, choices=tuple(COMPRESSORS),
                    help="what the workers send: " + "; ".join(
                        f"{name} = {cls.summary}" for name, cls in COMPRESSORS.items()),
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
    devices = ("cpu",)
    device_note = "compresses on the host"
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

    def metadata(self) -> dict:
        return {"compressor": self.compressor.name, "feedback": self.feedback,
                "error_averaging": self.average_every,
                "server_feedback": self.server_feedback}

    def uplink_codecs(self):
        return self.compressor.codecs()

    def downlink_codecs(self):
        return self.down_compressor.codecs()

    # ---------------------------------------------------------------- worker
    def before_gradient(self, ctx):
        if self.feedback == "step-ahead":
            params = ctx.params
            if self._saved is None:
                self._saved = np.empty_like(params)
            self._saved[...] = params
            params -= self.residual

    def after_gradient(self, ctx):
        if self.feedback == "step-ahead":
            ctx.params[...] = self._saved  # a copy back: x - e + e need not round to x

    def worker_step(self, ctx, grad, uplink):
        u = self.update
        self.sgd.update(ctx.params, grad, u)
        d = u if self.memory is None else self.memory.compensate(u)  # e <- e + u: d in e
        sent = self.compressor.compress(ctx, d, uplink)
        if self.memory is not None:
            self.compressor.decompress(uplink.padded_body, sent, self.decoded,
                                       what=f"own uplink at step {ctx.step}")
            self.memory.subtract(self.decoded)  # e <- d - C(d)

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
        ctx.params -= decoded
