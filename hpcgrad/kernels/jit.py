"""Numba's ``njit``, imported on the first call of a kernel rather than at import.

Importing Numba costs about half a second and LLVM's memory on every rank.  Importing a
kernel module here costs neither, so ``hpcgrad --help``, the settings check and
``hpcgrad analyze`` never load Numba.  The first call of any kernel imports Numba, compiles
every kernel defined so far into a Numba dispatcher (lazily, as a plain ``njit`` does) and
puts the dispatchers in place of the placeholders in the globals of the modules of the
package.  Numba resolves the kernels a kernel calls when it compiles it, which is after
that replacement, so kernels calling kernels behave exactly as with ``numba.njit``.
"""

from __future__ import annotations

import functools
import sys

#: Placeholders created before Numba was imported.
_pending: list = []
_numba_njit = None


class LazyKernel:
    """A kernel whose Numba dispatcher is made on the first call of any kernel."""

    def __init__(self, py_func, options: dict):
        functools.update_wrapper(self, py_func)
        self.py_func = py_func
        self.options = options
        self.dispatcher = None

    def __call__(self, *args, **kwargs):
        if self.dispatcher is None:
            materialize()
        return self.dispatcher(*args, **kwargs)


def njit(**options):
    """``numba.njit(**options)`` as a decorator, deferred until a kernel first runs."""
    def decorate(py_func):
        if _numba_njit is not None:
            return _numba_njit(**options)(py_func)
        kernel = LazyKernel(py_func, options)
        _pending.append(kernel)
        return kernel
    return decorate


def materialize() -> None:
    """Import Numba and turn every pending kernel into its dispatcher."""
    global _numba_njit
    if _numba_njit is None:
        from numba import njit as numba_njit
        from numba.core import types
        from numba.core.typing.typeof import typeof_impl

        @typeof_impl.register(LazyKernel)
        def _typeof_lazy_kernel(kernel, context):
            # A kernel held elsewhere than a module global of hpcgrad (a script's own
            # ``from hpcgrad.kernels.quantize import uniform``) types as its dispatcher.
            if kernel.dispatcher is None:
                materialize()
            return types.Dispatcher(kernel.dispatcher)

        _numba_njit = numba_njit
    made = _pending[:]
    _pending.clear()
    for kernel in made:
        kernel.dispatcher = _numba_njit(**kernel.options)(kernel.py_func)
    if not made:
        return
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] != "hpcgrad" or module is None:
            continue
        namespace = vars(module)
        for key, value in list(namespace.items()):
            if isinstance(value, LazyKernel) and value.dispatcher is not None:
                namespace[key] = value.dispatcher
