"""Exact vote counts as bit planes: a node's combine, and the server's vote from them.

``--hierarchy node`` with signum-mv: a node leader turns its node's ``m`` sign messages into
one count per coordinate, written as ``levels`` bit planes (plane ``b`` holds bit ``b`` of
every count; the ``vote-counts`` body, ``docs/wire-format.md``), and the server adds the
nodes' counts and takes the same majority as the flat vote.

* unsigned (``sign1`` votes, tie rules positive and random): the count is the number of
  negative votes, ``0..m``, in ``levels = bit_length(m)`` planes;
* signed (``ternary2`` votes, tie rule zero): the count is ``sum(vote) + m`` (``vote + 1`` is
  0, 1 or 2 per worker, so the count is ``0..2m``), in ``levels = bit_length(2m)`` planes.

Each plane is ``nwords = ceil(count / 64)`` little-endian 64-bit words (8-byte padded
packed bits; the body's last plane is sent without its padding); bits past the last
coordinate are 0.  The Numba kernels add with the bit-sliced counter of
:mod:`hpcgrad.kernels.cpu` (``_add_to_counter``, ``_compare_counter``: the flat vote's), so a
word of 64 coordinates takes ``levels`` AND/XORs per vote; they allocate only their counter
blocks.  The ``reference_*`` functions are the plain NumPy statement of the same bytes, for
tests.
"""

from __future__ import annotations

import numpy as np

from .cpu import _BLOCK, _add_to_counter, _compare_counter, _row_words
from .generic import TIE_RANDOM, TIE_ZERO, packed_length
from .jit import njit

_jit = njit(cache=True, nogil=True, boundscheck=False)


def levels_for(voters: int, signed: bool) -> int:
    """Bit planes a count of ``voters`` votes needs."""
    return int(2 * voters if signed else voters).bit_length()


def plane_words(count: int) -> int:
    return (count + 63) // 64


# -- the node's combine ---------------------------------------------------------------------


@_jit
def _count_words(words, stride, voters, nwords, count, signed, levels, out):
    # words[k * stride + j]: word j of voter k's body (ternary: the negative plane at
    # j + nwords).  out[b * nwords + j]: word j of count plane b.
    planes = np.zeros((levels, _BLOCK), dtype=np.uint64)
    carry = np.zeros(_BLOCK, dtype=np.uint64)
    ones = ~np.uint64(0)
    for start in range(0, nwords, _BLOCK):
        width = min(_BLOCK, nwords - start)
        planes[:, :width] = 0
        for k in range(voters):
            base = k * stride + start
            if signed:
                # vote + 1 = ("zero vote") * 1 + ("positive vote") * 2
                for j in range(width):
                    carry[j] = ~words[base + j]
                _add_to_counter(planes, carry, 0, width)
                for j in range(width):
                    carry[j] = words[base + j] & ~words[base + nwords + j]
                _add_to_counter(planes, carry, 1, width)
            else:
                for j in range(width):
                    carry[j] = words[base + j]
                _add_to_counter(planes, carry, 0, width)
        for j in range(width):
            w = start + j
            valid = ones
            if w == nwords - 1 and count % 64:
                valid = (np.uint64(1) << np.uint64(count % 64)) - np.uint64(1)
            for b in range(levels):
                out[b * nwords + w] = planes[b, j] & valid


def count_votes(rows, count: int, signed: bool, out) -> None:
    """Write the vote counts of the ``m`` bodies in ``rows`` (``m x`` padded body, each
    ``sign1``, or ``ternary2`` when ``signed``) into ``out`` (a padded ``vote-counts`` body of
    ``levels_for(m, signed)`` planes)."""
    voters = rows.shape[0]
    nwords = plane_words(count)
    if nwords == 0:
        return
    width = (2 if signed else 1) * nwords
    words, stride = _row_words(rows, width)
    levels = levels_for(voters, signed)
    _count_words(words, stride, voters, nwords, count, signed, levels,
                 out[: levels * nwords * 8].view(np.uint64))


# -- the server's vote ----------------------------------------------------------------------


@_jit
def _vote_counts_words(words, stride, node_levels, nwords, count, voters, signed, tie,
                       tie_words, first_out, second_out):
    # The nodes' counts added into one bit-sliced counter C, then the flat vote's rule:
    # unsigned: C > M/2 is negative (tie: C == M/2 with M even); signed: C = sum + M,
    # compared with M.  first_out/second_out: (negative, non-zero) unsigned, (non-zero,
    # negative) signed -- the order the codecs' planes come in.
    levels = 1
    top = 2 * voters if signed else voters
    while (1 << levels) <= top:
        levels += 1
    planes = np.zeros((levels, _BLOCK), dtype=np.uint64)
    carry = np.zeros(_BLOCK, dtype=np.uint64)
    greater = np.zeros(_BLOCK, dtype=np.uint64)
    equal = np.zeros(_BLOCK, dtype=np.uint64)
    threshold = voters if signed else voters // 2
    odd = voters % 2 == 1
    ones = ~np.uint64(0)
    for start in range(0, nwords, _BLOCK):
        width = min(_BLOCK, nwords - start)
        planes[:, :width] = 0
        for k in range(node_levels.size):
            for b in range(node_levels[k]):
                base = k * stride + b * nwords + start
                for j in range(width):
                    carry[j] = words[base + j]
                _add_to_counter(planes, carry, b, width)
        _compare_counter(planes, threshold, width, greater, equal)
        for j in range(width):
            w = start + j
            valid = ones
            if w == nwords - 1 and count % 64:
                valid = (np.uint64(1) << np.uint64(count % 64)) - np.uint64(1)
            if signed:
                first_out[w] = ~equal[j] & valid
                second_out[w] = ~equal[j] & ~greater[j] & valid
                continue
            tied = np.uint64(0) if odd else equal[j]
            negative = greater[j]
            if tie == TIE_RANDOM:
                negative |= tied & tie_words[w]
            first_out[w] = negative & valid
            if tie == TIE_ZERO:
                second_out[w] = ~tied & valid


def vote_from_counts(node_rows, node_levels, count: int, voters: int, signed: bool, tie: int,
                     tie_bits, first_out, second_out) -> None:
    """The flat vote of ``voters`` workers from the nodes' counts: ``node_rows`` (nodes x
    padded ``vote-counts`` body, 8-byte aligned rows), ``node_levels[k]`` planes each.

    Unsigned (``sign1`` downlink): the negative plane into ``first_out``, with
    ``TIE_RANDOM`` a tied coordinate taking its bit from ``tie_bits``.  Signed
    (``ternary2``): the non-zero plane into ``first_out``, the negative plane into
    ``second_out``.  Bytes equal to :func:`hpcgrad.kernels.cpu.majority_vote` /
    ``ternary_vote`` of the workers' messages."""
    nwords = plane_words(count)
    if nwords == 0:
        return
    width = max(int(n) for n in node_levels) * nwords
    words, stride = _row_words(node_rows, width)
    tie_words = (tie_bits if tie == TIE_RANDOM and not signed else first_out)
    _vote_counts_words(words, stride, np.asarray(node_levels, dtype=np.int64), nwords, count,
                       voters, signed, tie, tie_words[: nwords * 8].view(np.uint64),
                       first_out[: nwords * 8].view(np.uint64),
                       second_out[: nwords * 8].view(np.uint64))


def warm_up() -> None:
    rows = np.zeros((3, 32), dtype=np.uint8)
    out = np.zeros(64, dtype=np.uint8)
    a, b = np.zeros(8, dtype=np.uint8), np.zeros(8, dtype=np.uint8)
    for signed in (False, True):
        count_votes(rows, 5, signed, out)
        vote_from_counts(out.reshape(2, 32), [2, 2], 5, 3, signed, 0, a, a, b)


# -- NumPy references ---------------------------------------------------------------------


def _bits(rows, start, count):
    nbytes = packed_length(count)
    block = np.ascontiguousarray(rows[:, start:start + nbytes])
    return np.unpackbits(block, axis=1, bitorder="little")[:, :count].astype(np.int64)


def reference_counts(rows, count: int, signed: bool) -> np.ndarray:
    """The counts as integers: negative votes (unsigned), ``sum(vote) + m`` (signed)."""
    if not signed:
        return _bits(rows, 0, count).sum(axis=0)
    stride = 8 * plane_words(count)
    nonzero, negative = _bits(rows, 0, count), _bits(rows, stride, count)
    return (nonzero * (1 - 2 * negative) + 1).sum(axis=0)


def reference_planes(counts, levels: int) -> np.ndarray:
    """``counts`` as ``levels`` padded bit planes, back to back (the padded body)."""
    count = counts.size
    stride = 8 * plane_words(count)
    out = np.zeros(levels * stride, dtype=np.uint8)
    for b in range(levels):
        bits = ((counts >> b) & 1).astype(np.uint8)
        out[b * stride: b * stride + packed_length(count)] = np.packbits(bits,
                                                                        bitorder="little")
    return out


def reference_decode(body, count: int, levels: int) -> np.ndarray:
    """The counts of a (padded) ``vote-counts`` body."""
    stride = 8 * plane_words(count)
    total = np.zeros(count, dtype=np.int64)
    for b in range(levels):
        plane = np.unpackbits(body[b * stride: b * stride + packed_length(count)],
                              bitorder="little")[:count].astype(np.int64)
        total += plane << b
    return total
