"""A vector's per-element update and exact top-K selection in one pass (issue 19).

:class:`CompensatedTopK` does for a :class:`~hpcgrad.compression.selection.TopKSelector`
with the ``exact`` rule what ``selector.select(v)`` does right after an elementwise update
made v -- the same positions, sign bits and v, bit for bit -- in one pass over each large
tensor instead of the update's pass and the selection's three
(:mod:`hpcgrad.kernels.sparse.fused_select`):

1. sample the magnitudes the update will leave (16384 values, strided as the reference
   samples) and take the threshold t above which about 1.5 K of the tensor's entries lie
   (the reference's first candidate margin);
2. one pass: the update, recording index and value of every entry above t;
3. partition the candidates' magnitudes for the K-th largest, T (> t, so every entry with
   ``|v| >= T`` is a candidate), and take the entries above T, then ties at T in index
   order, from the candidates alone (read in order, not gathered from v).

Where step 2 finds fewer than K candidates or more than the buffer holds (heavy ties, a
freak sample), the reference selection runs on the updated tensor: same result, its cost.
Tensors of at most 4 * 16384 entries (where the reference partitions a copy) are updated
and handed to the reference.

The updates (each knows its sample / gather-while-updating / update-only kernels):
:class:`ResidualUpdate` ``e <- rho*e + g`` (s3gd-mv, topk), :class:`NoUpdate` (s3gd-mv
without a residual), :class:`LocalStepUpdate` (ef-sgd: momentum SGD's local step, then
``e <- e + u``).
"""

from __future__ import annotations

import numpy as np

from ..kernels import fused_feedback, sparse
from ..kernels.sparse import fused_select
from .feedback import Residual
from .selection import TopKSelector

#: The reference's first candidate margin (selection.TopK._kth_magnitude_filtered).
MARGIN = 1.5


class NoUpdate:
    """Select from ``values`` as they are."""

    def __init__(self, values):
        self.values = values

    def sample(self, lo, hi, stride, out):
        np.abs(self.values[lo:hi][::stride][: out.size], out=out)

    def gather(self, lo, hi, threshold, cand_pos, cand_val):
        return fused_select.gather_positions(self.values[lo:hi], threshold, cand_pos, cand_val)

    def apply(self, lo, hi):
        pass


class ResidualUpdate:
    """``e <- rho*e + g`` on ``residual`` (allocated on first use like
    :meth:`Residual.compensate`); ``values`` is e."""

    def __init__(self, residual: Residual, grad):
        self.grad, self.values = grad, residual._allocated(grad)
        self.rho = residual.rho
        self.decay = bool(self.rho != 1)

    def sample(self, lo, hi, stride, out):
        fused_select.compensated_sample(self.values[lo:hi], self.grad[lo:hi], self.rho,
                                        self.decay, stride, out)

    def gather(self, lo, hi, threshold, cand_pos, cand_val):
        return fused_select.compensate_gather(self.values[lo:hi], self.grad[lo:hi], self.rho,
                                              self.decay, threshold, cand_pos, cand_val)

    def apply(self, lo, hi):
        fused_select.compensate(self.values[lo:hi], self.grad[lo:hi], self.rho, self.decay)


class LocalStepUpdate:
    """ef-sgd's ``b <- b*mu + (x*wd + g)``, ``e <- e + b*lr`` (:mod:`hpcgrad.kernels.
    fused_feedback`); ``values`` is e.  ``params`` None: no weight-decay term."""

    def __init__(self, grad, params, buffer, memory, mu, wd, lr):
        self.values = memory
        self.arrays = (grad, grad if params is None else params, buffer, memory)
        self.has_params = params is not None
        self.scalars = (mu, wd, lr)

    def _args(self, lo, hi):
        g, x, b, e = (a[lo:hi] for a in self.arrays)
        return (g, x, self.has_params, b, e) + self.scalars

    def sample(self, lo, hi, stride, out):
        fused_feedback.local_step_sample(*self._args(lo, hi), stride, out)

    def gather(self, lo, hi, threshold, cand_pos, cand_val):
        return fused_feedback.local_step_gather(*self._args(lo, hi), threshold, cand_pos,
                                                cand_val)

    def apply(self, lo, hi):
        fused_feedback.local_step(*self._args(lo, hi))


class CompensatedTopK:
    """Update, then select with ``selector`` (``exact`` rule), one pass per large tensor;
    candidate buffers allocated here, once."""

    def __init__(self, selector: TopKSelector):
        if any(part.rule != "exact" for part in selector.parts):
            raise ValueError("CompensatedTopK fuses the exact rule only")
        self.selector = selector
        largest = max((p for p in selector.parts if self._fused(p)), key=lambda p: p.k,
                      default=None)
        cap = 0 if largest is None else min(largest.size, 4 * largest.k + 1024)
        self.cand_pos = np.zeros(cap, dtype=np.int64)
        self.cand_val = np.zeros(cap, dtype=np.float32)  # signed, in index order
        self.cand_abs = np.zeros(cap, dtype=np.float32)  # |values|, partitioned
        self.fallbacks = 0  # tensors the reference selection had to take (for tests)

    @staticmethod
    def _fused(part) -> bool:
        return part.size > 4 * part.sample.size

    def select(self, update, positions, negative, forget: bool = False) -> int:
        """Apply ``update`` (one of this module's updates), then write the sorted global
        positions and sign bits of every tensor's K_l entries of ``update.values`` into
        ``positions`` / ``negative``; return how many.  ``forget``: set ``update.values``
        to 0 at the positions taken (s3gd-mv's ``a[picked] <- 0``)."""
        values = update.values
        end = 0
        for part in self.selector.parts:
            lo, hi = part.offset, part.offset + part.size
            v = values[lo:hi]
            found = -1
            if self._fused(part):
                sample = part.sample
                s, n, k = sample.size, part.size, part.k
                update.sample(lo, hi, part.stride, sample)
                sample.sort()
                rank = s - 1 - min(s - 1, int(np.ceil(MARGIN * k * s / n)))
                found = update.gather(lo, hi, sample[rank], self.cand_pos[: min(n, 4 * k + 1024)],
                                      self.cand_val)
                if found < k:
                    self.fallbacks += 1  # the update is done; the reference selects
            else:
                update.apply(lo, hi)
            if found < part.k:
                new = part.select(v, positions, negative, end)
                if forget:
                    sparse.zero_at(values, positions, end, new)
                end = new
                continue
            magnitudes = self.cand_abs[:found]
            fused_select.magnitudes_of(self.cand_val, found, magnitudes)
            magnitudes.partition(found - part.k)
            end = fused_select.take_top_candidates(
                v, self.cand_pos, self.cand_val, found, magnitudes[found - part.k], part.k,
                lo, positions, negative, end, forget)
        return end
