"""fp16 rounding on the worker: float32 values to IEEE binary16 bits, one pass.

``fp16-ps`` (and topk's ``--topk-values fp16``) send values rounded to fp16.  NumPy's cast
(``out[...] = values`` into a float16 view) converts one value at a time in software on
most builds, about 10x a copy of the same data at d = 25.6M; this loop does the same
conversion with integer operations the compiler vectorizes.

The bits are NumPy's, exactly (``npy_floatbits_to_halfbits``): round to nearest, ties to
even; values beyond the fp16 range become signed infinity; values below half the smallest
subnormal become signed zero; a NaN keeps its sign and the top ten bits of its payload
(at least one bit set, so it stays a NaN).  Allocation-free: ``out`` is the caller's.
"""

from __future__ import annotations

import numpy as np

from .jit import njit

_jit = njit(cache=True, nogil=True, boundscheck=False)


@_jit
def _half_bits(f):
    """The binary16 bits of the float32 whose bits are ``f`` (uint32), as NumPy rounds.

    Every case is computed and one is selected, without branches, so the loop over values
    vectorizes."""
    sign = (f >> np.uint32(16)) & np.uint32(0x8000)
    exp = f & np.uint32(0x7F800000)
    sig = f & np.uint32(0x007FFFFF)
    # Normal halves: ties to even (bit 13 clear and exactly half below it: no rounding up);
    # a carry out of the significand increments the exponent (to infinity at most).
    up = np.uint32(0) if (sig & np.uint32(0x3FFF)) == np.uint32(0x1000) else np.uint32(0x1000)
    normal = ((exp - np.uint32(0x38000000)) >> np.uint32(13)) + ((sig + up) >> np.uint32(13))
    # Subnormal halves (exponent 102..112 of float32): the significand with its leading 1,
    # shifted by 1..11; the bits shifted out past the 13 kept below also count as "above half".
    e = exp >> np.uint32(23)
    shift = min(max(np.uint32(113) - e, np.uint32(1)), np.uint32(24)) if e <= np.uint32(113) \
        else np.uint32(1)
    s = (np.uint32(0x00800000) + sig) >> shift
    exact_half = (s & np.uint32(0x3FFF)) == np.uint32(0x1000) and (f & np.uint32(0x7FF)) == 0
    subnormal = (s + (np.uint32(0) if exact_half else np.uint32(0x1000))) >> np.uint32(13)
    # NaN: the payload's top ten bits, at least one set.
    payload = sig >> np.uint32(13)
    nan = np.uint32(0x7C00) + (payload if payload != np.uint32(0) else np.uint32(1))
    h = normal
    if exp <= np.uint32(0x38000000):
        h = subnormal if exp >= np.uint32(0x33000000) else np.uint32(0)
    if exp >= np.uint32(0x47800000):
        h = nan if exp == np.uint32(0x7F800000) and sig != np.uint32(0) else np.uint32(0x7C00)
    return sign + h


@_jit
def round_to_fp16(values, out):
    """``out[i]`` <- the fp16 bits (uint16) of ``values[i]`` (float32), for every i."""
    bits = values.view(np.uint32)
    for i in range(bits.size):
        out[i] = np.uint16(_half_bits(bits[i]))


def warm_up() -> None:
    """Compile (or load from Numba's cache) the kernel before the first timed step."""
    out = np.zeros(3, dtype=np.uint16)
    round_to_fp16(np.array([1.0, -2.5e-8, np.inf], dtype=np.float32), out)
