"""DQ-SGD's error-target width rule (``--dq-error-target EPS``): QSGD's variance bound on
worked examples, the smallest width that meets the target, the server announcing it from the
norms it received, and bad settings.  A real mpiexec run is in test_dq_error_target_mpi.py.

Worked numbers (``docs/algorithms/dq-sgd.md`` §2.1): s = 2^(b-1) - 1, bound(b) =
sum_l min(d_l/s^2, sqrt(d_l)/s) |g_l|^2 / sum_l |g_l|^2.

  one tensor, d = 100:              b = 2: min(100, 10) = 10      b = 3: 10/3 = 3.333
                                    b = 4: 10/7 = 1.4286          b = 5: 100/225 = 0.4444
  d = (100, 4), |g_l|^2 = (1, 3):   b = 2: (10 + 2*3)/4 = 4       b = 3: (3.333 + 3*4/9)/4 = 1.1667
                                    b = 4: (1.4286 + 3*4/49)/4 = 0.41837
"""

import math

import numpy as np
import pytest

from hpcgrad.algorithms import create
from hpcgrad.algorithms.qsgd import ErrorTargetWidths, variance_bound
from hpcgrad.errors import ConfigError, WireFormatError
from hpcgrad.kernels import quantize
from hpcgrad.training.config import TrainConfig
from hpcgrad.wire import HEADER_SIZE, codecs, read_header
from without_mpi import apply, exchange


@pytest.mark.parametrize("sizes, squares, bits, bound", [
    ([100], [1.0], 2, 10.0), ([100], [7.0], 3, 10 / 3), ([100], [1.0], 4, 10 / 7),
    ([100], [1.0], 5, 100 / 225),
    ([100, 4], [1, 3], 2, 4.0), ([100, 4], [1, 3], 3, (10 / 3 + 3 * 4 / 9) / 4),
    ([100, 4], [1, 3], 4, (10 / 7 + 3 * 4 / 49) / 4),
    ([100, 4], [0, 0], 2, 0.0),  # a zero gradient quantizes exactly
])
def test_the_variance_bound_on_worked_examples(sizes, squares, bits, bound):
    assert variance_bound(sizes, squares, bits) == pytest.approx(bound, rel=1e-12)


def widths(target, rho=1.0, horizon=3, min_bits=2, max_bits=8, window=1, sizes=(100, 4)):
    return ErrorTargetWidths(list(sizes), target, rho, horizon, min_bits, max_bits, window)


@pytest.mark.parametrize("target, rho, want", [
    (5.0, 1.0, 2),     # 4 <= 5
    (1.2, 1.0, 3),     # 4 > 1.2 >= 1.1667
    (0.5, 1.0, 4),     # 1.1667 > 0.5 >= 0.418
    (0.6, 0.5, 3),     # step 1 of T = 3 is damped by 0.5^(3-1-1): 0.5 * 1.1667 <= 0.6
    (1e-9, 1.0, 8),    # no width in range meets it: the widest
])
def test_the_smallest_width_that_meets_the_target(target, rho, want):
    # observe(step 0) chooses step 1's width
    assert widths(target, rho).observe(0, [1.0, 3.0]) == want


def test_the_width_respects_the_range_and_a_zero_gradient_takes_the_narrowest():
    assert widths(5.0, min_bits=3).observe(0, [1.0, 3.0]) == 3
    assert widths(0.5, max_bits=3).observe(0, [1.0, 3.0]) == 3
    assert widths(1e-9).observe(0, [0.0, 0.0]) == 2


def test_the_norms_are_averaged_over_the_window():
    # bound(b = 2, 3, 4) for squares (4, 0): 10, 3.333, 1.429; (2, 2): 6, 1.889, 0.755;
    # (0, 4): 2, 0.444, 0.082.  Target 2.
    smoothed, plain = widths(2.0, window=2), widths(2.0, window=1)
    assert smoothed.observe(0, [4.0, 0.0]) == plain.observe(0, [4.0, 0.0]) == 4
    assert smoothed.observe(1, [0.0, 4.0]) == 3  # the mean of the two steps: (2, 2)
    assert plain.observe(1, [0.0, 4.0]) == 2
    assert smoothed.observe(2, [0.0, 4.0]) == 2  # (4, 0) has left the window


def test_a_bad_norm_is_named():
    with pytest.raises(WireFormatError, match="step 4: the workers' squared tensor norms"):
        widths(1.0).observe(4, [1.0, math.nan])


# ----------------------------------------------------------- through the exchange

def algorithm(d, workers, segments, **settings):
    cfg = TrainConfig(algorithm="dq-sgd", **settings).resolved()
    return create(cfg, d, workers, segments)


def test_the_server_announces_the_width_its_received_norms_call_for():
    segments, m, target = [50, 10], 2, 0.8
    d = sum(segments)
    settings = dict(dq_start_bits=3, dq_error_target=target, dq_rho=1.0, min_bits=2,
                    max_bits=8)
    ranks = [algorithm(d, m, segments, **settings) for _ in range(m + 1)]
    server, workers = ranks[0], ranks[1:]
    rng = np.random.default_rng(0)
    params = [np.zeros(d, dtype=np.float32) for _ in ranks]
    for step, spread in enumerate([1.0, 30.0, 0.01, 1.0]):
        grads = rng.standard_normal((m, d)).astype(np.float32)
        grads[:, :50] *= spread  # moves the squared norm between the two tensors
        up, down = exchange(workers, server, grads, step)
        squares = np.zeros(2)
        for r in (1, 2):
            norms = up.message(r)[HEADER_SIZE:HEADER_SIZE + 8].view("<f4").astype(np.float64)
            squares += norms ** 2
        want = next((b for b in range(2, 9)
                     if variance_bound(segments, squares, b) <= target), 8)
        assert read_header(down.wire).flags >> 8 == want
        for rank, (alg, p) in enumerate(zip(ranks, params)):
            apply(alg, rank, p, down, step)
        assert all(alg.bits == want for alg in ranks)
    assert server.metadata()["dq_rule"] == "error-target"
    assert server.metadata()["dq_error_target"] == target
    assert "dq_calibration_levels" not in server.metadata()


@pytest.mark.parametrize("bits", [2, 3, 5])
def test_the_measured_error_stays_under_the_bound(bits):
    """What the rule relies on: E|Q(v) - v|^2 <= bound * |v|^2, measured over 400 keys."""
    segments = [200, 30]
    rng = np.random.default_rng(2)
    v = (rng.standard_normal(sum(segments)) * np.repeat([1.0, 5.0], segments)).astype(np.float32)
    offsets = np.array([0, 200, 230], dtype=np.int64)
    total = 0.0
    for step in range(400):
        out = np.zeros(quantize.body_length(segments, bits) + 8, dtype=np.uint8)
        norms = np.zeros(2, dtype=np.float32)
        n = codecs.encode_qsgd(v, offsets, bits, quantize.stream_key(7, step, 1),
                               out, norms)
        decoded = codecs.QSGD.decode(out[:n], sum(segments), bits, segments)
        total += float(((decoded.astype(np.float64) - v) ** 2).sum())
    squares = [float((v[:200].astype(np.float64) ** 2).sum()),
               float((v[200:].astype(np.float64) ** 2).sum())]
    assert total / 400 <= variance_bound(segments, squares, bits) * sum(squares)


@pytest.mark.parametrize("settings, message", [
    (dict(dq_error_target=0.5, dq_lambda=3.0), "two width rules; give one of them"),
    (dict(dq_error_target=0.0), "dq-error-target must be"),
    (dict(dq_error_target=-1.0), "dq-error-target must be"),
])
def test_bad_settings_are_named(settings, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(algorithm="dq-sgd", **settings).resolved()


def test_qsgd_does_not_read_the_error_target():
    with pytest.warns(Warning, match="dq-error-target"):
        TrainConfig(algorithm="qsgd", dq_error_target=0.5).resolved()
