"""Algorithm registry: ``--algorithm NAME`` -> the class implementing it.

One module per algorithm; each documents its worker step, server step and
wire format at the top, and declares its settings (:class:`Algorithm`'s
``options``, ``defaults``, ``devices``, ``check_settings``).  The registry is
found, not listed: every module of this package is imported, and every
:class:`Algorithm` subclass defined there with a ``name`` is registered.  So a
new algorithm is one new module; its ``order`` places it in ``--help``.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import Algorithm


def discover() -> dict:
    """name -> class of the algorithms defined in this package's modules, by ``order`` then
    name (stable, so ``--help`` and messages do not move)."""
    found = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for obj in vars(module).values():
            if (isinstance(obj, type) and issubclass(obj, Algorithm) and obj.name
                    and obj.__module__ == module.__name__):
                if obj.name in found and found[obj.name] is not obj:
                    raise ValueError(f"two algorithms are named {obj.name!r}: "
                                     f"{found[obj.name].__module__}.{found[obj.name].__name__}"
                                     f" and {obj.__module__}.{obj.__name__}")
                found[obj.name] = obj
    return {cls.name: cls for cls in sorted(found.values(), key=lambda c: (c.order, c.name))}


REGISTRY = discover()


def create(config, num_params: int, num_workers: int, segments=None) -> Algorithm:
    """The algorithm object of ``config``; ``segments`` are the parameter tensors' sizes."""
    return REGISTRY[config.algorithm](config, num_params, num_workers, segments)


__all__ = ["Algorithm", "REGISTRY", "create", "discover"]
