"""Error feedback's ``e <- rho*e + g`` and exact top-K selection in one pass (issue 19).

:class:`CompensatedTopK` does for a :class:`~hpcgrad.compression.selection.TopKSelector`
with the ``exact`` rule what ``selector.select(residual.compensate(g), ...)`` does -- the
same positions, sign bits and residual, bit for bit -- in one pass over each large tensor
instead of four (:mod:`hpcgrad.kernels.sparse.fused_select`):

1. sample ``|rho*e + g|`` (16384 values, strided as the reference samples) and take the
   threshold t below which about 1.5 K of the tensor's entries lie above (the reference's
   first candidate margin);
2. one pass: ``e <- rho*e + g``, recording index and magnitude of every entry above t;
3. partition the candidates' magnitudes for the K-th largest, T (> t, so every entry with
   ``|e| >= T`` is a candidate), and take the entries above T, then ties at T in index
   order, from the candidates alone.

Where step 2 finds fewer than K candidates or more than the buffer holds (heavy ties, a
freak sample), the reference selection runs on the compensated tensor: same result, its
cost.  Tensors of at most 4 * 16384 entries (where the reference partitions a copy) are
compensated and handed to the reference.  ``forget``: the taken entries of e are set to 0
in the same step (s3gd-mv's ``a[picked] <- 0``; topk subtracts what it sent instead).
"""

from __future__ import annotations

import numpy as np

from ..kernels import sparse
from ..kernels.sparse import fused_select
from .feedback import Residual
from .selection import TopKSelector

#: The reference's first candidate margin (selection.TopK._kth_magnitude_filtered).
MARGIN = 1.5


class CompensatedTopK:
    """Compensate ``residual`` (None: select from the gradient itself) and select with
    ``selector`` (``exact`` rule), one pass per large tensor; buffers allocated here, once."""

    def __init__(self, selector: TopKSelector, residual: Residual | None):
        if any(part.rule != "exact" for part in selector.parts):
            raise ValueError("CompensatedTopK fuses the exact rule only")
        self.selector, self.residual = selector, residual
        largest = max((p for p in selector.parts if self._fused(p)), key=lambda p: p.k,
                      default=None)
        cap = 0 if largest is None else min(largest.size, 4 * largest.k + 1024)
        self.cand_pos = np.zeros(cap, dtype=np.int64)
        self.cand_mag = np.zeros(cap, dtype=np.float32)
        self.fallbacks = 0  # tensors the reference selection had to take (for tests)

    @staticmethod
    def _fused(part) -> bool:
        return part.size > 4 * part.sample.size

    def select(self, grad, positions, negative, forget: bool = False) -> int:
        """Compensate, then write the sorted global positions and sign bits of every tensor's
        K_l entries into ``positions`` / ``negative``; return how many.  ``forget``: set the
        residual to 0 at the positions taken."""
        memory = None
        if self.residual is not None:
            memory = self.residual._allocated(grad)  # a checkpoint may have restored it
            rho = self.residual.rho
            decay = bool(rho != 1)
        end = 0
        for part in self.selector.parts:
            lo, hi = part.offset, part.offset + part.size
            g = grad[lo:hi]
            e = g if memory is None else memory[lo:hi]
            if not self._fused(part):
                if memory is not None:
                    fused_select.compensate(e, g, rho, decay)
                new = part.select(e, positions, negative, end)
                if forget and memory is not None:
                    sparse.zero_at(memory, positions, end, new)
                end = new
                continue
            sample = part.sample
            s, n, k = sample.size, part.size, part.k
            if memory is None:
                np.abs(g[:: part.stride][:s], out=sample)
            else:
                fused_select.compensated_sample(e, g, rho, decay, part.stride, sample)
            sample.sort()
            rank = s - 1 - min(s - 1, int(np.ceil(MARGIN * k * s / n)))
            cand_pos, cand_mag = self.cand_pos[: min(n, 4 * k + 1024)], self.cand_mag
            if memory is None:
                found = fused_select.gather_positions(g, sample[rank], cand_pos, cand_mag)
            else:
                found = fused_select.compensate_gather(e, g, rho, decay, sample[rank],
                                                       cand_pos, cand_mag)
            if found < k:  # too few or too many candidates: the reference, on e as it is now
                self.fallbacks += 1
                new = part.select(e, positions, negative, end)
                if forget and memory is not None:
                    sparse.zero_at(memory, positions, end, new)
                end = new
                continue
            magnitudes = cand_mag[:found]
            magnitudes.partition(found - k)
            end = fused_select.take_top_candidates(
                e, cand_pos, found, magnitudes[found - k], k, lo, positions, negative, end,
                forget and memory is not None)
        return end
