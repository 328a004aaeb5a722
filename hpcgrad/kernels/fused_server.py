"""The server's dense aggregates in one pass: decode every uplink and average, from the
receive buffer, with no per-worker float temporaries.

Each kernel reads all M bodies (rows of the transport's receive buffer) a block of
coordinates at a time, the block of ``out`` staying in cache, and writes ``out[i] = (((u_0[i] + u_1[i]) + ...) + u_{M-1}[i]) / M`` in float32:
the same additions, in the same worker order, as decoding worker by worker into ``out`` and
dividing afterwards (:func:`hpcgrad.algorithms.step.decode_into_sum`), so the result is bit
for bit the same -- only the passes over ``d`` floats go from M + 1 (and, for fp16, the
widening casts) to one.  ``divisor`` is ``float32(M)`` for a mean, or 1 for a plain sum.

The worker-by-worker decode's first write is ``out = 0 op value`` for some codecs (the sign
update) and ``out = value`` for others (dense, qsgd); each kernel starts the way the decode
it replaces did, because ``0 + (-0.0)`` is ``+0.0``.

Validation is the codecs' (the same checks, the same order of failure is not promised): a
kernel returns 0, or a negative code naming what it found first in *its* order, after which
the caller decodes worker by worker again to raise the message the unfused path raises.

Every output is the caller's; the only scratch is :func:`qsgd_mean`'s decode table (M x
2**b floats, b <= 8), allocated inside Numba.
"""

from __future__ import annotations

import numpy as np

from .jit import njit

_jit = njit(cache=True, nogil=True, boundscheck=False)

#: Coordinates per block: the block of ``out`` stays in L1 while every worker's part of it
#: is added, so ``out`` is written to memory once (a multiple of 64: whole sign words,
#: and whole bytes of fields of any width).
BLOCK = 2048


# ------------------------------------------------------------------- dense --

def rows_in_one(rows):
    """``(flat, starts)``: one contiguous 1-D view spanning every row of ``rows`` (a 2-D
    view whose rows are equally spaced in one buffer, as the receive buffer's bodies are)
    and the index of each row's first element in it.  Numba compiles loops over slices of
    a contiguous 1-D array to vector code; over a strided 2-D view it does not (9x slower
    measured for the fp32 mean)."""
    item = rows.itemsize
    if rows.strides[1] != item or rows.strides[0] % item or rows.shape[0] == 0:
        raise ValueError(f"rows with strides {rows.strides} are not equally spaced rows of "
                         f"contiguous {rows.dtype} values")
    step = rows.strides[0] // item
    size = (rows.shape[0] - 1) * step + rows.shape[1]
    flat = np.lib.stride_tricks.as_strided(rows[0], shape=(size,), strides=(item,))
    return flat, np.arange(rows.shape[0], dtype=np.int64) * step


def fp32_mean(rows, out, divisor) -> None:
    """``out[i] = (sum_w rows[w, i]) / divisor``, rows float32 (M x >= d), worker order."""
    _fp32_mean(*rows_in_one(rows), out, divisor)


def fp16_mean(rows, out, divisor) -> None:
    """As :func:`fp32_mean` for binary16 bodies given as uint16 (M x >= d): each value widened
    exactly to float32, then added in float32."""
    _fp16_mean(*rows_in_one(rows), out, divisor, _HALF_BITS, _HALF_BITS.view(np.float32))


#: The widened bits of one block of one worker's binary16 values (see :func:`_fp16_mean`).
_HALF_BITS = np.zeros(BLOCK, dtype=np.uint32)


@_jit
def _fp32_mean(flat, starts, out, divisor):
    m, n = starts.size, out.size
    for lo in range(0, n, BLOCK):
        hi = min(lo + BLOCK, n)
        block = out[lo:hi]
        first = flat[starts[0] + lo: starts[0] + hi]
        for i in range(hi - lo):
            block[i] = first[i]
        for w in range(1, m):
            row = flat[starts[w] + lo: starts[w] + hi]
            for i in range(hi - lo):
                block[i] = block[i] + row[i]
        for i in range(hi - lo):
            block[i] = block[i] / divisor


@_jit
def _fp16_mean(flat, starts, out, divisor, bits, values):
    # Widening without a table lookup (a gather), so that both loops vectorize (1.5x the
    # 65536-entry table measured): exponent and mantissa shifted into a float32's place
    # make a float32 2**112 times too small -- a binary16 subnormal lands on a float32
    # subnormal -- and one multiplication by 2**112 rescales it exactly; inf and NaN get
    # the float32 all-ones exponent instead.  ``bits`` and ``values`` are one buffer.
    m, n = starts.size, out.size
    rescale = np.float32(2.0 ** 112)
    one = np.float32(1)
    special = np.uint32(0x7C00)
    for lo in range(0, n, BLOCK):
        hi = min(lo + BLOCK, n)
        block = out[lo:hi]
        for w in range(m):
            row = flat[starts[w] + lo: starts[w] + hi]
            for i in range(hi - lo):
                h = np.uint32(row[i])
                shifted = (h & np.uint32(0x7FFF)) << np.uint32(13)
                bits[i] = shifted | np.uint32(0x7F800000) if h & special == special else shifted
            for i in range(hi - lo):
                h = row[i]
                value = values[i] * (one if h & 0x7C00 == 0x7C00 else rescale)
                value = -value if h & 0x8000 else value
                if w == 0:
                    block[i] = value
                else:
                    block[i] = block[i] + value
        for i in range(hi - lo):
            block[i] = block[i] / divisor


# --------------------------------------------------------------- scaled-sign --

def sign_mean(words, lrs, out, divisor) -> None:
    """The ``scaled-sign`` sum: ``out = 0``, then per worker w in order the sign update
    ``out <- out - lrs[w] * (s + 0 * out)`` (``lrs[w] = -scale_w``, ``s = -1`` where bit i
    of ``words[w]`` is set, else +1) -- exactly what
    :meth:`~hpcgrad.compression.compressors.ScaledSign.decompress` does with the sign
    kernel -- and ``out /= divisor``.  ``words``: uint64 (M x >= ceil(d / 64))."""
    _sign_mean(*rows_in_one(words), lrs, out, divisor)


@_jit
def _sign_mean(flat, starts, lrs, out, divisor):
    m, n = starts.size, out.size
    plus = np.float32(1)
    minus = np.float32(-1)
    zero = np.float32(0)
    for lo in range(0, n, BLOCK):
        hi = min(lo + BLOCK, n)
        block = out[lo:hi]
        for i in range(hi - lo):
            block[i] = zero
        for w in range(m):
            lr = lrs[w]
            row = flat[starts[w] + lo // 64: starts[w] + (hi + 63) // 64]
            for k in range(row.size):
                word = row[k]
                part = block[k * 64: min(k * 64 + 64, hi - lo)]
                for j in range(part.size):  # a 64-lane loop: it vectorizes
                    s = minus if (word >> np.uint64(j)) & np.uint64(1) else plus
                    x = part[j]
                    part[j] = x - lr * (s + zero * x)
        for i in range(hi - lo):
            block[i] = block[i] / divisor


# ---------------------------------------------------------------------- qsgd --

def qsgd_mean(norms, fields, offsets, sections, bits, out, divisor) -> int:
    """Dequantize and average M ``qsgd`` bodies of width ``bits`` (2..16).

    ``norms``: float32 (M x L), each body's tensor norms; ``fields``: uint8 (M x >= the
    field sections), each body after its norms; ``offsets`` (int64, L + 1) the tensors in
    the flat vector, ``sections`` (int64, L + 1) where each tensor's fields start in
    ``fields``.  ``out[i] = (sum_w ±float32(l) * (r_w / float32(s))) / divisor`` in worker
    order, the first worker's value written (as :func:`hpcgrad.kernels.quantize.dequantize`
    does with ``accumulate`` false, then true).  Block by block of a tensor, worker by
    worker: a block of :data:`BLOCK` coordinates starts on a byte of every bit stream.

    Returns 0, or the codes of :data:`hpcgrad.kernels.quantize.ERRORS`: -1 / -2 a norm not
    finite / negative, -3 a zero level with its sign bit set, -4 padding bits set.
    """
    flat, starts = rows_in_one(fields)
    return _qsgd_mean(norms, flat, starts, offsets, sections, bits, out, divisor)


@_jit
def _qsgd_mean(norms, flat, starts, offsets, sections, bits, out, divisor):
    m = norms.shape[0]
    s = (1 << (bits - 1)) - 1
    # b <= 8 (every width in use): a field is read from at most two bytes at a computed
    # address, and decoded through a per-worker table of its 2**b values, so no loop
    # carries state from one coordinate to the next; wider fields stream as dequantize does.
    table = np.empty((m, 1 << min(bits, 8)), dtype=np.float32)
    for seg in range(offsets.size - 1):
        for w in range(m):
            r = norms[w, seg]
            if not np.isfinite(r):
                return -1
            if r < np.float32(0) or (r == np.float32(0) and np.signbit(r)):
                return -2
            if bits <= 8:
                scale = r / np.float32(s)
                for field in range(1 << bits):
                    value = np.float32(field & s) * scale
                    table[w, field] = -value if field > s else value
        first, last = offsets[seg], offsets[seg + 1]
        for lo in range(first, last, BLOCK):
            hi = min(lo + BLOCK, last)
            block = out[lo:hi]
            for w in range(m):
                section = flat[starts[w] + sections[seg]: starts[w] + sections[seg + 1]]
                if bits == 4:
                    code = _packed_fields_4(section, lo - first, table[w, 1], block, w > 0)
                elif bits == 2:
                    code = _packed_fields_2(section, lo - first, table[w, 1], block, w > 0)
                elif bits == 8:
                    code = _packed_fields_8(section, lo - first, table[w, 1], block, w > 0)
                elif bits < 8:
                    code = _table_fields(section, lo - first, bits, table[w], block, w > 0)
                else:
                    code = _stream_fields(section, lo - first, bits, norms[w, seg] / np.float32(s),
                                          block, w > 0)
                if code < 0:
                    return code
            for i in range(hi - lo):
                block[i] = block[i] / divisor
        used = (last - first) * bits & 7
        if used:  # the padding bits after the tensor's last field must be zero
            for w in range(m):
                if flat[starts[w] + sections[seg + 1] - 1] >> used:
                    return -4
    return 0


@_jit
def _table_fields(section, j0, bits, table, block, accumulate):
    """Fields ``j0 .. j0 + block.size`` of one tensor's section (b <= 8) into ``block``."""
    mask = (1 << bits) - 1
    zero_with_sign = 1 << (bits - 1)
    invalid = False
    for i in range(block.size):
        at = (j0 + i) * bits
        byte, shift = at >> 3, at & 7
        word = np.int64(section[byte])
        if shift + bits > 8:
            word |= np.int64(section[byte + 1]) << 8
        field = (word >> shift) & mask
        invalid |= field == zero_with_sign
        if accumulate:
            block[i] = block[i] + table[field]
        else:
            block[i] = table[field]
    return -3 if invalid else 0


def _packed_fields(bits: int):
    """The decoder of whole bytes of ``8 / bits`` fields (b = 2, 4, 8: every width the
    algorithms default to), ``bits`` a constant of the compiled loop so that it vectorizes
    (2x :func:`_table_fields` measured at b = 4).  ``scale`` is ``r / s`` (the table's entry
    of field 1); the value is computed as :func:`hpcgrad.kernels.quantize.dequantize` does.
    ``j0`` and ``block.size`` are multiples of ``8 / bits`` except at a tensor's end, whose
    last fields :func:`_table_fields` decodes."""
    per = 8 // bits
    mask = (1 << bits) - 1
    s = (1 << (bits - 1)) - 1
    zero_with_sign = 1 << (bits - 1)

    def decode(section, j0, scale, block, accumulate):
        whole = block.size // per
        invalid = False
        first = j0 // per
        for j in range(whole):
            byte = np.int32(section[first + j])
            for k in range(per):
                field = (byte >> (k * bits)) & mask
                invalid |= field == zero_with_sign
                value = np.float32(field & s) * scale
                value = -value if field > s else value
                if accumulate:
                    block[j * per + k] = block[j * per + k] + value
                else:
                    block[j * per + k] = value
        if invalid:
            return -3
        done = whole * per
        if done < block.size:  # the tensor's last byte, partly filled
            table = np.empty(1 << bits, dtype=np.float32)
            for field in range(1 << bits):
                value = np.float32(field & s) * scale
                table[field] = -value if field > s else value
            return _table_fields(section, j0 + done, bits, table, block[done:], accumulate)
        return 0
    decode.__name__ = decode.__qualname__ = f"_packed_fields_{bits}"
    return _jit(decode)


_packed_fields_2 = _packed_fields(2)
_packed_fields_4 = _packed_fields(4)
_packed_fields_8 = _packed_fields(8)


@_jit
def _stream_fields(section, j0, bits, scale, block, accumulate):
    """As :func:`_table_fields` for b > 8: the bit stream read as ``dequantize`` reads it
    (``j0`` is a multiple of 8, so the block starts on a byte)."""
    level_mask = np.uint64((1 << (bits - 1)) - 1)
    sign_shift = np.uint64(bits - 1)
    field_mask = np.uint64((1 << bits) - 1)
    ub = np.uint64(bits)
    pos = j0 * bits // 8
    acc = np.uint64(0)
    nbits = np.uint64(0)
    for i in range(block.size):
        while nbits < ub:
            acc |= np.uint64(section[pos]) << nbits
            pos += 1
            nbits += np.uint64(8)
        field = acc & field_mask
        acc >>= ub
        nbits -= ub
        level = field & level_mask
        negative = (field >> sign_shift) != np.uint64(0)
        if negative and level == np.uint64(0):
            return -3
        value = np.float32(level) * scale
        if negative:
            value = -value
        if accumulate:
            block[i] = block[i] + value
        else:
            block[i] = value
    return 0


def warm_up() -> None:
    """Compile (or load from Numba's cache) every kernel here."""
    out = np.zeros(3, dtype=np.float32)
    fp32_mean(np.ones((2, 8), dtype=np.float32), out, np.float32(2))
    fp16_mean(np.zeros((2, 8), dtype=np.uint16), out, np.float32(2))
    sign_mean(np.zeros((2, 1), dtype=np.uint64), np.ones(2, dtype=np.float32), out,
              np.float32(2))
    qsgd_mean(np.ones((2, 1), dtype=np.float32), np.zeros((2, 8), dtype=np.uint8),
              np.array([0, 3], dtype=np.int64), np.array([0, 2], dtype=np.int64), 4, out,
              np.float32(2))
