"""Top-K selection of the largest-magnitude entries of one tensor.

Two rules, both writing sorted global positions and sign bits into
preallocated arrays, both skipping exact zeros (sign(0) = 0 sends nothing):

``exact``
    the K entries of largest |v|; ties at the K-th magnitude are taken in
    index order.  The K-th magnitude comes from an in-place partition
    (introselect, O(n)) of a scratch copy of |v|, or, for large tensors, of
    the few entries above a threshold estimated from a sample (candidate
    filtering: the same result, a few passes over memory instead of a
    partition of all n).  The reference.
``threshold``
    a magnitude threshold estimated from an evenly strided sample of |v|,
    then refined by counting passes until the count above it is within
    ``band`` of K (at most ``max_passes`` passes; if the count is still
    outside the band, e.g. with many equal magnitudes, the exact rule runs
    instead, so a message never exceeds K(1 + band) entries).  Every entry
    above the threshold is sent, so the achieved K
    varies a little from step to step (``nnz_up`` in the log).  Because both
    rules take everything above a threshold, on inputs without ties the
    threshold set contains the exact set when it is larger and is contained
    in it when smaller.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import ConfigError
from ..kernels.sparse import magnitude

SELECTIONS = ("exact", "threshold")


class TopK:
    """Selection for one segment ``[offset, offset + size)`` of the flat vector."""

    def __init__(self, offset: int, size: int, k: int, rule: str = "exact", band: float = 0.1,
                 sample: int = 16384, max_passes: int = 8):
        if not 1 <= k <= size:
            raise ValueError(f"K = {k} is not within 1..{size} (the tensor's size)")
        self.offset, self.size, self.k = offset, size, k
        self.rule, self.band, self.max_passes = rule, band, max_passes
        # |v| for the exact rule (allocated on first use by a threshold selector), and
        # the threshold rule's sample.
        self.sample = np.empty(min(size, sample), np.float32)
        large = size > 4 * self.sample.size  # exact by candidate filtering, no full copy
        self.magnitudes = np.empty(size, np.float32) if rule == "exact" and not large else None
        self.candidates = None
        self.stride = max(1, size // self.sample.size)
        self.passes = 0  # counting passes of the last threshold selection
        self.fallbacks = 0  # threshold selections that fell back to the exact rule

    def select(self, values, positions, negative, start: int) -> int:
        """Append this segment's selection to ``positions[start:]``; return the new end."""
        if self.rule == "exact":
            return self._exact(values, positions, negative, start)
        return self._threshold(values, positions, negative, start)

    def _exact(self, values, positions, negative, start):
        n, k = self.size, self.k
        threshold = self._kth_magnitude_filtered(values) if n > 4 * self.sample.size else None
        if threshold is None:
            if self.magnitudes is None:  # a threshold selector's first full partition
                self.magnitudes = np.empty(n, np.float32)
            magnitudes = self.magnitudes
            magnitude.abs_into(values, magnitudes)
            magnitudes.partition(n - k)
            threshold = magnitudes[n - k]
        return magnitude.take_top(values, threshold, k, self.offset, positions, negative, start)

    def _kth_magnitude_filtered(self, values):
        """The K-th largest |v| through candidate filtering: a threshold below it from the
        sample, the few entries above that threshold gathered and partitioned.  None when
        no sampled threshold gives between K and 4K candidates (heavy ties, say)."""
        n, k = self.size, self.k
        if self.candidates is None:
            self.candidates = np.empty(min(n, 4 * k + 1024), np.float32)
        sample = self.sample
        s = sample.size
        magnitude.abs_into(values[:: self.stride][:s], sample)
        sample.sort()
        for margin in (1.5, 3.0):  # expected candidates: margin * K
            rank = s - 1 - min(s - 1, int(np.ceil(margin * k * s / n)))
            found = magnitude.gather_above(values, sample[rank], self.candidates)
            if found >= k:
                candidates = self.candidates[:found]
                candidates.partition(found - k)
                return candidates[found - k]
        return None

    def _threshold(self, values, positions, negative, start):
        n, k = self.size, self.k
        if n <= self.sample.size:  # small tensors: no sampling needed
            return self._exact(values, positions, negative, start)
        sample = self.sample
        magnitude.abs_into(values[:: self.stride][: sample.size], sample)
        s = sample.size
        rank = min(s - 1, max(0, s - int(round(k * s / n))))
        sample.partition(rank)
        threshold = sample[rank]
        lo_count, hi_count = k * (1 - self.band), k * (1 + self.band)
        below, above = np.float32(0), np.float32(np.inf)  # thresholds bracketing K
        self.passes = 0
        for _ in range(self.max_passes):
            count = magnitude.count_above(values, threshold)
            self.passes += 1
            if lo_count <= count <= hi_count:
                break
            if count > hi_count:
                below = max(below, threshold)
            else:
                above = min(above, threshold)
            if np.isfinite(above):
                threshold = np.float32((below + above) / 2)
            else:
                threshold = np.float32(threshold * 2 if threshold > 0 else 1e-30)
        if not lo_count <= count <= hi_count:
            # Not within the band after max_passes (heavy ties, say): the exact rule keeps
            # the message within the capacity the receivers allocated.
            self.fallbacks += 1
            return self._exact(values, positions, negative, start)
        return magnitude.take_top(values, threshold, count, self.offset, positions, negative,
                                  start)


def k_per_segment(numels, sparsity) -> list[int]:
    """K_l = ceil(sparsity * numel_l), at least 1 and at most numel_l, for each tensor; the
    total must stay below d (top-K of every coordinate is no compression)."""
    ks = [max(1, math.ceil(sparsity * n)) for n in numels]
    if sum(ks) >= sum(numels):
        raise ConfigError(f"topk: --sparsity {sparsity} selects K = {sum(ks)} of "
                          f"d = {sum(numels)} coordinates; top-K needs K < d")
    return [min(k, n) for k, n in zip(ks, numels)]
