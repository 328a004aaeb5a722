"""QSGD and DQ-SGD through the algorithm objects and the kernels: unbiasedness, the error
bound, exact message sizes, the DQ-SGD width rule on hand-computed numbers, the exchange
without MPI, corrupt messages and bad settings."""

import math

import numpy as np
import pytest

from hpcgrad.wire import codecs
from hpcgrad.algorithms import create
from hpcgrad.algorithms.qsgd import WidthSchedule, calibration_levels, width_for
from hpcgrad.training.config import TrainConfig
from hpcgrad.errors import ConfigError, NonFiniteError, WireFormatError
from hpcgrad.kernels import quantize
from hpcgrad.wire import HEADER_SIZE, read_header
from without_mpi import apply, downlink_buffer, exchange


def algorithm(d, workers, name="qsgd", segments=None, **settings):
    cfg = TrainConfig(algorithm=name, **settings).resolved()
    return create(cfg, d, workers, segments)


def encode(values, segments, bits, key):
    values = np.asarray(values, dtype=np.float32)
    offsets = np.concatenate([[0], np.cumsum(segments)]).astype(np.int64)
    out = np.zeros(quantize.body_length(segments, bits) + 8, dtype=np.uint8)
    norms = np.zeros(len(segments), dtype=np.float32)
    length = codecs.encode_qsgd(values, offsets, bits, key, out, norms)
    return out[:length]


def decode(body, segments, bits):
    return codecs.QSGD.decode(body, sum(segments), bits, segments)


# ------------------------------------------------------------------ the quantizer

def test_the_quantizer_is_unbiased():
    """The mean of N independent decodes converges to the input.

    Each decode is ``r/s * l`` with ``l`` = floor or floor + 1 of ``s|v|/r``: a Bernoulli
    draw scaled by ``r/s``, variance ``(r/s)**2 * p(1 - p) <= (r/s)**2 / 4``.  The mean of
    N draws has a standard deviation of at most ``r / (2 s sqrt(N))``; each coordinate must
    be within 5 of those (a two-sided normal tail of 6e-7 per coordinate, 1e-4 over the 144
    checked here; the coins are deterministic, so the test cannot flake).  The pooled
    z-scores must also average near 0 (|mean z| < 5/sqrt(144)), which a bias of a tenth of a
    standard deviation on every coordinate would fail.
    """
    rng = np.random.default_rng(1)
    segments = [40, 8]
    values = (rng.standard_normal(sum(segments)) * rng.uniform(0.01, 3, sum(segments)))
    values = values.astype(np.float32)
    values[5] = 0.0
    zs = []
    for bits, n in ((2, 3000), (3, 2000), (5, 1000)):
        s = quantize.levels(bits)
        total = np.zeros(values.size)
        for step in range(n):
            body = encode(values, segments, bits, quantize.stream_key(7, step, 3))
            total += decode(body, segments, bits)
        mean = total / n
        r = np.repeat([np.linalg.norm(values[:40]), np.linalg.norm(values[40:])], segments)
        sigma = r / (2 * s * math.sqrt(n))
        z = (mean - values) / sigma
        assert np.all(np.abs(z) < 5), (bits, np.abs(z).max())
        assert mean[5] == 0.0
        zs.append(z)
    assert abs(np.mean(np.concatenate(zs))) < 5 / math.sqrt(144)


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8, 12, 16])
def test_decode_of_encode_is_within_one_quantization_step(bits):
    rng = np.random.default_rng(bits)
    segments = [1, 17, 300, 5]
    values = rng.standard_normal(sum(segments)).astype(np.float32) * 10
    values[20:25] = 0
    values[318:323] = 0  # an all-zero tensor: norm 0, every field 0
    values[3] *= 1e4  # one coordinate carrying almost all of its tensor's norm
    body = encode(values, segments, bits, quantize.stream_key(0, bits, 1))
    out = decode(body, segments, bits)
    s = quantize.levels(bits)
    start = 0
    for n in segments:
        v, o = values[start:start + n], out[start:start + n]
        r = np.frombuffer(body[:4 * len(segments)].tobytes(), "<f4")[segments.index(n)]
        assert r >= np.linalg.norm(v.astype(np.float64))  # rounded up
        step = r / s
        assert np.all(np.abs(o - v) <= step * (1 + 1e-6)), np.abs(o - v).max() / step
        assert np.all(np.sign(o) * np.sign(v) >= 0)  # never the wrong sign
        start += n
    assert np.all(out[318:323] == 0)
    # a one-coordinate tensor has |v| = r: level s, s * (r/s) in float32, within an ulp of v
    assert out[0] == pytest.approx(values[0], rel=2 ** -23)


def test_the_same_key_gives_the_same_message_and_another_key_another():
    values = np.random.default_rng(0).standard_normal(500).astype(np.float32)
    a = encode(values, [500], 3, quantize.stream_key(0, 5, 1))
    b = encode(values, [500], 3, quantize.stream_key(0, 5, 1))
    c = encode(values, [500], 3, quantize.stream_key(0, 5, 2))
    d = encode(values, [500], 3, quantize.stream_key(0, 6, 1))
    assert a.tobytes() == b.tobytes() != c.tobytes() != d.tobytes()


def test_a_norm_that_overflows_float32_is_an_error():
    values = np.full(100, 3e38, dtype=np.float32)
    with pytest.raises(NonFiniteError, match="norm of tensor 1 is not finite"):
        encode(np.concatenate([[1.0], values]).astype(np.float32), [1, 100], 4,
               quantize.stream_key(0, 0, 1))


# ------------------------------------------------------------- the algorithm objects

def expected_length(segments, bits):
    return HEADER_SIZE + 4 * len(segments) + sum(math.ceil(bits * n / 8) for n in segments)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("quantize_downlink", [False, True])
def test_qsgd_message_sizes_and_the_server_mean(bits, quantize_downlink):
    segments, m = [33, 7, 100, 1], 3
    d = sum(segments)
    settings = dict(bits=bits, quantize_downlink=quantize_downlink)
    workers = [algorithm(d, m, segments=segments, **settings) for _ in range(m)]
    server = algorithm(d, m, segments=segments, **settings)
    grads = np.random.default_rng(bits).standard_normal((m, d)).astype(np.float32)
    up, down = exchange(workers, server, grads, step=4)
    rows = []
    for rank in range(1, m + 1):
        assert up.lengths[rank] == expected_length(segments, bits)
        header, values = codecs.decode_message(up.message(rank).tobytes(), segments=segments)
        assert (header.codec, header.flags, header.step, header.sender) == (7, bits, 4, rank)
        rows.append(values)
    mean = ((rows[0] + rows[1]) + rows[2]) / np.float32(3)
    header, values = codecs.decode_message(down.wire.tobytes(), segments=segments)
    if quantize_downlink:
        assert down.length == expected_length(segments, bits)
        assert (header.codec, header.flags) == (7, bits)
        bound = np.linalg.norm(mean.astype(np.float64)) / quantize.levels(bits)  # >= r_l / s
        assert np.all(np.abs(values - mean) <= bound * (1 + 1e-6))
    else:
        assert down.length == HEADER_SIZE + 4 * d and (header.codec, header.flags) == (1, 0)
        assert values.tobytes() == mean.tobytes()
    assert server.step_stats["bits"] == bits
    assert server.step_stats["bits_down"] == (bits if quantize_downlink else 32)
    # every rank applies the same downlink: momentum SGD on the mean
    params = np.ones(d, dtype=np.float32)
    apply(server, 0, params, down, 4)
    np.testing.assert_array_equal(params, np.float32(1) - np.float32(0.1) * values)


def test_dq_sgd_announces_the_next_width_in_the_downlink_and_workers_use_it():
    segments, m = [50, 10], 2
    d = sum(segments)
    settings = dict(dq_start_bits=3, dq_lambda=40.0, dq_rho=1.0, min_bits=2, max_bits=8)
    ranks = [algorithm(d, m, "dq-sgd", segments=segments, **settings) for _ in range(m + 1)]
    server, workers = ranks[0], ranks[1:]
    rng = np.random.default_rng(0)
    params = [np.zeros(d, dtype=np.float32) for _ in ranks]
    widths = []
    for step, scale in enumerate([0.1, 1.0, 0.01, 0.2]):
        grads = (rng.standard_normal((m, d)) * scale).astype(np.float32)
        up, down = exchange(workers, server, grads, step)
        b = server.step_stats["bits"]
        widths.append(b)
        assert all(up.lengths[r] == expected_length(segments, b) for r in (1, 2))
        header = read_header(down.wire)
        assert header.codec == 7 and header.flags & 0x1F == 0 and down.length == 32 + 4 * d
        # b_{n+1} from this step's norms: lambda * G, rho = 1
        norms = []
        for r in (1, 2):
            body = up.message(r)[HEADER_SIZE:HEADER_SIZE + 8].view("<f4").astype(np.float64)
            norms.append(math.sqrt((body ** 2).sum()))
        assert server.step_stats["grad_norm"] == pytest.approx(np.mean(norms), rel=1e-12)
        assert header.flags >> 8 == width_for(40.0 * np.mean(norms), 2, 8)
        for rank, (alg, p) in enumerate(zip(ranks, params)):
            apply(alg, rank, p, down, step)
        assert all(alg.bits == header.flags >> 8 for alg in ranks)
    assert widths[0] == 3 and len(set(widths)) > 1
    assert all(p.tobytes() == params[0].tobytes() for p in params)


def test_an_uplink_at_the_wrong_width_or_with_a_bad_norm_is_named():
    segments, m = [20], 2
    workers = [algorithm(20, m, "dq-sgd", segments=segments) for _ in range(m)]
    server = algorithm(20, m, "dq-sgd", segments=segments)
    grads = np.ones((m, 20), dtype=np.float32)
    workers[1].bits = 5  # rank 2 missed the announcement
    with pytest.raises(WireFormatError, match="rank 2 at step 3: header flags 0x0005 "
                                              r"\(width 5, next 0\); expected width 4"):
        exchange(workers, server, grads, step=3)
    workers[1].bits = 4

    def nan_norm(rank, msg):
        if rank == 1:
            msg.raw[HEADER_SIZE:HEADER_SIZE + 4] = np.frombuffer(
                np.float32(np.nan).tobytes(), np.uint8)
    with pytest.raises(WireFormatError, match="rank 1 at step 3: qsgd body is corrupt: a "
                                              "tensor's norm is not finite"):
        exchange(workers, server, grads, step=3, tamper=nan_norm)


def test_a_downlink_announcing_a_width_outside_the_range_is_refused():
    alg = algorithm(20, 2, "dq-sgd", segments=[20], max_bits=6)
    down = downlink_buffer(alg)
    down.write(7, codecs.QSGDCodec.flags(0, 7), 80)
    with pytest.raises(WireFormatError, match="next width 7 .* outside --min-bits 2 .. "
                                              "--max-bits 6"):
        apply(alg, 1, np.zeros(20, np.float32), down)


# --------------------------------------------------------------- the width rule

def test_width_is_one_plus_ceil_log2_s_plus_one_clipped():
    for s in [0.0, 0.4, 1.0, 1.01, 3.0, 3.5, 7.0, 7.01, 100.0, 127.0, 128.0, 1e9]:
        raw = 1 + math.ceil(math.log2(s + 1))
        assert width_for(s, 1, 16) == min(max(raw, 1), 16), s
    assert width_for(0.0, 2, 8) == 2 and width_for(1e9, 2, 8) == 8
    assert width_for(7.0, 2, 8) == 4 and width_for(7.0001, 2, 8) == 5 and width_for(9, 2, 4) == 4


def test_the_schedule_on_hand_computed_numbers():
    # lambda 10, rho 0.81 (sqrt 0.9), T = 3, window 2, range 2..8.
    sched = WidthSchedule(0.81, 3, 4, 2, 8, 2, lam=10.0)
    # step 0, G = 1: b_1 from s = 10 * 1 * 0.81**((3-1-1)/2) = 9 -> 2**4 - 1 = 15 >= 9: b = 5
    assert sched.observe(0, 1.0) == 5
    # step 1, G = 3: mean(1, 3) = 2, s = 10 * 2 * 0.81**0 = 20 -> 31 >= 20: b = 6
    assert sched.observe(1, 3.0) == 6
    # step 2, G = 0.2: mean(3, 0.2) = 1.6, s = 16 / 0.9 = 17.8 -> b = 6 (window forgets G_0)
    assert sched.observe(2, 0.2) == 6
    # step 3, G = 0.2: mean(0.2, 0.2), s = 2 / 0.81 = 2.47 -> 3 >= 2.47: b = 3
    assert sched.observe(3, 0.2) == 3
    # clipping: a huge and a zero norm
    assert sched.observe(4, 1e6) == 8
    clipped = WidthSchedule(0.81, 3, 4, 3, 8, 1, lam=10.0)
    assert clipped.observe(0, 0.0) == 3  # s = 0 -> b = 1, clipped up to min-bits


def test_lambda_is_calibrated_on_the_first_norm_to_the_start_width():
    assert calibration_levels(4) == pytest.approx(2 ** 2.5 - 1)
    sched = WidthSchedule(0.99, 100, 4, 2, 8, 1)
    assert sched.observe(0, 0.0) == 4 and sched.lam is None  # nothing to calibrate on yet
    assert sched.observe(1, 2.0) == 4  # calibrated at step 1: s_2 = 4.66 * 0.99**-0.5
    assert sched.lam == pytest.approx((2 ** 2.5 - 1) / (2.0 * 0.99 ** 49))
    assert sched.observe(2, 4.0) == 5  # the norm doubled: s ~ 9.4 -> b = 5
    assert sched.observe(3, 0.5) == 3  # s ~ 1.2 -> b = 3
    with pytest.raises(WireFormatError, match="gradient norm is nan"):
        sched.observe(4, float("nan"))


# ----------------------------------------------------------------- settings

def test_defaults_per_algorithm():
    q = TrainConfig(algorithm="qsgd").resolved()
    assert (q.bits, q.lr, q.momentum, q.quantize_downlink) == (4, 0.1, 0.9, False)
    dq = TrainConfig(algorithm="dq-sgd", iterations=123).resolved()
    assert (dq.dq_horizon, dq.dq_start_bits, dq.min_bits, dq.max_bits, dq.dq_window,
            dq.dq_rho, dq.dq_lambda) == (123, 4, 2, 8, 1, 0.999, None)
    assert TrainConfig(algorithm="dq-sgd", dq_horizon=50).resolved().dq_horizon == 50


@pytest.mark.parametrize("settings, message", [
    (dict(algorithm="qsgd", bits=0), "bits must be an integer in 2..16"),
    (dict(algorithm="qsgd", bits=17), "bits must be an integer in 2..16"),
    (dict(algorithm="qsgd", bits=-3), "bits must be an integer in 2..16"),
    (dict(algorithm="qsgd", bits=1), "bits 1 leaves no level bits"),
    (dict(algorithm="qsgd", bits=4.5), "bits must be an integer"),
    (dict(algorithm="dq-sgd", dq_horizon=0), r"dq-horizon \(T, the planned iterations\) must "
                                             "be an integer >= 1, got 0"),
    (dict(algorithm="dq-sgd", dq_horizon=-5), "dq-horizon"),
    (dict(algorithm="dq-sgd", dq_rho=0.0), r"dq-rho must be in \(0, 1\]"),
    (dict(algorithm="dq-sgd", dq_rho=1.5), r"dq-rho must be in \(0, 1\]"),
    (dict(algorithm="dq-sgd", dq_rho=float("nan")), "dq-rho must be a finite number"),
    (dict(algorithm="dq-sgd", dq_lambda=-1.0), "dq-lambda must be > 0"),
    (dict(algorithm="dq-sgd", dq_lambda=float("inf")), "dq-lambda must be a finite number"),
    (dict(algorithm="dq-sgd", min_bits=6, max_bits=4, dq_start_bits=5), "min-bits 6 is above "
                                                                        "max-bits 4"),
    (dict(algorithm="dq-sgd", dq_start_bits=9), "dq-start-bits 9 is outside min-bits 2 .. "
                                                "max-bits 8"),
    (dict(algorithm="dq-sgd", max_bits=20), "max-bits must be an integer in 2..16"),
    (dict(algorithm="dq-sgd", dq_window=0), "dq-window must be an integer >= 1"),
])
def test_bad_settings_are_named(settings, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**settings).resolved()


def test_cuda_is_accepted():
    """The worker step has a device-side twin (tests/algorithms/test_on_device.py); a missing
    GPU or CuPy is refused when the device is selected (tests/comm/test_device.py)."""
    assert algorithm(10, 2, device="cuda").config.device == "cuda"
