"""The fused fp16 rounding (hpcgrad/kernels/fused_fp16.py) writes NumPy's fp16 bits exactly."""

import numpy as np
import pytest

from hpcgrad.kernels.fused_fp16 import round_to_fp16

#: float32 bit patterns at every boundary of the conversion: zeros, the subnormal cut-off
#: (below half the smallest fp16 subnormal: zero), ties at every shift, the largest finite
#: fp16 and the first value rounding to infinity, infinities, quiet and signalling NaNs
#: whose payload's top ten bits are zero (they must stay NaN).
EDGES = np.array([0x00000000, 0x80000000, 0x32FFFFFF, 0x33000000, 0x33000001, 0x33800000,
                  0x337FFFFF, 0x38000000, 0x387FE000, 0x387FF000, 0x387FFFFF, 0x38800000,
                  0x38801000, 0x38803000, 0x3F801000, 0x3F803000, 0x3F800FFF, 0x477FE000,
                  0x477FEFFF, 0x477FF000, 0x47800000, 0x7F7FFFFF, 0x7F800000, 0xFF800000,
                  0x7F800001, 0xFF800001, 0x7F801FFF, 0x7FC00000, 0x7F802000, 0x7FFFFFFF],
                 dtype=np.uint32)


def numpy_bits(values):
    with np.errstate(over="ignore"):
        return values.astype(np.float16).view(np.uint16)


def fused_bits(values):
    out = np.zeros(values.size, dtype=np.uint16)
    round_to_fp16(values, out)
    return out


def test_edges_and_their_neighbours_round_as_numpy():
    bits = np.concatenate([EDGES, EDGES + 1, EDGES - 1, EDGES | 0x80000000])
    values = bits.view(np.float32)
    assert fused_bits(values).tobytes() == numpy_bits(values).tobytes()


def test_every_exponent_that_reaches_fp16_rounds_as_numpy():
    # Every float32 exponent from far below fp16's subnormals to above its range, with a
    # stride through the significands that hits odd, even and tied low bits.
    bits = np.arange(0x32000000, 0x48000000, 61, dtype=np.uint32)
    values = np.concatenate([bits, bits | 0x80000000]).view(np.float32)
    assert fused_bits(values).tobytes() == numpy_bits(values).tobytes()


@pytest.mark.parametrize("n", [0, 1, 7, 15, 16, 17, 63, 65, 1001])
def test_random_bit_patterns_of_odd_lengths_round_as_numpy(n):
    rng = np.random.default_rng(n)
    values = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32).view(np.float32)
    assert fused_bits(values).tobytes() == numpy_bits(values).tobytes()


def test_gradients_round_as_numpy():
    rng = np.random.default_rng(7)
    values = (rng.standard_normal(100_003) * 10.0 ** rng.integers(-9, 6, 100_003)).astype(
        np.float32)
    assert fused_bits(values).tobytes() == numpy_bits(values).tobytes()
