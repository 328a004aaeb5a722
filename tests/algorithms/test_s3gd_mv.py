"""S3GD-MV through the algorithm object: the worked example of ../shared/docs/algorithms.md §2,
the signSGD-MV identity, per-tensor K and bad settings.  The top-K selection rules themselves
are tested in tests/compression/test_selection.py."""

import numpy as np
import pytest

from hpcgrad.wire import codecs
from hpcgrad.algorithms import create
from hpcgrad.training.config import TrainConfig
from hpcgrad.errors import ConfigError, WireFormatError
from hpcgrad.compression.selection import k_by_votes
from hpcgrad.comm.transport import Uplinks
from hpcgrad.wire import HEADER_SIZE
from without_mpi import apply, context, downlink_buffer, exchange, receive, uplink_buffer


def algorithm(d, workers, name="s3gd-mv", segments=None, **settings):
    cfg = TrainConfig(algorithm=name, **settings).resolved()
    return create(cfg, d, workers, segments)


def direction_of(down):
    _, values = codecs.decode_message(down.wire.tobytes())
    return values


GRADS = [[.9, -.1, .3, -.8, .05, .2], [.7, .6, -.2, -.1, .4, -.3], [-.5, -.4, .1, -.9, .02, .6]]


def test_worked_example_votes_direction_union_and_residuals():
    settings = dict(sparsity=2 / 6, residual=1.0)
    workers = [algorithm(6, 3, **settings) for _ in GRADS]
    server = algorithm(6, 3, **settings)
    up, down = exchange(workers, server, GRADS)
    # Each worker's message: the signs of its two largest |g|.
    sent = [codecs.decode_message(up.message(r).tobytes())[1] for r in (1, 2, 3)]
    np.testing.assert_array_equal(sent[0], [1, 0, 0, -1, 0, 0])
    np.testing.assert_array_equal(sent[1], [1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(sent[2], [0, 0, 0, -1, 0, 1])
    np.testing.assert_array_equal(sum(sent), [2, 1, 0, -2, 0, 1])  # the votes
    np.testing.assert_array_equal(direction_of(down), [1, 1, 0, -1, 0, 1])
    assert server.step_stats["union_size"] == 4  # {0, 1, 3, 5}
    assert server.step_stats["nnz_down"] == 4
    np.testing.assert_array_equal(server.step_stats["nnz_up"], [2, 2, 2])
    # Residuals keep exactly the entries that were not sent.
    for alg, grad, s in zip(workers, GRADS, sent):
        expected = np.where(s != 0, 0, np.float32(grad)).astype(np.float32)
        np.testing.assert_array_equal(alg.residual, expected)
    # The update: x <- x - lr * direction.
    params = np.ones(6, dtype=np.float32)
    apply(server, 0, params, down)
    np.testing.assert_array_equal(params, np.float32(1) - np.float32(0.001) *
                                  np.array([1, 1, 0, -1, 0, 1], dtype=np.float32))


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
@pytest.mark.parametrize("workers", [2, 3, 4])
def test_sparsity_one_without_residual_is_signsgd_mv_with_tie_zero(workers, weight_decay):
    rng = np.random.default_rng(workers)
    d = 301
    common = dict(lr=0.01, weight_decay=weight_decay, momentum=0.0)
    s3 = [algorithm(d, workers, sparsity=1.0, residual=0.0, **common)
          for _ in range(workers + 1)]
    mv = [algorithm(d, workers, name="signum-mv", tie="zero", **common)
          for _ in range(workers + 1)]
    params_s3 = rng.standard_normal(d).astype(np.float32)
    params_mv = params_s3.copy()
    for step in range(5):
        grads = rng.standard_normal((workers, d)).astype(np.float32)
        grads[:, ::7] = 0  # zeros vote 0
        grads[1, 1::5] = -grads[0, 1::5]  # ties between workers
        _, down = exchange(s3[1:], s3[0], grads, step)
        apply(s3[0], 0, params_s3, down, step)
        # signum-mv's own exchange
        _, mv_down = exchange(mv[1:], mv[0], grads, step)
        apply(mv[0], 0, params_mv, mv_down, step)
        np.testing.assert_array_equal(direction_of(down), direction_of(mv_down))
    assert params_s3.tobytes() == params_mv.tobytes()


def test_segments_get_their_own_k_and_positions_stay_sorted():
    segments = [10, 3, 20]
    alg = algorithm(33, 2, segments=segments, sparsity=0.2, residual=0.0)
    assert alg.ks == [2, 1, 4]
    grad = np.arange(1, 34, dtype=np.float32) * np.where(np.arange(33) % 2, -1, 1)
    msg = uplink_buffer(alg, 1)
    alg.worker_step(context(alg, 1), grad, msg)
    _, values = codecs.decode_message(msg.wire.tobytes())
    nz = np.flatnonzero(values)
    np.testing.assert_array_equal(nz, [8, 9, 12, 29, 30, 31, 32])
    np.testing.assert_array_equal(values[nz], np.sign(grad[nz]))


def test_k_per_worker_auto_is_c_d_over_m():
    assert k_by_votes([1000, 10], 1.0, 4, "s3gd-mv") == [250, 3]
    assert k_by_votes([1000], 2.0, 8, "s3gd-mv") == [250]
    with pytest.raises(ConfigError, match="s3gd-mv: --votes-per-coordinate 6.0 over 4 "
                                          "workers asks K = 1500 entries of a tensor of 1000"):
        k_by_votes([1000], 6.0, 4, "s3gd-mv")


def test_a_message_with_more_entries_than_the_run_allows_is_refused():
    small = algorithm(100, 2, sparsity=0.05, residual=0.0)
    big = algorithm(100, 2, sparsity=0.5, residual=0.0)
    msg = uplink_buffer(big, 1)
    big.worker_step(context(big, 1), np.arange(1, 101, dtype=np.float32), msg)
    up = Uplinks(3, HEADER_SIZE + codecs.SPARSE_SIGN.max_body_length(100))
    for rank in (1, 2):
        receive(up, rank, msg)
    with pytest.raises(WireFormatError, match="uplink message from rank 1 at step 0: "
                                              "sparse-sign body is corrupt: it holds more"):
        small.server_step(context(small, 0), up, downlink_buffer(small))


@pytest.mark.parametrize("settings, pattern", [
    (dict(sparsity=0.0), r"sparsity must be in \(0, 1\]"),
    (dict(sparsity=1.5), r"sparsity must be in \(0, 1\]"),
    (dict(residual=2.0), r"residual \(rho\) must be in \[0, 1\]"),
    (dict(k_per_worker="7"), "only 'auto' is understood"),
    (dict(selection="approx"), "unknown selection 'approx'"),
    (dict(votes_per_coordinate=-1.0), "votes-per-coordinate must be > 0"),
])
def test_bad_settings_are_named(settings, pattern):
    with pytest.raises(ConfigError, match=pattern):
        TrainConfig(algorithm="s3gd-mv", **settings).resolved()


def test_cuda_is_accepted():
    """The worker step has a device-side twin (tests/algorithms/test_on_device.py); a missing
    GPU or CuPy is refused when the device is selected (tests/comm/test_device.py)."""
    assert algorithm(10, 2, device="cuda").config.device == "cuda"
