"""Array kernels behind the codecs and aggregation rules.

Two implementations of one set of functions, byte-for-byte equal:

* :mod:`hpcgrad.kernels.cpu` -- Numba-compiled single-pass loops over NumPy
  arrays, the hot path on CPU ranks;
* :mod:`hpcgrad.kernels.generic` -- plain array expressions written against
  an ``xp`` module (NumPy or CuPy): the reference oracle in tests, and the
  path for CuPy arrays on GPU ranks.

:func:`for_array` picks the implementation for an array.
"""

from __future__ import annotations

from . import generic


def warm_up(array) -> None:
    """Compile the kernels ``array`` will use before the first timed step."""
    module = for_array(array)
    if hasattr(module, "warm_up"):
        module.warm_up()


def array_module(array):
    """``cupy`` for a CuPy array, else ``numpy``."""
    if type(array).__module__.startswith("cupy"):
        import cupy
        return cupy
    import numpy
    return numpy


def for_array(array):
    """Kernel module for ``array``: compiled CPU loops for NumPy, generic for CuPy."""
    if type(array).__module__.startswith("cupy"):
        return generic
    from . import cpu
    return cpu
