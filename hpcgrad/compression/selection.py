"""Top-K selection: how many entries (the K rules) and which (the selection rules).

K rules, per tensor l of ``numel_l`` coordinates (each returns the list of K_l):

:func:`k_by_fraction`
    ``K_l = ceil(s * numel_l)`` with ``1 <= K_l <= numel_l`` (``--sparsity s``; topk,
    s3gd-mv, ef-sgd's topk / randomk compressors);
:func:`k_by_votes`
    ``K_l = ceil(c * numel_l / M)``: about c votes per coordinate from M workers
    (s3gd-mv's ``--k-per-worker auto``; must stay within ``1..numel_l``);
:func:`require_k_below_d`
    top-K's rule that ``K = sum K_l < d``: selecting every coordinate is no compression.

:class:`TopKSelector` applies one selection rule to every tensor of the flat vector; it
is the selector every top-K user shares.  Per tensor (:class:`TopK`), two selection
rules, both writing sorted global positions and sign bits into
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
        threshold, count, self.passes = magnitude.refine_threshold(
            lambda t: magnitude.count_above(values, t), threshold, lo_count, hi_count,
            self.max_passes)
        if not lo_count <= count <= hi_count:
            # Not within the band after max_passes (heavy ties, say): the exact rule keeps
            # the message within the capacity the receivers allocated.
            self.fallbacks += 1
            return self._exact(values, positions, negative, start)
        return magnitude.take_top(values, threshold, count, self.offset, positions, negative,
                                  start)


class TopKSelector:
    """One selection rule over every tensor ``[offsets[l], offsets[l] + segments[l])`` of the
    flat vector, K_l entries of tensor l (``ks``, from a K rule above).

    :meth:`select` writes sorted global positions and sign bits of the selected entries
    into ``positions`` / ``negative`` (``capacity`` entries at least) and returns how many.
    """

    def __init__(self, offsets, segments, ks, rule: str = "exact", band: float = 0.1):
        if rule not in SELECTIONS:
            raise ConfigError(f"unknown selection {rule!r}; choose one of: "
                              f"{', '.join(SELECTIONS)}")
        self.ks = list(ks)
        self.parts = [TopK(int(o), int(n), int(k), rule, band)
                      for o, n, k in zip(offsets, segments, self.ks)]
        #: The most entries one selection returns: K, or up to K_l(1 + band) per tensor for
        #: the threshold rule.
        self.capacity = sum(min(n, int(k * (1 + band)) if rule == "threshold" else k)
                            for n, k in zip(segments, self.ks))

    def select(self, values, positions, negative) -> int:
        end = 0
        for part in self.parts:
            end = part.select(values[part.offset: part.offset + part.size], positions,
                              negative, end)
        return end


def k_by_fraction(numels, sparsity) -> list[int]:
    """``K_l = ceil(sparsity * numel_l)``, at least 1 and at most numel_l, for each tensor."""
    return [min(n, max(1, math.ceil(sparsity * n))) for n in numels]


def k_by_votes(numels, votes_per_coordinate, workers, who: str) -> list[int]:
    """``K_l = ceil(c * numel_l / M)``: each coordinate gets about ``c`` votes a step from
    ``M = workers`` workers.  A K outside ``1..numel_l`` is a :class:`ConfigError` naming
    ``who`` (the algorithm)."""
    ks = [math.ceil(votes_per_coordinate * n / workers) for n in numels]
    for k, n in zip(ks, numels):
        if not 1 <= k <= n:
            raise ConfigError(f"{who}: --votes-per-coordinate {votes_per_coordinate} over "
                              f"{workers} workers asks K = {k} entries of a tensor of {n}")
    return ks


def require_k_below_d(ks, numels, who: str, setting: str) -> list[int]:
    """Top-K's rule ``K = sum K_l < d``; returns ``ks``, or raises a :class:`ConfigError`
    naming ``who`` and the ``setting`` that asked for it."""
    if sum(ks) >= sum(numels):
        raise ConfigError(f"{who}: {setting} selects K = {sum(ks)} of d = {sum(numels)} "
                          "coordinates; top-K needs K < d")
    return ks
