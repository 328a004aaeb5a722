"""K distinct positions of ``range(n)``, exactly as ``Generator.choice`` draws them.

``np.sort(rng.choice(n, k, replace=False))`` allocates K-sized arrays (its result, Floyd's
hash set, or an n-long ``arange``) on every call; rand-K's workers call it every step for
every tensor.  :func:`choice_sorted` repeats NumPy 2's two algorithms draw for draw on the
same generator -- Floyd's algorithm with a linear-probing hash set, or, when
``n > 10000 and k > n // 50``, a tail Fisher-Yates shuffle of ``range(n)`` -- into
caller-provided arrays, so the positions, and the bytes sent, are the same.  The final
shuffle ``choice`` applies to Floyd's result is skipped: it only permutes what is sorted
here, and the generator is not used afterwards.  ``tests/kernels/test_randomk_draw.py``
checks the identity against ``Generator.choice`` itself, since it rests on NumPy's
``_generator.pyx`` staying as it is.
"""

from __future__ import annotations

import numpy as np

from ..jit import njit

_jit = njit(cache=True, nogil=True, boundscheck=False)

_EMPTY = np.uint64(0xFFFFFFFFFFFFFFFF)


def tail_shuffle(n: int, k: int) -> bool:
    """Whether ``Generator.choice(n, k, replace=False)`` shuffles ``range(n)`` (needs an
    n-long work array) rather than running Floyd's algorithm (NumPy's cut-off)."""
    return n > 10000 and k > n // 50


def hash_set_size(k: int) -> int:
    """The length of Floyd's hash set for ``k`` draws: the smallest power of two above
    ``1.2 * k`` (NumPy's rule; at most ``2.4 * k``)."""
    return 1 << int(1.2 * k).bit_length()


def choice_sorted(rng, n: int, k: int, out, hash_set, order) -> None:
    """``out[:k]`` <- ``np.sort(rng.choice(n, k, replace=False))``, consuming ``rng`` the
    same way.  ``hash_set``: uint64, at least :func:`hash_set_size` (k) long; ``order``:
    int64, at least ``n`` long when :func:`tail_shuffle` (n, k), else unused."""
    choice_unordered(rng, n, k, out, hash_set, order)
    # NumPy's in-place sort (SIMD for int64; allocates nothing) is about twice as fast as
    # Numba's here.
    out[:k].sort()


@_jit
def choice_unordered(rng, n, k, out, hash_set, order):
    """``out[:k]`` <- the set ``rng.choice(n, k, replace=False)`` draws, in no given order
    (:func:`choice_sorted`'s draw)."""
    if k == 0:
        return
    if n > 10000 and k > n // 50:
        for i in range(n):
            order[i] = i
        for i in range(n - 1, max(n - k, 1) - 1, -1):
            j = rng.integers(0, i, endpoint=True)
            order[i], order[j] = order[j], order[i]
        out[:k] = order[n - k:n]
    else:
        mask = np.uint64(int(1.2 * k))
        mask |= mask >> np.uint64(1)
        mask |= mask >> np.uint64(2)
        mask |= mask >> np.uint64(4)
        mask |= mask >> np.uint64(8)
        mask |= mask >> np.uint64(16)
        mask |= mask >> np.uint64(32)
        table = hash_set[:mask + np.uint64(1)]
        table[:] = _EMPTY
        for j in range(n - k, n):
            val = np.uint64(rng.integers(0, j, endpoint=True))
            loc = val & mask
            while table[loc] != _EMPTY and table[loc] != val:
                loc = (loc + np.uint64(1)) & mask
            if table[loc] == _EMPTY:
                table[loc] = val
                out[j - n + k] = val
            else:  # val was drawn before: Floyd's algorithm takes j, new by construction
                loc = np.uint64(j) & mask
                while table[loc] != _EMPTY:
                    loc = (loc + np.uint64(1)) & mask
                table[loc] = j
                out[j - n + k] = j


class SeededPositions:
    """Per tensor l, ``K_l`` positions drawn by ``np.random.default_rng(key + [l])``, as
    ``sorted(choice(numel_l, K_l, replace=False)) + offset_l`` -- rand-K's and top-K's
    shared-random positions -- with the work arrays made once, here."""

    def __init__(self, segments, offsets, ks):
        self.parts = list(zip(offsets, segments, ks))
        self.hash_set = np.empty(max([hash_set_size(k) for _, _, k in self.parts] + [1]),
                                 dtype=np.uint64)
        self.order = np.empty(max([n for _, n, k in self.parts if tail_shuffle(n, k)] + [0]),
                              dtype=np.int64)

    def draw(self, key: list, out) -> int:
        """``out[:sum(K_l)]`` <- every tensor's positions for ``key`` (ints, the seed
        first); returns how many."""
        end = 0
        for l, (o, n, k) in enumerate(self.parts):
            chosen = out[end: end + k]
            choice_sorted(np.random.default_rng(key + [l]), n, k, chosen, self.hash_set,
                          self.order)
            chosen += o
            end += k
        return end


def warm_up() -> None:
    """Compile (or load from cache) :func:`choice_sorted` before the first timed step."""
    out = np.zeros(3, dtype=np.int64)
    choice_sorted(np.random.default_rng(0), 10, 3, out,
                  np.zeros(hash_set_size(3), dtype=np.uint64), np.zeros(0, dtype=np.int64))
