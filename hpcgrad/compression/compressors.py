"""Compressors ``C``: a float32 vector in, one message body out, and back.

The compressor role of GRACE's split (compressor / memory / communicator; the
memory is :mod:`hpcgrad.compression.feedback`, the communicator
:mod:`hpcgrad.comm.transport`): stateless given ``(seed, step, sender)``, so the
error-feedback layer (:mod:`hpcgrad.algorithms.ef_sgd`) can wrap any of them, the
``qsgd`` / ``dq-sgd`` algorithms send their uplinks through :class:`QSGDCompressor`,
and a new one is one small class here.  Each writes a body of a documented codec
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

Each compressor declares the settings it reads (``options``; :mod:`hpcgrad.options`) and
registers itself by subclassing :class:`Compressor` with a ``name``: ``--compressor`` lists
:data:`COMPRESSORS`, in definition order.  ``--sparsity`` and ``--bits`` are declared here
once, shared with the algorithms that read them too (s3gd-mv and topk; qsgd).
"""

from __future__ import annotations

import numpy as np

from .. import kernels
from ..options import Configurable, Option, fail
from ..wire.codecs import (FP32, SCALED_SIGN, SPARSE_VALUES, QSGDCodec, _check_padding_bits,
                     encode_qsgd, encode_sparse_values)
from ..errors import WireFormatError
from ..kernels import quantize
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

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.name:  # a base without a name (_Sparse) is no choice of its own
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


class ScaledSign(Compressor):
    name = "scaled-sign"
    summary = "|v|_1/d * sign(v) over the model"
    codec = SCALED_SIGN

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


class _Sparse(Compressor):
    """Both sparse compressors: K_l positions per tensor, fp32 values, ``sparse-values``."""

    codec = SPARSE_VALUES
    variable_length = True
    options = (SPARSITY,)

    @classmethod
    def check_settings(cls, cfg):
        fail(cfg.sparsity < 1, f"{cls.name}: sparsity {cfg.sparsity} selects every "
             "coordinate; use --compressor identity for no compression")

    def __init__(self, config, segments, offsets):
        super().__init__(config, segments, offsets)
        self.ks = require_k_below_d(k_by_fraction(segments, config.sparsity), segments,
                                    f"the {self.name} compressor",
                                    f"--sparsity {config.sparsity}")
        k = sum(self.ks)
        self.positions = np.zeros(k, dtype=np.int64)
        self.values = np.zeros(k, dtype=np.float32)
        # Decoding scratch: a downlink of the server's compress-back has at most K too.
        self._pos = np.zeros(k, dtype=np.int64)
        self._val = np.zeros(k, dtype=np.float32)

    def _choose(self, values, step, sender) -> int:
        raise NotImplementedError

    def compress(self, ctx, values, message):
        nnz = self._choose(values, ctx.step, ctx.rank)
        return message.write(*encode_sparse_values(self.positions, self.values, nnz,
                                                   self.count, message.padded_body))

    def decompress(self, padded_body, header, out, *, accumulate=False, what="message"):
        nnz = SPARSE_VALUES.decode_into(padded_body[: header.body_length], self.count,
                                        header.flags, self._pos, self._val, what=what)
        if not accumulate:
            out[...] = 0
        np.add.at(out, self._pos[:nnz], self._val[:nnz])  # in place: no K-sized temporaries


class TopKCompressor(_Sparse):
    name = "topk"
    summary = "the K_l = ceil(--sparsity * numel_l) largest entries of each tensor"

    def __init__(self, config, segments, offsets):
        super().__init__(config, segments, offsets)
        self.selector = TopKSelector(offsets, segments, self.ks, "exact")
        self._negative = np.zeros(sum(self.ks), dtype=np.uint8)  # the sign output, unused

    def _choose(self, values, step, sender):
        end = self.selector.select(values, self.positions, self._negative)
        np.take(values, self.positions[:end], out=self.values[:end])
        return end


class RandomK(_Sparse):
    name = "randomk"
    summary = ("K_l = ceil(--sparsity * numel_l) seeded random entries of each tensor, "
               "scaled by numel_l/K_l (unbiased)")

    def _choose(self, values, step, sender):
        end = 0
        for l, (o, n, k) in enumerate(zip(self.offsets, self.segments, self.ks)):
            rng = np.random.default_rng([self.seed, step, sender, l])
            pos = self.positions[end: end + k]
            pos[...] = np.sort(rng.choice(n, size=k, replace=False)) + o
            np.multiply(values[pos], np.float32(n / k), out=self.values[end: end + k])
            end += k
        return end


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


def create(config, segments, offsets) -> Compressor:
    return COMPRESSORS[config.compressor](config, segments, offsets)
