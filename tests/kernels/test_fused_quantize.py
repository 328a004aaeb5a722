"""The blockwise QSGD encode (hpcgrad/kernels/fused_quantize.py) writes the reference's
bytes and norms (hpcgrad/kernels/quantize.py ``quantize_pack``) for every width."""

import numpy as np
import pytest

from hpcgrad.kernels import fused_quantize, quantize


def both(values, segments, bits, seed=3, step=5, rank=2):
    offsets = np.concatenate([[0], np.cumsum(segments)]).astype(np.int64)
    key = quantize.stream_key(seed, step, rank)
    length = sum(quantize.section_lengths(segments, bits))
    results = []
    for fused in (False, True):
        norms = np.zeros(len(segments), np.float32)
        out = np.full(length + 8, 0xAB, np.uint8)  # stale bytes: every one must be written
        if fused:
            code = fused_quantize.quantize_pack(values, offsets, bits, key, norms, out,
                                                np.zeros(fused_quantize.BLOCK, np.uint64))
        else:
            code = quantize.quantize_pack(values, offsets, bits, key, norms, out)
        results.append((code, norms.tobytes(), out[:length].tobytes()))
    return results


def gradient(n, seed):
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(n).astype(np.float32)
    v[::5] = 0.0
    v[2::11] = -0.0
    v[7::101] *= 1e4  # a few large entries: saturated and near-saturated levels
    return v


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 7, 8, 11, 16])
@pytest.mark.parametrize("segments", [[1], [63], [64], [65], [1000, 1, 129, 64, 7],
                                      [4099, 0, 128]])
def test_same_bytes_and_norms_as_the_reference(bits, segments):
    values = gradient(sum(segments), bits + len(segments))
    reference, fused = both(values, segments, bits)
    assert fused == reference
    assert reference[0] == 0


def test_an_all_zero_tensor_and_a_single_value_tensor():
    values = np.zeros(300, np.float32)
    values[299] = -3.0
    reference, fused = both(values, [100, 199, 1], 4)
    assert fused == reference


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan, 3e38])
def test_a_norm_that_is_not_finite_is_refused_as_before(bad):
    values = gradient(500, 1)
    values[300] = bad
    if bad == 3e38:
        values[301] = bad  # each value is finite; their norm is not, in float32
    reference, fused = both(values, [200, 300], 4)
    assert fused[0] == reference[0] == -1


def _worker_and_reference(algorithm, grad, segments, step=3):
    """Worker 1's uplink from ``worker_step`` (blockwise) and from the compressor's
    reference ``compress`` on a fresh buffer: both wires."""
    import sys
    from pathlib import Path

    from hpcgrad.algorithms import create
    from hpcgrad.training.config import TrainConfig
    sys.path.insert(0, str(Path(__file__).parents[1] / "algorithms"))
    from without_mpi import context, uplink_buffer

    cfg = TrainConfig(algorithm=algorithm, seed=11).resolved()
    alg = create(cfg, sum(segments), 3, segments)
    wires = []
    for fused in (True, False):
        msg = uplink_buffer(alg, 1)
        msg.begin(step)
        if fused:
            alg.worker_step(context(alg, 1, step), grad, msg)
        else:
            alg.compressor.compress(context(alg, 1, step), grad, msg)
        wires.append(msg.wire.tobytes())
    return wires


@pytest.mark.parametrize("algorithm", ["qsgd", "dq-sgd"])
def test_the_worker_step_sends_the_reference_message(algorithm):
    segments = [1000, 3, 130, 77]
    fused, reference = _worker_and_reference(algorithm, gradient(sum(segments), 9), segments)
    assert fused == reference


def test_the_worker_step_refuses_a_non_finite_norm_as_before():
    from hpcgrad.errors import NonFiniteError
    grad = gradient(300, 2)
    grad[10] = np.inf
    with pytest.raises(NonFiniteError, match="tensor 0 is not finite"):
        _worker_and_reference("qsgd", grad, [100, 200])
