"""Compressors ``C``: a float32 vector in, one message body out, and back.

The compressor role of GRACE's split (compressor / memory / communicator; the
memory is :mod:`hpcgrad.compression.feedback`, the communicator
:mod:`hpcgrad.comm.transport`): stateless given ``(seed, step, sender)``, so the
error-feedback layer (:mod:`hpcgrad.algorithms.ef_sgd`) can wrap any of them, the
``qsgd`` / ``dq-sgd`` algorithms send their uplinks through :class:`QSGDCompressor`,
``topk`` through :class:`TopKCompressor`, ``s3gd-mv`` through :class:`TopKSigns`, and a
new one is one small class here.  Each writes a body of a documented codec
(``docs/wire-format.md``) and reads one back, validating it:

``identity``     ``fp32``: the vector itself (C(v) = v; for the identities in tests).
``scaled-sign``  ``scaled-sign``: ``(|v|_1 / d) * sign(v)`` over the whole model, as
                 the SAEF authors use it; sign(0) = +1 as in ``sign1``.
``topk``         ``sparse-values``: per tensor l the ``K_l`` entries of largest |v|
                 (exact selection, ties in index order), values in fp32.
``randomk``      ``sparse-values``: per tensor ``K_l`` positions drawn without
                 replacement from ``default_rng([seed, step, sender, l])``, values
                 scaled by ``numel_l / K_l`` (unbiased: E[C(v)] = v).
``qsgd``         ``qsgd`` at ``--bits``: per-tensor norm and stochastic levels, coins
                 keyed by ``(seed, step, sender)`` (unbiased).

``K_l = ceil(sparsity * numel_l)`` as for the ``topk`` algorithm (``k_by_fraction`` with
top-K's rule K < d, :mod:`hpcgrad.compression.selection`; the same selector too).

The sparse compressors also code entries someone else chose, and read bodies back into a
server's merge rows (``write_entries`` / ``decode_entries``; :func:`~hpcgrad.algorithms.step.
decode_into_rows`), so the algorithms built on them write and read no body themselves:

``SparseValues``  ``sparse-values`` from given positions and values (fp32 or fp16, with an
                  optional membership bitmap): topk's downlink; the base of ``topk`` (which
                  also takes the topk algorithm's fp16 values, its own scores, or positions
                  every worker shares) and ``randomk``.
``SparseSigns``   ``sparse-sign`` (or ``base3`` where shorter) from given positions and
                  sign bits: s3gd-mv's downlink.
``TopKSigns``     the signs of the K_l entries of largest |v|, ``exact`` or ``threshold``
                  selection: s3gd-mv's uplink.

These three are no ``--compressor`` choice (``choice=False``): the first two select nothing,
and signs without a scale are no estimate of v to feed an error back from.

Each compressor declares the settings it reads (``options``; :mod:`hpcgrad.options`) and
registers itself by subclassing :class:`Compressor` with a ``name``: ``--compressor`` lists
:data:`COMPRESSORS`, in definition order.  ``--sparsity`` and ``--bits`` are declared here
once, shared with the algorithms that read them too (s3gd-mv and topk; qsgd).
"""

from __future__ import annotations

import numpy as np

from .. import kernels
from ..options import Configurable, Option, fail
from ..wire.codecs import (BASE3, FP32, SCALED_SIGN, SPARSE_SIGN, SPARSE_VALUES, QSGDCodec,
                          _check_padding_bits, encode_qsgd, encode_sparse_ternary)
from ..errors import WireFormatError
from ..kernels import fused_server, quantize
from ..kernels.sparse import sample
from .selection import TopKSelector, k_by_fraction, require_k_below_d


def check_width(value, label: str) -> None:
    """A quantizer width b: b - 1 level bits and a sign bit (docs/algorithms/dq-sgd.md)."""
    fail(1 <= value <= 16, f"{label} must be an integer in 2..16 (bits per coordinate: a sign "
         f"bit and b-1 level bits; 2..8 is the useful range), got {value!r}")
    fail(value != 1, f"{label} 1 leaves no level bits (s = 2**0 - 1 = 0 levels: every "
         "coordinate would decode to 0); use 2 or more, or signum-mv for 1-bit signs")


#: K_l = ceil(S * numel_l) entries per tensor: s3gd-mv, topk, and the topk / randomk compressors.
SPARSITY = Option("sparsity", float, None, bounds="(0, 1]", metavar="S",
                  help="fraction of each tensor's entries a worker sends, in (0, 1]: "
                       "K_l = ceil(S*numel_l)")
#: b bits per coordinate: qsgd, and the qsgd compressor.
BITS = Option("bits", int, None, check=check_width, metavar="B",
              help="bits per coordinate, a sign bit and B-1 level bits (s = 2^(B-1) - 1 "
                   "levels), in 2..16; 2..8 is the useful range")

#: name -> compressor class, in definition order (filled by ``Compressor.__init_subclass__``).
COMPRESSORS: dict = {}


class Compressor(Configurable):
    """``compress`` writes ``C(values)`` as a message body; ``decompress`` reads one."""

    name = ""
    selected_by = "--compressor"
    codec = FP32
    #: Whether the body length depends on the values (then messages are variable-length).
    variable_length = False

    def __init_subclass__(cls, choice: bool = True, **kwargs):
        super().__init_subclass__(**kwargs)
        # A base without a name (_Sparse), or one declared with choice=False (a coder of
        # entries others select), is no --compressor choice of its own.
        if cls.name and choice:
            if cls.name in COMPRESSORS:
                raise ValueError(f"two compressors are named {cls.name!r}: "
                                 f"{COMPRESSORS[cls.name].__qualname__} and {cls.__qualname__}")
            COMPRESSORS[cls.name] = cls

    def __init__(self, config, segments, offsets):
        self.segments, self.offsets = segments, offsets
        self.count = int(offsets[-1])
        self.seed = config.seed

    def codecs(self) -> tuple:
        return (self.codec,)

    def compress(self, ctx, values, message):
        """Write ``C(values)`` into ``message.padded_body``, declare it, and return the header
        sent (``message.write``).  Coins and random positions are keyed by ``ctx.step`` and
        the sender, ``ctx.rank``."""
        raise NotImplementedError

    def decompress(self, padded_body, header, out, *, accumulate=False,
                   what="message") -> None:
        """``out <- C(v)`` (or ``out += C(v)``) from a body whose header was checked."""
        raise NotImplementedError

    def decompress_mean(self, uplinks, out, divisor) -> bool:
        """The server's fused path: ``out <- (sum over workers w of C(v_w)) / divisor`` in
        one pass over every uplink body (``uplinks``: the transport's receive buffer),
        bit for bit what :meth:`decompress` worker by worker and a division give.

        Returns False, having written nothing or a partial ``out``, where it has no such
        path (this default; a GPU ``out``) or a body fails a check: the caller then decodes
        worker by worker (:func:`~hpcgrad.algorithms.step.decode_into_mean`), which raises
        the error the worker-by-worker path always raised."""
        return False

    def _fusable(self, uplinks, out) -> bool:
        return isinstance(out, np.ndarray) and out.dtype == np.float32 \
            and out.size == self.count and uplinks.workers > 0


class Identity(Compressor):
    name = "identity"
    summary = "fp32, no compression"

    def compress(self, ctx, values, message):
        FP32.encode(values, message.padded_body)
        return message.write(FP32.id, 0, FP32.body_length(self.count))

    def decompress(self, padded_body, header, out, *, accumulate=False, what="message"):
        FP32.check_flags(header.flags, what)
        values = padded_body[: 4 * self.count].view("<f4")
        if accumulate:
            out += values
        else:
            out[...] = values

    def decompress_mean(self, uplinks, out, divisor) -> bool:
        if not self._fusable(uplinks, out) or any(
                uplinks.header(w).flags for w in range(uplinks.workers)):
            return False
        fused_server.fp32_mean(uplinks.values("<f4", self.count), out, divisor)
        return True


class ScaledSign(Compressor):
    name = "scaled-sign"
    summary = "|v|_1/d * sign(v) over the model"
    codec = SCALED_SIGN
    _lrs = None  # decompress_mean's per-worker -scale, allocated on first use

    def compress(self, ctx, values, message):
        body = message.padded_body
        k = kernels.for_array(values)
        k.sign_pack(values, body)  # writes whole 8-byte words: the scale goes in after
        scale = np.float32(k.magnitude_sum(values) / self.count)
        SCALED_SIGN.write_scale(body, self.count, scale)
        return message.write(SCALED_SIGN.id, 0, SCALED_SIGN.body_length(self.count))

    def decompress(self, padded_body, header, out, *, accumulate=False, what="message"):
        SCALED_SIGN.check_flags(header.flags, what)
        scale = SCALED_SIGN.check_scale(padded_body, self.count, what)
        _check_padding_bits(padded_body, self.count, what)
        if not accumulate:
            out[...] = 0
        # x - lr*(s + 0*x) with lr = -scale is x + scale*s: the sign kernel, no temporaries.
        kernels.for_array(out).apply_sign_update(out, padded_body, -scale, np.float32(0))

    def decompress_mean(self, uplinks, out, divisor) -> bool:
        if not self._fusable(uplinks, out):
            return False
        if self._lrs is None or self._lrs.size != uplinks.workers:
            self._lrs = np.zeros(uplinks.workers, dtype=np.float32)
        try:  # every check decompress makes, worker by worker
            for w in range(uplinks.workers):
                body, what = uplinks.padded_body(w), uplinks.what(w)
                SCALED_SIGN.check_flags(uplinks.header(w).flags, what)
                self._lrs[w] = -SCALED_SIGN.check_scale(body, self.count, what)
                _check_padding_bits(body, self.count, what)
        except WireFormatError:
            return False
        fused_server.sign_mean(uplinks.rows.view(np.uint64), self._lrs, out, divisor)
        return True


class SparseValues(Compressor, choice=False):
    """A sparse vector by its entries -- sorted positions and their values -- as one
    ``sparse-values`` body: positions raw, as a bitmap or as Rice gaps (whichever is
    shortest), values fp32 (fp16 with ``fp16``), optionally a membership bitmap.

    The base of the top-K / random-K compressors, and by itself what a server sends merged
    entries back with (topk's downlink: the union and its mean).  Which entries to send is
    the caller's business; :meth:`write_entries` codes them, :meth:`decode_entries` reads
    them back into the caller's arrays (a server's merge rows), :meth:`decompress` into a
    dense vector.  ``capacity``: the most entries a body it reads may hold (a longer one is
    refused as corrupt).  Not a ``--compressor`` choice: it selects nothing.
    """

    name = "sparse-values"
    codec = SPARSE_VALUES
    variable_length = True

    def __init__(self, config, segments, offsets, capacity: int, fp16: bool = False):
        super().__init__(config, segments, offsets)
        self.capacity = int(capacity)
        self.fp16 = bool(fp16)
        self._pos = self._val = None  # decompress's scratch, allocated on first use

    def write_entries(self, positions, values, nnz: int, message, marked=None):
        """Code ``positions[:nnz]`` (sorted, distinct) and ``values[:nnz]`` (float32; rounded
        to fp16 on the wire with ``fp16``) into ``message``, with ``marked`` (one uint8 per
        entry) as the membership bitmap if given; returns the header sent."""
        return message.write(*SPARSE_VALUES.encode_entries(
            positions, values, nnz, self.count, message.padded_body, self.fp16, marked))

    def decode_entries(self, body, header, positions, values, marked=None, *,
                       what="message") -> int:
        """Fill ``positions``, ``values`` (and ``marked``, for a body with a membership
        bitmap) from ``body`` (exactly ``header.body_length`` bytes); return the entry count.
        A body with more entries than ``values`` holds is refused."""
        return SPARSE_VALUES.decode_into(body, self.count, header.flags, positions, values,
                                         marked, what=what)

    def decompress(self, padded_body, header, out, *, accumulate=False, what="message"):
        if self._pos is None:
            self._pos = np.zeros(self.capacity, dtype=np.int64)
            self._val = np.zeros(self.capacity, dtype=np.float32)
        nnz = self.decode_entries(padded_body[: header.body_length], header, self._pos,
                                  self._val, what=what)
        if not accumulate:
            out[...] = 0
        np.add.at(out, self._pos[:nnz], self._val[:nnz])  # in place: no K-sized temporaries


class _Sparse(SparseValues, choice=False):
    """Both sparse compressors: K_l positions per tensor (``ks``; by default from
    ``--sparsity``), their values in ``sparse-values``.  After :meth:`compress` or
    :meth:`send_at`, ``positions[:nnz]`` and ``values[:nnz]`` are the entries sent (values
    as the receiver decodes them): what a residual subtracts."""

    options = (SPARSITY,)

    @classmethod
    def check_settings(cls, cfg):
        fail(cfg.sparsity < 1, f"{cls.name}: sparsity {cfg.sparsity} selects every "
             "coordinate; use --compressor identity for no compression")

    def __init__(self, config, segments, offsets, ks=None, fp16: bool = False):
        if ks is None:
            ks = require_k_below_d(k_by_fraction(segments, config.sparsity), segments,
                                   f"the {self.name} compressor", f"--sparsity {config.sparsity}")
        super().__init__(config, segments, offsets, sum(ks), fp16)
        self.ks = list(ks)
        self.positions = np.zeros(self.capacity, dtype=np.int64)
        self.values = np.zeros(self.capacity, dtype=np.float32)
        self.nnz = 0

    def send_at(self, values, nnz: int, message, *, unbiased: bool = False):
        """Send ``values`` at ``positions[:nnz]`` (sorted; chosen by :meth:`compress`, or
        written there by the caller: positions shared by every worker).  ``unbiased``:
        tensor l's entries times ``numel_l / K_l`` (rand-K's estimator; tensor l must have
        exactly K_l entries).  fp16 values saturate at +-65504 and are rounded here, so
        ``values`` holds what the receiver decodes.  Returns the header sent."""
        np.take(values, self.positions[:nnz], out=self.values[:nnz])
        self.finish_values(nnz, unbiased=unbiased)
        return self.write_entries(self.positions, self.values, nnz, message)

    def finish_values(self, nnz: int, *, unbiased: bool = False) -> None:
        """``values[:nnz]``, gathered at ``positions[:nnz]``, made what the receiver decodes:
        rand-K's ``numel_l / K_l`` (``unbiased``), the fp16 saturation and rounding; sets
        ``nnz`` (:meth:`send_at`'s rules, for a device step that gathers on the device)."""
        pos, vals = self.positions[:nnz], self.values[:nnz]
        if unbiased:
            bounds = np.searchsorted(pos, self.offsets)  # where each tensor's entries start
            for l, (n, k) in enumerate(zip(self.segments, self.ks)):
                vals[bounds[l]: bounds[l + 1]] *= np.float32(n / k)
        if self.fp16:
            np.clip(vals, np.float32(-65504), np.float32(65504), out=vals)
            vals[...] = vals.astype(np.float16)
        self.nnz = nnz


class TopKCompressor(_Sparse):
    """Per tensor the K_l entries of largest ``|scores|`` (``|values|`` unless given), ties
    in index order, exact zeros never sent.  ``ks`` and ``fp16`` let the topk algorithm use
    it with its own K (and its own refusal) and fp16 values; its selection rules pass
    scores of their own (union-boost, aggregate-hint) or positions (:meth:`send_at`)."""

    name = "topk"
    summary = "the K_l = ceil(--sparsity * numel_l) largest entries of each tensor"

    def __init__(self, config, segments, offsets, ks=None, fp16: bool = False):
        super().__init__(config, segments, offsets, ks, fp16)
        self.selector = TopKSelector(offsets, segments, self.ks, "exact")
        self._negative = np.zeros(self.capacity, dtype=np.uint8)  # the sign output, unused

    def select(self, scores) -> int:
        """``positions[:end]`` <- the top-K positions of ``|scores|``; returns ``end``."""
        return self.selector.select(scores, self.positions, self._negative)

    def compress(self, ctx, values, message, scores=None):
        """As :meth:`Compressor.compress`; ``scores`` (same length) steer the selection."""
        return self.send_at(values, self.select(values if scores is None else scores), message)


class RandomK(_Sparse):
    name = "randomk"
    summary = ("K_l = ceil(--sparsity * numel_l) seeded random entries of each tensor, "
               "scaled by numel_l/K_l (unbiased)")

    def __init__(self, config, segments, offsets, ks=None, fp16: bool = False):
        super().__init__(config, segments, offsets, ks, fp16)
        self.draws = sample.SeededPositions(self.segments, self.offsets, self.ks)

    def compress(self, ctx, values, message):
        return self.send_at(values, self.choose(ctx), message, unbiased=True)

    def choose(self, ctx) -> int:
        """``positions[:end]`` <- this step's random positions (sender ``ctx.rank``); ``end``.

        A generator per (seed, step, rank, tensor): the positions depend on nothing else, so a
        restored run redraws them; the draw allocates no K-sized arrays."""
        return self.draws.draw([self.seed, ctx.step, ctx.rank], self.positions)


class SparseSigns(Compressor, choice=False):
    """A ternary vector by its non-zeros -- sorted positions and sign bits (1 = -1) -- as
    one ``sparse-sign`` body (positions raw, as a bitmap or as Rice gaps, whichever is
    shortest), or with ``base3`` as ``base3`` where five trits a byte is shorter still
    (S3GD-MV's downlink: the vote's direction over the union, which may be dense).

    The base of :class:`TopKSigns`, and by itself what a server sends a merged vote back
    with; :meth:`decode_entries` reads a body into the caller's arrays (the merge rows),
    :meth:`decompress` into a dense vector of +-1 and 0.  Not a ``--compressor`` choice:
    signs without a scale are no estimate of v to feed back an error of.
    """

    name = "sparse-sign"
    codec = SPARSE_SIGN
    variable_length = True

    def __init__(self, config, segments, offsets, capacity: int, base3: bool = False):
        super().__init__(config, segments, offsets)
        self.capacity = int(capacity)
        self.base3 = bool(base3)
        self._pos = self._neg = None  # decompress's scratch, allocated on first use

    def codecs(self) -> tuple:
        return (SPARSE_SIGN, BASE3) if self.base3 else (SPARSE_SIGN,)

    def write_entries(self, positions, negative, nnz: int, message):
        """Code ``positions[:nnz]`` (sorted, distinct) and their sign bits into ``message``
        (the shortest body of :meth:`codecs`); returns the header sent."""
        return message.write(*encode_sparse_ternary(positions, negative, nnz, self.count,
                                                    message.padded_body,
                                                    allow_base3=self.base3))

    def decode_entries(self, body, header, positions, negative, *, what="message") -> int:
        """Fill ``positions`` and ``negative`` from ``body`` (exactly ``header.body_length``
        bytes, of one of :meth:`codecs`); return the entry count."""
        codec = next((c for c in self.codecs() if c.id == header.codec), None)
        if codec is None:
            raise WireFormatError(f"{what}: codec {header.codec} is not "
                                  f"{' or '.join(c.name for c in self.codecs())}")
        return codec.decode_into(body, self.count, header.flags, positions, negative,
                                 what=what)

    def decompress(self, padded_body, header, out, *, accumulate=False, what="message"):
        if self._pos is None:
            self._pos = np.zeros(self.capacity, dtype=np.int64)
            self._neg = np.zeros(self.capacity, dtype=np.uint8)
        nnz = self.decode_entries(padded_body[: header.body_length], header, self._pos,
                                  self._neg, what=what)
        if not accumulate:
            out[...] = 0
        pos = self._pos[:nnz]  # distinct: += adds once per entry
        out[pos] += np.where(self._neg[:nnz] == 1, np.float32(-1), np.float32(1))


class TopKSigns(SparseSigns, choice=False):
    """``sign(v)`` at per tensor the K_l entries of largest |v| (``ks``), by ``selection``
    (:data:`~hpcgrad.compression.selection.SELECTIONS`; ``threshold`` sends up to
    K_l(1 + band)): S3GD-MV's uplink.  After :meth:`compress`, ``positions[:nnz]`` are the
    entries sent (what the residual forgets) and ``negative[:nnz]`` their sign bits."""

    name = "topk-signs"

    def __init__(self, config, segments, offsets, ks, selection: str = "exact",
                 band: float = 0.1):
        self.selector = TopKSelector(offsets, segments, ks, selection, band)
        super().__init__(config, segments, offsets, self.selector.capacity)
        self.ks = self.selector.ks
        self.positions = np.zeros(self.capacity, dtype=np.int64)
        self.negative = np.zeros(self.capacity, dtype=np.uint8)
        self.nnz = 0

    def compress(self, ctx, values, message):
        self.nnz = self.selector.select(values, self.positions, self.negative)
        return self.write_entries(self.positions, self.negative, self.nnz, message)


class QSGDCompressor(Compressor):
    """``bits`` (``--bits`` unless given) is the width of the next :meth:`compress` and
    the one :meth:`decompress` expects; it may change between steps up to ``widest``
    (dq-sgd).  ``norms`` holds the per-tensor norms of the last body (de)compressed."""

    name = "qsgd"
    summary = "per-tensor norm and --bits stochastic levels (unbiased)"
    options = (BITS,)
    variable_length = True  # the qsgd codec's length depends on its width

    def __init__(self, config, segments, offsets, bits=None, widest=None):
        super().__init__(config, segments, offsets)
        self.bits = int(config.bits if bits is None else bits)
        self.codec = QSGDCodec(segments, self.bits if widest is None else int(widest),
                               fp32=False)
        self.norms = np.zeros(len(segments), dtype=np.float32)
        self._sections = None  # decompress_mean's field-section starts at self.bits

    @property
    def bits(self) -> int:
        return self._bits

    @bits.setter
    def bits(self, value) -> None:
        self._bits = int(value)
        self._sections = None  # the sections' lengths depend on the width

    def compress(self, ctx, values, message, next_bits: int = 0):
        """As :meth:`Compressor.compress`; ``next_bits`` (dq-sgd's downlink) goes in the
        flags' next-width field."""
        key = quantize.stream_key(self.seed, ctx.step, ctx.rank)
        length = encode_qsgd(values, self.offsets, self.bits, key, message.padded_body,
                             self.norms)
        return message.write(QSGDCodec.id, QSGDCodec.flags(self.bits, next_bits), length)

    def decompress(self, padded_body, header, out, *, accumulate=False, what="message"):
        if header.flags != QSGDCodec.flags(self.bits):
            bits, nxt = QSGDCodec.split_flags(header.flags)
            raise WireFormatError(f"{what}: header flags {header.flags:#06x} (width {bits}, "
                                  f"next {nxt}); expected width {self.bits}, next 0")
        self.codec.decode_into(padded_body[: header.body_length], self.count, header.flags,
                               out, accumulate=accumulate, norms=self.norms, what=what)

    def decompress_mean(self, uplinks, out, divisor) -> bool:
        if not self._fusable(uplinks, out) or self.bits == 0:
            return False
        flags = QSGDCodec.flags(self.bits)
        try:  # every check decompress makes before its kernel, worker by worker
            for w in range(uplinks.workers):
                header = uplinks.header(w)
                if header.flags != flags:
                    return False
                self.codec.check_body(header.body_length, self.count, header.flags,
                                      what=uplinks.what(w))
        except WireFormatError:
            return False
        nseg = len(self.segments)
        if self._sections is None:
            self._sections = np.cumsum([0, *quantize.section_lengths(self.segments,
                                                                     self.bits)])
        code = fused_server.qsgd_mean(uplinks.rows[:, : 4 * nseg].view("<f4"),
                                      uplinks.rows[:, 4 * nseg:], self.offsets,
                                      self._sections, self.bits, out, divisor)
        if code < 0:
            return False
        self.norms[...] = uplinks.rows[-1, : 4 * nseg].view("<f4")  # the last decoded
        return True


def create(config, segments, offsets) -> Compressor:
    return COMPRESSORS[config.compressor](config, segments, offsets)
