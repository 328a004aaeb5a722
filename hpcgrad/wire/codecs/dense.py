"""Dense bodies: every coordinate as an IEEE value (``docs/wire-format.md`` §4.1, §4.2)."""

from __future__ import annotations

import numpy as np

from . import corruption
from .base import CODECS, EncodedBody, FixedLengthCodec

__all__ = ["DenseCodec", "Fp32Codec", "Fp16Codec", "FP32", "FP16"]


class DenseCodec(FixedLengthCodec):
    """``count`` IEEE values of ``dtype``, little-endian; ``flags`` 0.

    Corruption: ``invert`` negates every value (flips its IEEE sign bit, so a zero becomes
    -0.0); ``random`` replaces the values by Gaussian ones scaled to the honest message's
    L2 norm.
    """

    dtype: np.dtype

    def body_length(self, count: int) -> int:
        return count * self.dtype.itemsize

    def encode(self, values, padded_body) -> EncodedBody:
        """The values, rounded to ``dtype`` (round to nearest even; out of range: inf)."""
        n = values.size
        padded_body[: n * self.dtype.itemsize].view(self.dtype)[...] = values
        return self.encoded(n)

    def decode(self, body, count, flags=0, segments=None) -> np.ndarray:
        return body.view(self.dtype).astype(np.float32)

    def corrupt(self, padded_body, count, flags, body_length, rng=None, *, segments=None,
                what="message") -> None:
        corruption.ieee_values(padded_body[:body_length], self.dtype, rng)


class Fp32Codec(DenseCodec):
    """``fp32`` (id 1): ``count`` binary32 values (the allreduce buffer is one, headerless)."""

    id, name, dtype = 1, "fp32", np.dtype("<f4")


class Fp16Codec(DenseCodec):
    """``fp16`` (id 2): ``count`` binary16 values, widened to float32 when decoded."""

    id, name, dtype = 2, "fp16", np.dtype("<f2")


FP32 = CODECS[Fp32Codec.id]
FP16 = CODECS[Fp16Codec.id]
