"""Message bodies of wire format v1: one codec class per body layout.

A codec (:class:`~hpcgrad.wire.codecs.base.Codec`) knows its body's length for ``count``
coordinates and the meaning of its ``flags``, writes a body from dense values
(``encode``; the variable-length ones also from entries: ``encode_entries``), reads one
back with validation (``decode``, ``decode_into``) and, where adversaries may attack it,
corrupts one in place (``corrupt``).  The encode side here is the plain, stateless one
(tests, tools, baselines); algorithms with state fuse it into their worker step through
:mod:`hpcgrad.kernels`.

=====  ==============  ===========================  ========================================
id     name            module                       body
=====  ==============  ===========================  ========================================
1      fp32            :mod:`.dense`                ``count`` IEEE-754 binary32 values
2      fp16            :mod:`.dense`                ``count`` IEEE-754 binary16 values
3      sign1           :mod:`.signs`                one bit per coordinate, 1 = negative
4      ternary2        :mod:`.signs`                non-zero plane padded to 8 bytes, then
                                                    the negative plane
5      sparse-sign     :mod:`.sparse`               entry count, positions (raw, bitmap or
                                                    Golomb-Rice gaps: ``flags``), sign bits
6      base3           :mod:`.sparse`               a ternary vector, five trits per byte
7      qsgd            :mod:`.quantized`            per tensor an fp32 norm, then b-bit
                                                    fields (sign + level), each tensor's
                                                    section byte-aligned (``flags``: b, and
                                                    DQ-SGD's width for the next step)
8      sparse-values   :mod:`.sparse_values`        entry count and positions as
                                                    ``sparse-sign``, then fp32 or fp16
                                                    values, then optionally a membership
                                                    bitmap (``flags``)
9      scaled-sign     :mod:`.signs`                a sign1 plane, then an fp32 scale
=====  ==============  ===========================  ========================================

Codecs 5 to 8 are variable-length: their length depends on the values (5, 6, 8)
or on the width in ``flags`` (7).  See ``docs/wire-format.md`` for the bit-level
description.

**A new codec is one new module here**: a :class:`Codec` subclass with an unassigned ``id``
registers itself in :data:`CODECS` when it is defined, and this package imports every module
it holds, so :func:`by_id` and :func:`decode_message` know it with no other edit.  The names
in a module's ``__all__`` are importable from this package too.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import (CODECS, Codec, EncodedBody, FixedLengthCodec, _check_padding_bits, by_id,
                   corruptible, decode_message, segment_offsets)

__all__ = ["CODECS", "Codec", "EncodedBody", "FixedLengthCodec", "by_id", "corruptible",
           "decode_message", "segment_offsets"]


def _import_every_codec_module() -> None:
    """Import each module of this package (registering its codecs, in module-name order)
    and bind the names of its ``__all__`` here."""
    for found in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{found.name}")
        for name in getattr(module, "__all__", ()):
            if name in globals() and globals()[name] is not getattr(module, name):
                raise ImportError(f"{__name__}: {found.name}.{name} would shadow another "
                                  f"module's {name}")
            globals()[name] = getattr(module, name)
            if name not in __all__:
                __all__.append(name)
    # Ids in order, whatever the order of the modules that define them.
    ordered = sorted(CODECS.items())
    CODECS.clear()
    CODECS.update(ordered)


_import_every_codec_module()
