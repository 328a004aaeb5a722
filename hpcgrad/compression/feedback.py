"""Error feedback's memory: the residual ``e`` of what compression left out (GRACE's
"memory" role, next to the compressor and the communicator).

Every algorithm that remembers what it did not send keeps one :class:`Residual`:

``compensate(g)``
    ``e <- rho*e + g`` in place, and return ``e``: the vector to compress this step
    (``rho = 1``: plain error feedback; s3gd-mv's ``--residual rho`` decays it);
``add_to(u)``
    ``u <- u + e``: ef-sgd's step-ahead point and ``d = u + e`` where the memory is not
    the vector compressed;
then, once ``C(e)`` is known, one of

``subtract(sent)``
    ``e <- e - C(e)`` for a dense decoded ``C(e)`` (ef-sgd: any compressor);
``subtract_at(positions, sent)``
    ``e[P] <- e[P] - values`` for a sparse ``C(e)`` (topk: 0 for fp32 values, the
    fp16 rounding error otherwise);
``forget(positions, nnz)``
    ``e[P] <- 0`` (s3gd-mv: a sent sign uses up the whole entry).

The array is allocated on first use, on the array module of the gradient (NumPy or
CuPy), unless ``size`` is given; ``values`` is what checkpoints save (algorithms expose
it under their ``state_names`` as ``residual``, the path checkpoints have always used).
"""

from __future__ import annotations

import numpy as np

from .. import kernels
from ..kernels import sparse


class Residual:
    """The residual ``e`` of one rank, decaying by ``rho`` each step (``0 <= rho <= 1``)."""

    def __init__(self, rho: float = 1.0, size: int | None = None):
        if not 0 < rho <= 1:
            raise ValueError(f"a residual decays by rho in (0, 1], got {rho} (rho = 0 keeps "
                             "no memory: use no Residual)")
        self.rho = np.float32(rho)
        self.values = None if size is None else np.zeros(size, dtype=np.float32)

    def _allocated(self, like):
        if self.values is None:  # a checkpoint may have restored it already
            self.values = kernels.array_module(like).zeros_like(like)
        return self.values

    def compensate(self, grad):
        """``e <- rho*e + grad``; returns ``e`` (the memory itself, updated in place)."""
        e = self._allocated(grad)
        if self.rho != 1:
            e *= self.rho
        e += grad
        return e

    def add_to(self, update) -> None:
        """``update <- update + e``."""
        update += self._allocated(update)

    def subtract(self, sent) -> None:
        """``e <- e - sent``, ``sent`` the dense decoded ``C(e)``."""
        e = self.values
        np.subtract(e, sent, out=e)

    def subtract_at(self, positions, sent) -> None:
        """``e[positions] <- e[positions] - sent`` (sorted, distinct positions)."""
        self.values[positions] -= sent

    def forget(self, positions, nnz: int) -> None:
        """``e[positions[:nnz]] <- 0``."""
        sparse.zero_at(self.values, positions, 0, nnz)


def residual_of(memory: str = "memory"):
    """A ``residual`` property for an algorithm that keeps its :class:`Residual` in
    attribute ``memory`` (None: no memory), so that checkpoints keep reading and writing
    the state path ``"residual"`` they always used."""

    def get(alg):
        m = getattr(alg, memory)
        return None if m is None else m.values

    def set_(alg, value):
        m = getattr(alg, memory)
        if m is not None:
            m.values = value
        elif value is not None:
            raise ValueError(f"{alg.name} keeps no residual in this configuration")

    return property(get, set_, doc="The residual e (the Residual's values; None before "
                                   "first use or without memory).")
