"""``fp32-ps`` and ``fp16-ps`` (hpcgrad/algorithms/dense_ps.py).

Without MPI (tests/algorithms/without_mpi.py runs each step on every rank in one process):
the wire carries the gradients and their mean in the codec's precision, byte for byte, and
the parameters follow PyTorch's momentum SGD on the mean gradient.  Under mpiexec (marked
``mpi``): ``runtime.train`` keeps every replica bit-identical and logs the bytes the format
says.

Run the MPI part with: mpiexec -n N python -m mpi4py -m pytest --with-mpi -m mpi tests/algorithms
"""

import hashlib

import numpy as np
import pytest

from baselines import D, SEGMENTS, TorchSGD, gradients, train
from hpcgrad.algorithms import create
from hpcgrad.training.config import TrainConfig
from hpcgrad.wire import HEADER_SIZE, Header, codecs, read_header
from without_mpi import iteration


def ranks_of(name, workers, **settings):
    config = TrainConfig(algorithm=name, **settings).resolved()
    return [create(config, D, workers, SEGMENTS) for _ in range(workers + 1)]


def rank_order_mean(rows):
    """The server's mean: float32 sum in rank order, then one float32 division."""
    total = rows[0].astype(np.float32).copy()
    for row in rows[1:]:
        total += row.astype(np.float32)
    return total / np.float32(len(rows))


@pytest.mark.parametrize("workers", [1, 2, 4])
@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_fp32_ps_is_momentum_sgd_on_the_mean_gradient(workers, weight_decay):
    lr, momentum = 0.05, 0.9
    ranks = ranks_of("fp32-ps", workers, lr=lr, momentum=momentum, weight_decay=weight_decay)
    start = np.random.default_rng(1).standard_normal(D).astype(np.float32)
    params = [start.copy() for _ in ranks]
    reference = TorchSGD(start, lr, momentum, weight_decay)
    for step in range(6):
        grads = gradients(workers, step)
        up, down = iteration(ranks, params, grads, step)
        for w, grad in enumerate(grads, start=1):  # the gradient itself goes up
            assert read_header(up.message(w)) == Header(codecs.FP32.id, D, 4 * D, step, w)
            assert up.message(w)[HEADER_SIZE:].tobytes() == grad.astype("<f4").tobytes()
        assert read_header(down.wire) == Header(codecs.FP32.id, D, 4 * D, step, 0)
        assert down.body.tobytes() == rank_order_mean(grads).astype("<f4").tobytes()
        expected = reference.step(np.mean(np.array(grads, np.float64), axis=0))
        for p in params:
            np.testing.assert_array_equal(p, params[0])  # every replica, server included
        # float32 on both sides, rounded in different orders (torch's kernels may fuse)
        np.testing.assert_allclose(params[0], expected, rtol=1e-5, atol=1e-6)


def test_fp16_ps_rounds_the_uplink_and_the_mean_to_fp16():
    workers, lr, momentum = 3, 0.1, 0.9
    ranks = ranks_of("fp16-ps", workers, lr=lr, momentum=momentum, weight_decay=0.0)
    start = np.zeros(D, np.float32)
    params = [start.copy() for _ in ranks]
    reference = TorchSGD(start, lr, momentum, 0.0)
    for step in range(4):
        grads = gradients(workers, step, scale=3.0)
        grads[0][:2] = [1e-8, -1 / 3]  # below fp16's smallest subnormal; inexact in fp16
        up, down = iteration(ranks, params, grads, step)
        halves = [g.astype(np.float16) for g in grads]  # NumPy's round-to-nearest-even
        for w, half in enumerate(halves, start=1):
            assert read_header(up.message(w)) == Header(codecs.FP16.id, D, 2 * D, step, w)
            assert up.message(w)[HEADER_SIZE:].tobytes() == half.astype("<f2").tobytes()
        mean = rank_order_mean(halves).astype(np.float16)  # fp32 accumulation, fp16 result
        assert read_header(down.wire) == Header(codecs.FP16.id, D, 2 * D, step, 0)
        assert down.body.tobytes() == mean.astype("<f2").tobytes()
        expected = reference.step(mean.astype(np.float32))  # the step uses the fp16 mean
        for p in params:
            np.testing.assert_array_equal(p, params[0])
        np.testing.assert_allclose(params[0], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_fp16_ps_sends_inf_for_a_gradient_beyond_fp16s_range():
    """docs/wire-format.md §4.2: values too large for binary16 become +-inf (the runtime's
    finiteness check sees the fp32 gradient, before this rounding)."""
    ranks = ranks_of("fp16-ps", 2)
    grads = gradients(2, 0)
    grads[0][:2] = [70000.0, -65520.0]  # above 65504; the first value that rounds to -inf
    up, down = iteration(ranks, [np.zeros(D, np.float32) for _ in ranks], grads)
    sent = up.message(1)[HEADER_SIZE:].view("<f2")
    assert sent[0] == np.inf and sent[1] == -np.inf and np.isfinite(sent[2:]).all()
    assert down.body.view("<f2")[0] == np.inf


def test_fp16_ps_sends_half_the_bytes_of_fp32_ps():
    fp32, fp16 = ranks_of("fp32-ps", 2), ranks_of("fp16-ps", 2)
    params = [np.zeros(D, np.float32) for _ in range(3)]
    up32, down32 = iteration(fp32, [p.copy() for p in params], gradients(2, 0))
    up16, down16 = iteration(fp16, [p.copy() for p in params], gradients(2, 0))
    assert (up32.lengths[1:] == HEADER_SIZE + 4 * D).all()
    assert (up16.lengths[1:] == HEADER_SIZE + 2 * D).all()
    assert (down32.length, down16.length) == (HEADER_SIZE + 4 * D, HEADER_SIZE + 2 * D)


# ------------------------------------------------------------------------------- MPI


@pytest.mark.mpi(min_size=3)
@pytest.mark.parametrize("algorithm, width", [("fp32-ps", 4), ("fp16-ps", 2)])
def test_training_keeps_every_replica_bit_identical(comm, mpi_tmp_path, algorithm, width):
    summary, initial, final = train(comm, mpi_tmp_path, algorithm)
    digests = comm.allgather(hashlib.sha256(final.tobytes()).hexdigest())
    assert len(set(digests)) == 1
    assert not np.array_equal(final, comm.bcast(initial, root=0))  # it trained
    if comm.Get_rank() == 0:
        d = final.size
        assert summary.workers == comm.Get_size() - 1 and summary.num_params == d
        assert summary.bytes_up_per_worker == 20 * (HEADER_SIZE + width * d)
        assert summary.bytes_down == 20 * (HEADER_SIZE + width * d)
        assert np.isfinite(summary.final_loss)
    else:
        assert summary is None
