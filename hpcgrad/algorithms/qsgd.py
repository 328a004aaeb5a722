"""QSGD with packed levels (``qsgd``) and DQ-SGD's per-step width (``dq-sgd``).

Worker m at step n, per parameter tensor l (a segment of the flat vector):
    r = ||g_l||_2 (float32, rounded up), s = 2**(b-1) - 1
    l_i = floor(s*|g_i|/r) + Bernoulli(frac)      unbiased: E[sign*l_i*r/s] = g_i
    send r and, per coordinate, a b-bit field: level (b-1 bits) + sign bit
Server:
    mean = ((u_1 + u_2) + ... + u_M) / M   of the decoded uplinks, float32, rank order
    downlink: the mean in fp32, or (``--quantize-downlink``) re-quantized at b
Every rank:
    PyTorch SGD step on the mean (momentum, weight decay), as ``fp32-ps``.

The coins are counter-based (SplitMix64 keyed by seed, step and the sender's
rank; ``kernels/quantize.py``), so a run repeats exactly.

DQ-SGD changes b every step (``docs/algorithms/dq-sgd.md``; the rule is **our
reading** of Yan et al., arXiv 2107.14575):
    s_n = lambda * G_n * rho**((T-1-n)/2),  b_n = 1 + ceil(log2(s_n + 1)), clipped
with G_n the workers' mean gradient norm, smoothed over ``--dq-window`` steps.
Or, with ``--dq-error-target EPS`` (:class:`ErrorTargetWidths`), the smallest b in range
whose QSGD variance bound, damped by rho**(T-1-n), is at most EPS times the squared norm:
    rho**(T-1-n) * sum_l min(d_l/s**2, sqrt(d_l)/s) * G_l**2  <=  EPS * sum_l G_l**2
with G_l**2 the workers' squared norms of tensor l summed over workers.
The server computes b_{n+1} from the norms in step n's uplinks and sends it in
bits 8-12 of step n's downlink header flags; workers start at
``--dq-start-bits``.  No extra message, no extra round.

Both directions quantize through :class:`hpcgrad.compression.compressors.QSGDCompressor`,
the compressor ``ef-sgd --compressor qsgd`` uses.

Wire (``docs/wire-format.md`` §4.8): codec ``qsgd`` (7) up; down ``fp32`` (1)
for qsgd, ``qsgd`` (b = 0: fp32 values, or b = b_n) for dq-sgd and with
``--quantize-downlink``.
"""

from __future__ import annotations

import math

import numpy as np

from ..compression.compressors import QSGDCompressor
from ..compression.on_device import QuantizeStep, on_device
from ..wire.codecs import FP32, QSGDCodec
from ..errors import WireFormatError
from ..kernels import fused_quantize, quantize
from ..compression.compressors import BITS, check_width
from ..options import Option, fail
from .base import Algorithm, MomentumSGD
from .step import decode_into_mean

#: ``bits_down`` in the log for an unquantized (fp32) downlink.
FP32_BITS = 32

QUANTIZE_DOWNLINK = Option("quantize_downlink", bool, False,
                           help="re-quantize the server's mean at the step's width instead of "
                                "broadcasting it in fp32 (ours, in neither paper)")
DQ_RHO = Option("dq_rho", float, None, bounds="(0, 1]", metavar="RHO",
                help="rho in (0, 1] of s_n = lambda*|g_n|*rho^((T-1-n)/2)")
DQ_HORIZON = Option("dq_horizon", int, None, bounds=">= 1", metavar="T",
                    label="dq-horizon (T, the planned iterations)", default_help="--iterations",
                    help="planned iterations T, >= 1")
DQ_LAMBDA = Option("dq_lambda", float, None, bounds="> 0", metavar="L",
                   default_help="calibrated on step 0's gradient norm so that the rule gives "
                                "--dq-start-bits",
                   help="lambda of the width rule, > 0")
DQ_ERROR_TARGET = Option("dq_error_target", float, None, bounds="> 0", metavar="EPS",
                         default_help="off: the lambda rule",
                         help="choose each width as the smallest b whose QSGD variance bound "
                              "sum_l min(d_l/s^2, sqrt(d_l)/s)*|g_l|^2, damped by "
                              "rho^(T-1-n), is at most EPS*|g|^2 (instead of the lambda rule)")
DQ_START_BITS = Option("dq_start_bits", int, None, check=check_width, metavar="B",
                       help="width of step 0, before any norm is known, and the calibration "
                            "target of lambda")
MIN_BITS = Option("min_bits", int, None, check=check_width, metavar="B",
                  help="smallest width the rule may pick")
MAX_BITS = Option("max_bits", int, None, check=check_width, metavar="B",
                  help="largest width the rule may pick")
DQ_WINDOW = Option("dq_window", int, None, bounds=">= 1", metavar="N",
                   help="average the gradient norm over the last N steps")


def width_for(s: float, min_bits: int, max_bits: int) -> int:
    """The smallest b with ``2**(b-1) - 1 >= s`` (= ``1 + ceil(log2(s + 1))`` for s >= 0),
    clipped to ``[min_bits, max_bits]``."""
    if math.isnan(s):
        raise ValueError("the quantization level target s is NaN")
    b = 1
    while b < max_bits and (1 << (b - 1)) - 1 < s:
        b += 1
    return max(min_bits, min(b, max_bits))


def calibration_levels(start_bits: int) -> float:
    """The s that puts b at ``start_bits`` mid-bucket: ``log2(s + 1) = start_bits - 1.5``."""
    return 2.0 ** (start_bits - 1.5) - 1.0


class WidthSchedule:
    """DQ-SGD's b_n rule, on the server (``docs/algorithms/dq-sgd.md``).

    ``observe(step, norm)`` takes step n's gradient norm G_n and returns b_{n+1}:
    ``s = lam * mean(G over the last `window` steps) * rho**((T-1-(n+1))/2)``.
    Without ``lam``, it is calibrated on the first non-zero norm G_k so that
    ``lam * G_k * rho**((T-1-k)/2) = calibration_levels(start_bits)``.
    """

    def __init__(self, rho, horizon, start_bits, min_bits, max_bits, window, lam=None):
        self.rho, self.horizon = float(rho), int(horizon)
        self.start_bits, self.min_bits, self.max_bits = start_bits, min_bits, max_bits
        self.lam = None if lam is None else float(lam)
        self.history = np.zeros(int(window))
        self.seen = 0

    def levels(self, norm: float, step: int) -> float:
        return self.lam * norm * self.rho ** ((self.horizon - 1 - step) / 2)

    def observe(self, step: int, norm: float) -> int:
        if not math.isfinite(norm) or norm < 0:
            raise WireFormatError(f"step {step}: the workers' gradient norm is {norm}; "
                                  "DQ-SGD needs a finite, non-negative norm")
        self.history[self.seen % self.history.size] = norm
        self.seen += 1
        if self.lam is None:
            if norm == 0:
                return self.start_bits  # nothing to calibrate on yet
            self.lam = calibration_levels(self.start_bits) / (
                norm * self.rho ** ((self.horizon - 1 - step) / 2))
        smoothed = float(self.history[: min(self.seen, self.history.size)].mean())
        return width_for(self.levels(smoothed, step + 1), self.min_bits, self.max_bits)


def variance_bound(sizes, squared_norms, bits: int) -> float:
    """QSGD's bound on ``E|Q(v) - v|^2 / |v|^2`` at width ``bits``, per-tensor quantization:
    ``sum_l min(d_l/s^2, sqrt(d_l)/s) * |v_l|^2 / sum_l |v_l|^2`` with ``s = 2**(bits-1) - 1``
    (Alistarh et al. 2017, Lemma 3.1, applied to each tensor ``l`` of ``d_l`` coordinates).
    ``squared_norms`` may be summed over workers: the bound then holds for their sum."""
    s = float((1 << (bits - 1)) - 1)
    d = np.asarray(sizes, dtype=np.float64)
    squares = np.asarray(squared_norms, dtype=np.float64)
    total = float(squares.sum())
    if total == 0:
        return 0.0
    return float(np.dot(np.minimum(d / (s * s), np.sqrt(d) / s), squares)) / total


class ErrorTargetWidths:
    """DQ-SGD's width under an error constraint, on the server (``--dq-error-target``).

    ``observe(step, squared_norms)`` takes step n's per-tensor squared norms (summed over the
    workers, float64) and returns b_{n+1}: the smallest b in ``[min_bits, max_bits]`` with
    ``rho**(T-1-(n+1)) * variance_bound(b) <= target``, or ``max_bits`` if none qualifies.
    The norms are averaged over the last ``window`` steps.  A zero gradient needs no bits
    beyond ``min_bits``.  Same state as :class:`WidthSchedule` (``history``, ``seen``, ``lam``
    always None), so checkpoints keep their paths.
    """

    def __init__(self, sizes, target, rho, horizon, min_bits, max_bits, window):
        self.sizes = np.asarray(sizes, dtype=np.float64)
        self.target, self.rho, self.horizon = float(target), float(rho), int(horizon)
        self.min_bits, self.max_bits = min_bits, max_bits
        self.history = np.zeros((int(window), self.sizes.size))
        self.seen = 0
        self.lam = None

    def width(self, squared_norms, step: int) -> int:
        """The width of step ``step`` for tensors of these squared norms."""
        damping = self.rho ** (self.horizon - 1 - step)
        for bits in range(self.min_bits, self.max_bits + 1):
            if damping * variance_bound(self.sizes, squared_norms, bits) <= self.target:
                return bits
        return self.max_bits

    def observe(self, step: int, squared_norms) -> int:
        squares = np.asarray(squared_norms, dtype=np.float64)
        if not np.all(np.isfinite(squares)) or np.any(squares < 0):
            raise WireFormatError(f"step {step}: the workers' squared tensor norms are not all "
                                  "finite and non-negative; DQ-SGD's error target needs them")
        self.history[self.seen % len(self.history)] = squares
        self.seen += 1
        smoothed = self.history[: min(self.seen, len(self.history))].mean(axis=0)
        return self.width(smoothed, step + 1)


class QSGD(Algorithm):
    name = "qsgd"
    summary = "per-tensor norm + b-bit stochastic levels, mean"
    order = 40
    docs = "docs/algorithms/dq-sgd.md"
    options = (BITS, QUANTIZE_DOWNLINK)
    defaults = {"lr": 0.1, "momentum": 0.9, "bits": 4}
    variable_length = True
    step_fields = {"bits": (False, np.int64), "bits_down": (False, np.int64),
                   "grad_norm": (False, np.float64)}
    dynamic = False
    state_names = ("sgd.buffer",)

    def __init__(self, config, num_params, num_workers, segments=None):
        super().__init__(config, num_params, num_workers, segments)
        self.seed = config.seed
        self.quantize_downlink = bool(config.quantize_downlink)
        widest = self._widest(config)
        #: Quantizes the uplinks (and a --quantize-downlink downlink) at ``self.bits``.
        self.compressor = QSGDCompressor(config, self.segments, self.offsets,
                                         bits=self._first_bits(config), widest=widest)
        self.uplink = self.compressor.codec
        if self.quantize_downlink or self.dynamic:
            self.downlink = QSGDCodec(self.segments, widest, fp32=not self.quantize_downlink)
        else:
            self.downlink = FP32
        self.mean = np.zeros(num_params, dtype=np.float32)
        self.sgd = MomentumSGD(num_params, config.lr, config.momentum, config.weight_decay)
        self.device_step = QuantizeStep(self.compressor)  # CuPy gradients
        quantize.warm_up()

    @property
    def bits(self) -> int:
        """This step's width b (the compressor's; dq-sgd changes it every step)."""
        return self.compressor.bits

    @bits.setter
    def bits(self, value) -> None:
        self.compressor.bits = int(value)

    def _first_bits(self, config) -> int:
        return int(config.bits)

    def _widest(self, config) -> int:
        return int(config.bits)

    def _next_bits(self, step: int, grad_norm: float) -> int:
        return 0  # a fixed width: nothing to announce

    def downlink_codecs(self):
        return (self.downlink,)

    def metadata(self) -> dict:
        return {"segments": self.segments, "quantize_downlink": self.quantize_downlink}

    # ---------------------------------------------------------------- worker
    #: Worker steps through the fused kernels (issue 19); False: the reference path, the
    #: same bytes (bench micro times both).
    fused = True
    #: The blockwise encode's scratch (64 fields), made on the first worker step.
    _fields = None

    def worker_step(self, ctx, grad, uplink):
        if on_device(grad):
            return self.device_step(ctx, grad, uplink)
        c = self.compressor
        if self.fused and isinstance(grad, np.ndarray):  # blockwise: kernels/fused_quantize
            if self._fields is None:
                self._fields = np.zeros(fused_quantize.BLOCK, dtype=np.uint64)
                fused_quantize.warm_up()
            key = quantize.stream_key(c.seed, ctx.step, ctx.rank)
            length = fused_quantize.encode(grad, c.offsets, c.bits, key, uplink.padded_body,
                                           c.norms, self._fields)
            if length >= 0:
                uplink.write(QSGDCodec.id, QSGDCodec.flags(c.bits, 0), length)
                return
        c.compress(ctx, grad, uplink)  # the reference, which also raises what it refuses

    # ---------------------------------------------------------------- server
    def _grad_norm_of(self, uplinks) -> float:
        """The mean over workers of the norm of each worker's gradient, from the tensor
        norms its (checked) body carries; float64, added in worker order."""
        total, nseg = 0.0, len(self.segments)
        for w in range(uplinks.workers):
            norms = uplinks.padded_body(w)[: 4 * nseg].view("<f4").astype(np.float64)
            total += math.sqrt(float(np.dot(norms, norms)))
        return total / uplinks.workers

    def server_step(self, ctx, uplinks, downlink):
        d, b, step = self.num_params, self.bits, ctx.step
        body = downlink.padded_body
        # An fp32 downlink is the mean itself: averaged straight into the body (every rank,
        # the server too, reads it back in decode); a quantized one is coded from self.mean.
        mean = self.mean if self.quantize_downlink else body[: 4 * d].view("<f4")
        decode_into_mean(uplinks, self.compressor, mean)
        grad_norm = self._grad_norm_of(uplinks)
        nxt = self._next_bits(step, grad_norm)
        if self.quantize_downlink:  # at this step's b, coins keyed by sender 0
            self.compressor.compress(ctx, self.mean, downlink, next_bits=nxt)
            bits_down = b
        else:
            codec = QSGDCodec.id if self.dynamic else FP32.id
            downlink.write(codec, QSGDCodec.flags(0, nxt), 4 * d)
            bits_down = FP32_BITS
        self.step_stats = {"bits": b, "bits_down": bits_down, "grad_norm": grad_norm}

    # ---------------------------------------------------------- every rank
    def decode(self, ctx, downlink):
        """The mean gradient (float32), and dq-sgd's next width taken from the header."""
        d, header = self.num_params, downlink.header
        what = f"downlink message at step {ctx.step}"
        body = downlink.padded_body[: header.body_length]
        if header.codec == FP32.id:
            FP32.check_flags(header.flags, what)
            if header.body_length != 4 * d:
                raise WireFormatError(f"{what}: an fp32 body of {header.body_length} bytes, "
                                      f"expected {4 * d}")
            self.mean[...] = body.view("<f4")
        else:
            self.downlink.decode_into(body, d, header.flags, self.mean,
                                      norms=self.compressor.norms, what=what)
            self._take_next(header.flags, what)
        return self.mean

    def apply(self, ctx, mean):
        if on_device(ctx.params):
            return self.device_step.apply(self.sgd, ctx.params, mean)
        self.sgd.step(ctx.params, mean)

    def _take_next(self, flags, what) -> None:
        if QSGDCodec.split_flags(flags)[1]:
            raise WireFormatError(f"{what}: qsgd announces no next width, header flags "
                                  f"{flags:#06x} do")


class DQSGD(QSGD):
    name = "dq-sgd"
    summary = "qsgd with a width chosen by the server every step"
    order = 50
    options = (QUANTIZE_DOWNLINK, DQ_RHO, DQ_HORIZON, DQ_LAMBDA, DQ_ERROR_TARGET,
               DQ_START_BITS, MIN_BITS, MAX_BITS, DQ_WINDOW)
    hints = {"bits": "dq-sgd chooses the width every step: use --dq-start-bits, --min-bits "
                     "and --max-bits"}
    defaults = {"lr": 0.1, "momentum": 0.9, "dq_rho": 0.999,
                "dq_horizon": lambda cfg: cfg.iterations, "dq_start_bits": 4,
                "min_bits": 2, "max_bits": 8, "dq_window": 1}
    dynamic = True
    state_names = ("sgd.buffer", "bits", "schedule.history", "schedule.seen", "schedule.lam")

    @classmethod
    def check_settings(cls, cfg):
        fail(cfg.dq_window <= cfg.iterations, f"dq-window must be at most the iterations "
             f"({cfg.iterations}), got {cfg.dq_window}")
        fail(cfg.min_bits <= cfg.max_bits,
             f"min-bits {cfg.min_bits} is above max-bits {cfg.max_bits}")
        fail(cfg.min_bits <= cfg.dq_start_bits <= cfg.max_bits,
             f"dq-start-bits {cfg.dq_start_bits} is outside min-bits {cfg.min_bits} .. "
             f"max-bits {cfg.max_bits}")
        fail(cfg.dq_error_target is None or cfg.dq_lambda is None,
             "--dq-error-target and --dq-lambda are two width rules; give one of them")

    def __init__(self, config, num_params, num_workers, segments=None):
        super().__init__(config, num_params, num_workers, segments)
        self.min_bits, self.max_bits = int(config.min_bits), int(config.max_bits)
        self.error_target = config.dq_error_target
        #: Server, during a step's gather: per-tensor squared norms summed over the workers.
        self.tensor_squares = None
        if self.error_target is None:
            self.schedule = WidthSchedule(config.dq_rho, config.dq_horizon, self.bits,
                                          self.min_bits, self.max_bits, config.dq_window,
                                          config.dq_lambda)
        else:
            self.schedule = ErrorTargetWidths(self.segments, self.error_target, config.dq_rho,
                                              config.dq_horizon, self.min_bits, self.max_bits,
                                              config.dq_window)
            self.tensor_squares = np.zeros(len(self.segments))

    def _first_bits(self, config) -> int:
        return int(config.dq_start_bits)

    def _widest(self, config) -> int:
        return int(config.max_bits)

    def _grad_norm_of(self, uplinks) -> float:
        if self.tensor_squares is not None:  # the error-target rule: per-tensor squares too
            nseg = len(self.segments)
            for w in range(uplinks.workers):  # worker order, from the checked bodies' norms
                norms = uplinks.padded_body(w)[: 4 * nseg].view("<f4").astype(np.float64)
                self.tensor_squares += norms * norms
        return super()._grad_norm_of(uplinks)

    def _next_bits(self, step, grad_norm):
        if self.tensor_squares is None:
            return self.schedule.observe(step, grad_norm)
        squares, self.tensor_squares = self.tensor_squares, np.zeros_like(self.tensor_squares)
        return self.schedule.observe(step, squares)

    def metadata(self) -> dict:
        if self.error_target is not None:
            return {**super().metadata(), "dq_rule": "error-target",
                    "dq_error_target": self.error_target}
        return {**super().metadata(), "dq_calibration_levels":
                calibration_levels(self.schedule.start_bits)}

    def _take_next(self, flags, what) -> None:
        nxt = QSGDCodec.split_flags(flags)[1]
        if not self.min_bits <= nxt <= self.max_bits:
            raise WireFormatError(f"{what}: next width {nxt} (header flags {flags:#06x}) is "
                                  f"outside --min-bits {self.min_bits} .. --max-bits "
                                  f"{self.max_bits}")
        self.bits = nxt
