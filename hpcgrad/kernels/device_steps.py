"""Top-K selection written once against the array module (``xp``: NumPy or CuPy).

The device-side twin of :class:`hpcgrad.compression.selection.TopK` and the Numba loop
:func:`hpcgrad.kernels.sparse.magnitude.take_top`: it selects the same entries, in the same
order, so a GPU worker sends the bytes a CPU worker sends.  The rules it reproduces:

* the K-th largest ``|v|`` of a tensor is its threshold (the CPU path partitions, or filters
  candidates first; both give this one value, and so does a sort);
* every entry with ``|v| > threshold`` is taken, then entries with ``|v| == threshold`` in
  index order until K are taken (``k - above`` ties; a tied exact zero uses up a tie but is
  not sent);
* exact zeros are never sent (sign(0) = 0);
* ``threshold`` rule: a threshold from an evenly strided sample, refined on the host by
  counting passes (the counts come from the device) until within ``band`` of K, else the
  exact rule.  The thresholds are float32 scalars on the host, as on the CPU path.

The output is compacted: the selected positions (global, sorted) and sign bits, K entries,
not d: variable-length coding runs on the host from them.  Scratch of tensor size is
allocated once; the compaction (``flatnonzero``) and the tie ranks take short-lived arrays
from the array module's pool (CuPy's memory pool reuses them from step to step).
"""

from __future__ import annotations

import numpy as np

from .generic import _xp
from .sparse.magnitude import refine_threshold


def to_host(array, out) -> None:
    """``out[:array.size] <- array`` (``out`` a NumPy array; ``array`` NumPy or CuPy)."""
    n = array.size
    if isinstance(array, np.ndarray):
        out[:n] = array
    else:
        array.get(out=out[:n])


def to_device(xp, host):
    """``host`` as an array of ``xp`` (no copy for NumPy)."""
    return host if xp is np else xp.asarray(host)


class DeviceTopK:
    """Selection for one segment ``[offset, offset + size)``; ``rule`` exact or threshold,
    with the CPU path's ``band``, ``sample`` and ``max_passes``."""

    def __init__(self, offset: int, size: int, k: int, rule: str = "exact", band: float = 0.1,
                 sample: int = 16384, max_passes: int = 8):
        if not 1 <= k <= size:
            raise ValueError(f"K = {k} is not within 1..{size} (the tensor's size)")
        self.offset, self.size, self.k = offset, size, k
        self.rule, self.band, self.max_passes = rule, band, max_passes
        self.sample_size = min(size, sample)
        self.stride = max(1, size // self.sample_size)
        self._magnitudes = self._sorted = self._sample = None  # where the values live

    def _scratch(self, values):
        if self._magnitudes is None or _xp(self._magnitudes) is not _xp(values):
            xp = _xp(values)
            self._magnitudes = xp.empty(self.size, np.float32)
            self._sorted = xp.empty(self.size, np.float32) if self.rule == "exact" else None
            self._sample = xp.empty(self.sample_size, np.float32)
        return self._magnitudes

    def select(self, values):
        """``(positions, negative)`` on the device: sorted global positions (int64) and sign
        bits (uint8) of this segment's selection."""
        magnitudes = self._scratch(values)
        xp = _xp(values)
        xp.abs(values, out=magnitudes)
        if self.rule == "threshold" and self.size > self.sample_size:
            found = self._threshold(xp, magnitudes)
            if found is not None:
                return self._take(xp, values, magnitudes, *found)
        return self._take(xp, values, magnitudes, self._kth_largest(magnitudes), self.k)

    def _kth_largest(self, magnitudes):
        if self._sorted is None:  # a threshold selector's first fallback to the exact rule
            self._sorted = _xp(magnitudes).empty(self.size, np.float32)
        ordered = self._sorted
        ordered[...] = magnitudes
        ordered.sort()
        return np.float32(ordered[self.size - self.k].item())

    def _threshold(self, xp, magnitudes):
        """The CPU rule's threshold and count, or None: fall back to the exact rule."""
        n, k, s = self.size, self.k, self.sample_size
        sample = self._sample
        sample[...] = magnitudes[:: self.stride][:s]
        sample.sort()  # the CPU path partitions at ``rank``: the same element
        rank = min(s - 1, max(0, s - int(round(k * s / n))))
        threshold = np.float32(sample[rank].item())
        lo_count, hi_count = k * (1 - self.band), k * (1 + self.band)
        threshold, count, _ = refine_threshold(
            lambda t: int(xp.count_nonzero(magnitudes > t)), threshold, lo_count, hi_count,
            self.max_passes)
        return (threshold, count) if lo_count <= count <= hi_count else None

    def _take(self, xp, values, magnitudes, threshold, k):
        above = magnitudes > threshold
        ties = k - int(xp.count_nonzero(above))
        if ties > 0:  # the first ``ties`` entries equal to the threshold, in index order
            tied = magnitudes == threshold
            above |= tied & (xp.cumsum(tied, dtype=np.int64) <= ties)
        above &= values != 0
        index = xp.flatnonzero(above)
        return index + self.offset, (values[index] < 0).view(np.uint8)


class DeviceTopKSelector:
    """:class:`hpcgrad.compression.selection.TopKSelector` on the device: one rule over every
    tensor of the flat vector.  :meth:`select` returns the device positions and writes them
    and the sign bits to the host arrays ``positions`` / ``negative``; returns ``(nnz,
    device positions)``."""

    def __init__(self, offsets, segments, ks, rule: str = "exact", band: float = 0.1):
        self.parts = [DeviceTopK(int(o), int(n), int(k), rule, band)
                      for o, n, k in zip(offsets, segments, ks)]

    def select(self, values, positions, negative):
        xp = _xp(values)
        picked = [part.select(values[part.offset: part.offset + part.size])
                  for part in self.parts]
        pos = picked[0][0] if len(picked) == 1 else xp.concatenate([p for p, _ in picked])
        neg = picked[0][1] if len(picked) == 1 else xp.concatenate([s for _, s in picked])
        to_host(pos, positions)
        to_host(neg, negative)
        return int(pos.size), pos
