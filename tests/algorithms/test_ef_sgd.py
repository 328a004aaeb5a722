"""Error feedback (``ef-sgd``) through the algorithm objects: the worked EF / SAEF example of
the notes, the identities (identity compressor = momentum SGD; sent + residual = d), every
compressor's wire format and bad settings.  Multi-rank behaviour (error averaging, resume)
is tested under mpiexec in tests/algorithms/test_ef_sgd_mpi.py; each compressor on its own
(references, unbiasedness, corrupt bodies) in tests/compression/test_compressors.py."""

import numpy as np
import pytest

from hpcgrad.wire import codecs
from hpcgrad.algorithms import create
from hpcgrad.compression.compressors import COMPRESSORS
from hpcgrad.training.config import TrainConfig
from hpcgrad.errors import ConfigError, WireFormatError
from hpcgrad.wire import read_header
from without_mpi import apply, context, exchange

SEGMENTS = [300, 20, 180, 7]
D = sum(SEGMENTS)


def config(**settings):
    return TrainConfig(algorithm="ef-sgd", **settings).resolved()


def read_by(compressor, **settings):
    """The ones of ``settings`` that ``compressor`` reads: another's are refused."""
    names = {option.name for option in COMPRESSORS[compressor].options}
    return {name: value for name, value in settings.items() if name in names}


def ranks_of(workers, d=D, segments=SEGMENTS, **settings):
    cfg = config(**settings)
    return [create(cfg, d, workers, segments) for _ in range(workers + 1)]


def step_all(ranks, params, grad_at, step):
    """One iteration: each worker's gradient from ``grad_at(worker, point)``, the exchange,
    and the update on every rank; returns (uplinks, downlink)."""
    grads = []
    for w, alg in enumerate(ranks[1:]):
        ctx = context(alg, w + 1, step, params[w + 1])
        alg.before_gradient(ctx)
        grads.append(grad_at(w, params[w + 1].copy()))
        alg.after_gradient(ctx)
    up, down = exchange(ranks[1:], ranks[0], grads, step, params=params[1:])
    for rank, (alg, p) in enumerate(zip(ranks, params)):
        apply(alg, rank, p, down, step)
    return up, down


# --------------------------------------------------------------- the worked example

C = np.array([[0, 2, 1], [2, 0, 1]], dtype=np.float32)
E0 = np.array([[.1, 0, -.2], [0, .3, 0]], dtype=np.float32)


@pytest.mark.parametrize("feedback, mean, x_after", [
    ("ef", [.3, .4, 0], [.7, .6, 1]),
    ("step-ahead", [.275, .325, 0], [.725, .675, 1]),
])
def test_worked_example_of_the_notes(feedback, mean, x_after):
    # M = 2, lr 0.5, top-1, f_m(y) = |y - c_m|^2 / 2, so grad f_m(y) = y - c_m; no momentum.
    ranks = ranks_of(2, d=3, segments=[3], compressor="topk", sparsity=0.3, lr=0.5,
                     momentum=0.0, feedback=feedback)
    for w, alg in enumerate(ranks[1:]):
        alg.residual[...] = E0[w]
    params = [np.ones(3, dtype=np.float32) for _ in ranks]
    up, down = step_all(ranks, params, lambda w, y: y - C[w], 0)
    _, sent_mean = codecs.decode_message(down.wire.tobytes())
    np.testing.assert_allclose(sent_mean, mean, atol=1e-6)
    for p in params:
        np.testing.assert_allclose(p, x_after, atol=1e-6)
    # each worker sent one coordinate: .6 / .8 (EF) or .55 / .65 (SAEF), the rest kept
    kept = {"ef": [[0, -.5, -.2], [-.5, 0, 0]],
            "step-ahead": [[0, -.5, -.1], [-.5, 0, 0]]}[feedback]
    for w, alg in enumerate(ranks[1:]):
        np.testing.assert_allclose(alg.residual, kept[w], atol=1e-6)


@pytest.mark.parametrize("feedback, mean, x_after, kept", [
    # EF: wd at x.  Worker 1: g + wd*x = [1, -1, 0] + .1 = [1.1, -.9, .1], u = [.55, -.45, .05],
    # d = u + e = [.65, -.45, -.15]; worker 2: d = [-.45, .85, .05].  Top-1: .65 and .85.
    ("ef", [.325, .425, 0], [.675, .575, 1], [[0, -.45, -.15], [-.45, 0, .05]]),
    # SAEF: gradient AND weight decay at y = x - e (the authors' code steps torch's SGD there).
    # Worker 1: y = [.9, 1, 1.2], g = y - c = [.9, -1, .2], g + .1*y = [.99, -.9, .32],
    # u = [.495, -.45, .16], d = [.595, -.45, -.04]; worker 2: y = [1, .7, 1],
    # g + .1*y = [-.9, .77, .1], u = [-.45, .385, .05], d = [-.45, .685, .05].
    # (Decay at x instead would send .6 and .7: mean [.3, .35, 0].)
    ("step-ahead", [.2975, .3425, 0], [.7025, .6575, 1], [[0, -.45, -.04], [-.45, 0, .05]]),
])
def test_worked_example_with_weight_decay(feedback, mean, x_after, kept):
    # The example above with --weight-decay 0.1.
    ranks = ranks_of(2, d=3, segments=[3], compressor="topk", sparsity=0.3, lr=0.5,
                     momentum=0.0, weight_decay=0.1, feedback=feedback)
    for w, alg in enumerate(ranks[1:]):
        alg.residual[...] = E0[w]
    params = [np.ones(3, dtype=np.float32) for _ in ranks]
    up, down = step_all(ranks, params, lambda w, y: y - C[w], 0)
    _, sent_mean = codecs.decode_message(down.wire.tobytes())
    np.testing.assert_allclose(sent_mean, mean, atol=1e-6)
    for p in params:
        np.testing.assert_allclose(p, x_after, atol=1e-6)
    for w, alg in enumerate(ranks[1:]):
        np.testing.assert_allclose(alg.residual, kept[w], atol=1e-6)


# ----------------------------------------------------------------------- identities

def quadratic(seed):
    """Per-worker gradients of f_m(y) = |y - c_m|^2 / 2 with seeded centres."""
    centres = np.random.default_rng(seed).standard_normal((8, D)).astype(np.float32)
    return lambda w, y: (y - centres[w]).astype(np.float32)


@pytest.mark.parametrize("feedback", ["none", "ef", "step-ahead"])
def test_one_worker_with_the_identity_compressor_is_fp32_ps_bit_for_bit(feedback):
    settings = dict(lr=0.05, momentum=0.9, weight_decay=1e-3)
    ef = ranks_of(1, compressor="identity", feedback=feedback, **settings)
    ps = [create(TrainConfig(algorithm="fp32-ps", **settings).resolved(), D, 1, SEGMENTS)
          for _ in range(2)]
    grad = quadratic(1)
    x_ef = [np.zeros(D, np.float32) for _ in ef]
    x_ps = [np.zeros(D, np.float32) for _ in ps]
    for step in range(5):
        step_all(ef, x_ef, grad, step)
        # fp32-ps's gradient at the same point, through the same exchange
        up, down = exchange(ps[1:], ps[0], [grad(0, x_ps[1].copy())], step, params=x_ps[1:])
        for rank, (alg, p) in enumerate(zip(ps, x_ps)):
            apply(alg, rank, p, down, step)
        assert np.array_equal(x_ef[1], x_ps[1]), step
        assert not ef[1].residual.any() if feedback != "none" else ef[1].residual is None


def test_several_workers_with_the_identity_compressor_follow_momentum_sgd():
    settings = dict(lr=0.05, momentum=0.9, weight_decay=0.0)
    ef = ranks_of(3, compressor="identity", feedback="step-ahead", **settings)
    grad = quadratic(2)
    params = [np.zeros(D, np.float32) for _ in ef]
    x, buf = np.zeros(D, np.float64), np.zeros(D, np.float64)
    for step in range(6):
        step_all(ef, params, grad, step)
        g = np.mean([grad(w, x.astype(np.float32)) for w in range(3)], axis=0)
        buf = 0.9 * buf + g
        x -= 0.05 * buf
        np.testing.assert_allclose(params[0], x, rtol=0, atol=1e-5)


@pytest.mark.parametrize("compressor", ["scaled-sign", "topk", "randomk", "qsgd"])
@pytest.mark.parametrize("feedback", ["ef", "step-ahead"])
def test_what_is_sent_plus_the_residual_is_the_update_plus_the_old_residual(compressor,
                                                                             feedback):
    ranks = ranks_of(3, compressor=compressor, feedback=feedback, momentum=0.0, lr=0.1,
                     **read_by(compressor, sparsity=0.05))
    grad = quadratic(3)
    params = [np.zeros(D, np.float32) for _ in ranks]
    for step in range(4):
        before = [alg.residual.copy() for alg in ranks[1:]]
        points = [params[w + 1] - (before[w] if feedback == "step-ahead" else 0)
                  for w in range(3)]
        up, _ = step_all(ranks, params, grad, step)
        for w, alg in enumerate(ranks[1:]):
            _, sent = codecs.decode_message(up.message(w + 1).tobytes(), segments=SEGMENTS)
            update = np.float32(0.1) * grad(w, points[w].astype(np.float32))
            np.testing.assert_allclose(sent + alg.residual, update + before[w],
                                       rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------- wire formats

@pytest.mark.parametrize("compressor, codec", [
    ("identity", codecs.FP32), ("scaled-sign", codecs.SCALED_SIGN),
    ("topk", codecs.SPARSE_VALUES), ("randomk", codecs.SPARSE_VALUES),
    ("qsgd", codecs.QSGD)])
def test_each_compressor_sends_its_documented_codec(compressor, codec):
    ranks = ranks_of(2, compressor=compressor, **read_by(compressor, sparsity=0.05, bits=4))
    params = [np.zeros(D, np.float32) for _ in ranks]
    up, down = step_all(ranks, params, quadratic(4), 0)
    for w in (1, 2):
        header = read_header(up.message(w))
        assert header.codec == codec.id
        if codec is codecs.SCALED_SIGN:
            assert header.body_length == (D + 7) // 8 + 4
        if compressor in ("topk", "randomk"):
            _, values = codecs.decode_message(up.message(w).tobytes())
            assert np.count_nonzero(values) == sum(-(-n * 5 // 100) for n in SEGMENTS)
    assert read_header(down.wire).codec == codecs.FP32.id


def test_scaled_sign_is_the_mean_magnitude_times_the_sign():
    v = np.array([1, -2, 0, 3, -.5], dtype=np.float32)
    body = np.zeros(16, dtype=np.uint8)
    codecs.SCALED_SIGN.encode(v, body)
    np.testing.assert_allclose(codecs.SCALED_SIGN.decode(body[:5], 5),
                               [1.3, -1.3, 1.3, 1.3, -1.3], rtol=1e-6)
    assert body[0] == 0b10010 and body[1:5].view("<f4")[0] == np.float32(1.3)


def test_server_feedback_compresses_the_mean_back_and_keeps_its_residual():
    ranks = ranks_of(3, compressor="topk", sparsity=0.05, server_feedback=True)
    params = [np.zeros(D, np.float32) for _ in ranks]
    up, down = step_all(ranks, params, quadratic(5), 0)
    assert read_header(down.wire).codec == codecs.SPARSE_VALUES.id
    mean = np.zeros(D, np.float32)
    for w in (1, 2, 3):
        mean += codecs.decode_message(up.message(w).tobytes())[1]
    mean /= np.float32(3)
    _, sent = codecs.decode_message(down.wire.tobytes())
    np.testing.assert_allclose(sent + ranks[0].server_residual, mean, atol=1e-6)
    assert np.count_nonzero(sent) <= sum(-(-n * 5 // 100) for n in SEGMENTS)


def test_a_corrupt_scaled_sign_scale_is_rejected():
    ranks = ranks_of(2, compressor="scaled-sign")
    def negative_scale(rank, msg):
        msg.body[-4:] = np.frombuffer(np.float32(-1).tobytes(), np.uint8)
    with pytest.raises(WireFormatError, match="scale -1.0 is not a finite number"):
        exchange(ranks[1:], ranks[0], [np.ones(D, np.float32)] * 2, 0,
                 tamper=negative_scale)


# ------------------------------------------------------------------------ bad input

@pytest.mark.parametrize("settings, message", [
    (dict(algorithm="signum-mv", feedback="ef"), "--feedback: a setting of --algorithm ef-sgd; "
                                                 "this run uses --algorithm signum-mv"),
    (dict(algorithm="topk", compressor="topk"), "keeps its own gradient residual"),
    (dict(algorithm="ef-sgd", feedback="sometimes"), "unknown feedback 'sometimes'"),
    (dict(algorithm="ef-sgd", compressor="powersgd"), "unknown compressor 'powersgd'"),
    (dict(algorithm="ef-sgd", error_averaging=0), "error-averaging must be an integer >= 1"),
    (dict(algorithm="ef-sgd", error_averaging=-3), "error-averaging must be an integer >= 1"),
    (dict(algorithm="ef-sgd", error_averaging=4, feedback="none"), "keeps none"),
    (dict(algorithm="ef-sgd", compressor="topk", sparsity=1.0), "selects every coordinate"),
    (dict(algorithm="ef-sgd", checkpoint_every=5), "need both --checkpoint-every"),
    (dict(algorithm="ef-sgd", topk_values="fp16"), "the topk compressor sends fp32"),
    (dict(algorithm="ef-sgd", selection="threshold"), "always selects exactly"),
    (dict(algorithm="ef-sgd", residual=0.5), "keeps its residual with --feedback"),
    (dict(algorithm="ef-sgd", quantize_downlink=True), "use --server-feedback"),
])
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**settings).resolved()
