"""Majority vote for small worker counts: one straight-line pass per 64-bit word.

For M <= :data:`MAX_WORKERS` workers the bit-sliced counter is kept in
registers: each output word reads the M input words of its coordinates,
ripple-adds them into ``bit_length(M)`` counter planes with straight-line
code, compares the counter with ``M // 2`` plane by plane and stores the
result.  With no inner loop LLVM vectorizes the loop over words (AVX2/AVX-512),
so the vote runs near the speed of reading the M messages once; the blocked
kernel in :mod:`hpcgrad.kernels.cpu` (counter planes in L1, one loop per plane)
costs 2-3x more at M = 4..8 and remains for larger M.

The loop body depends on M, so one function per M is generated from
:func:`source` below and compiled with Numba on first use.  The generated code
is compiled with this file as its file name, so Numba's on-disk cache
(``cache=True``) keys and invalidates it with this module, like the hand-written
kernels.  Output bytes equal :func:`hpcgrad.kernels.generic.majority_vote`
(``tests/kernels`` checks every M and tie rule).
"""

from __future__ import annotations

import numpy as np
from .jit import njit

from .generic import TIE_RANDOM, TIE_ZERO

#: Largest worker count with a generated kernel.
MAX_WORKERS = 16

_jit = njit(cache=True, nogil=True, boundscheck=False)


def _count_lines(workers: int) -> list[str]:
    """Straight-line code leaving ``g`` (count > M//2) and ``e`` (count == M//2, tied)."""
    lines = ["c0 = words[j]"]
    width = 1
    for k in range(1, workers):
        lines.append(f"t = words[{k} * stride + j]")
        for b in range(width):
            lines.append(f"c{b}, t = c{b} ^ t, c{b} & t")
        if (k + 1).bit_length() > width:  # the counter gains a plane: its bit is the carry
            lines.append(f"c{width} = t")
            width += 1
    half = workers // 2
    lines += ["g = np.uint64(0)", "e = ~np.uint64(0)"]
    for b in range(width - 1, -1, -1):
        if (half >> b) & 1:
            lines.append(f"e &= c{b}")
        else:
            lines += [f"g |= e & c{b}", f"e &= ~c{b}"]
    if workers % 2:  # an odd count never ties
        lines.append("e = np.uint64(0)")
    return lines


def source(workers: int) -> str:
    """Python source of ``_vote_<workers>(words, stride, nwords, tie, tie_words, neg, nz)``."""
    body = "\n".join("            " + line for line in _count_lines(workers))
    name = f"_vote_{workers}"
    return f"""
def {name}(words, stride, nwords, tie, tie_words, neg_words, nz_words):
    if tie == {TIE_RANDOM}:
        for j in range(nwords):
{body}
            neg_words[j] = g | (e & tie_words[j])
    elif tie == {TIE_ZERO}:
        for j in range(nwords):
{body}
            neg_words[j] = g
            nz_words[j] = ~e
    else:
        for j in range(nwords):
{body}
            neg_words[j] = g
"""


_KERNELS: dict = {}


def kernel(workers: int):
    """The compiled vote for ``workers`` workers (1 <= workers <= MAX_WORKERS)."""
    fn = _KERNELS.get(workers)
    if fn is None:
        if not 1 <= workers <= MAX_WORKERS:
            raise ValueError(f"no unrolled vote for {workers} workers (1..{MAX_WORKERS})")
        namespace = {"np": np}
        exec(compile(source(workers), __file__, "exec"), namespace)  # noqa: S102 -- our own code
        py_func = namespace[f"_vote_{workers}"]
        py_func.__module__ = __name__
        py_func.__qualname__ = f"unrolled_vote_{workers}"
        fn = _KERNELS[workers] = _jit(py_func)
    return fn


def vote(words, stride: int, workers: int, nwords: int, tie: int, tie_words, neg_words,
         nz_words) -> None:
    """Vote over ``workers`` rows of ``words`` (row k at ``k * stride``), no tail masking."""
    kernel(workers)(words, stride, nwords, tie, tie_words, neg_words, nz_words)
