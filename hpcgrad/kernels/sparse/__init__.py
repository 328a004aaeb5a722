"""Compiled CPU kernels for sparse messages (S3GD-MV, top-K, ef-sgd's sparse compressors).

One module per concept, each with its own ``warm_up``:

* :mod:`~hpcgrad.kernels.sparse.positions` -- sorted positions as one bitstream (Elias-gamma
  count; raw, bitmap or Golomb-Rice positions; ``sparse-sign``'s sign bits), validating;
* :mod:`~hpcgrad.kernels.sparse.base3` -- the ``base3`` body, five trits per byte;
* :mod:`~hpcgrad.kernels.sparse.magnitude` -- top-K selection by a magnitude threshold;
* :mod:`~hpcgrad.kernels.sparse.merge` -- the server's M-way merge (vote, or sum);
* :mod:`~hpcgrad.kernels.sparse.scatter` -- sparse entries into dense arrays (the update);
* :mod:`~hpcgrad.kernels.sparse.sample` -- rand-K's positions, drawn as ``Generator.choice``
  draws them.

Every kernel is allocation-free: outputs go to caller-provided arrays.  Decoders return a
negative error code instead of raising (Numba); each module's ``ERRORS`` names the codes,
and the codecs in :mod:`hpcgrad.wire.codecs` turn them into messages.

This package's namespace gathers the kernels the algorithms call (``sparse.merge_vote``)
and :func:`warm_up`, which compiles all of them.  No module imports Numba at import time
(:mod:`hpcgrad.kernels.jit`).
"""

from __future__ import annotations

from . import base3, magnitude, merge, positions, sample, scatter
from .base3 import decode_base3, encode_base3
from .magnitude import abs_into, count_above, gather_above, take_top
from .merge import merge_sum, merge_vote
from .positions import (BITMAP, CODING_NAMES, RAW, RICE, decode_positions,
                        decode_sparse_sign, encode_positions, encode_sparse_sign,
                        position_bits, raw_width, sparse_sign_bits)
from .sample import SeededPositions, choice_sorted
from .scatter import (scatter_direction, scatter_values, sparse_sign_update, ternary_planes,
                      zero_at)

__all__ = ["BITMAP", "CODING_NAMES", "RAW", "RICE", "SeededPositions", "abs_into", "base3",
           "choice_sorted", "count_above", "decode_base3", "decode_positions", "decode_sparse_sign",
           "encode_base3", "encode_positions", "encode_sparse_sign", "gather_above",
           "magnitude", "merge", "merge_sum", "merge_vote", "position_bits", "positions",
           "raw_width", "sample", "scatter", "scatter_direction", "scatter_values",
           "sparse_sign_bits", "sparse_sign_update", "take_top", "ternary_planes", "warm_up",
           "zero_at"]


def warm_up() -> None:
    """Compile (or load from cache) every sparse kernel before the first timed step."""
    for module in (positions, base3, magnitude, merge, sample, scatter):
        module.warm_up()
