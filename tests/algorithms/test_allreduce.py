"""``allreduce``, the data-parallel baseline (hpcgrad/algorithms/allreduce.py).

Without MPI (tests/algorithms/without_mpi.py sums the ranks' buffers as MPI_Allreduce would):
each worker contributes its raw fp32 gradient, rank 0 zeros, and every rank takes PyTorch's
momentum SGD step on the sum divided by the number of workers.  Under mpiexec (marked
``mpi``): ``runtime.train`` keeps every replica bit-identical, logs 4d bytes each way, and
ends close to ``fp32-ps`` from the same seed.

Run the MPI part with: mpiexec -n N python -m mpi4py -m pytest --with-mpi -m mpi tests/algorithms
"""

import hashlib

import numpy as np
import pytest

from baselines import D, SEGMENTS, TorchSGD, gradients, train
from hpcgrad.algorithms import create
from hpcgrad.training.config import TrainConfig
from without_mpi import iteration


def ranks_of(workers, **settings):
    config = TrainConfig(algorithm="allreduce", **settings).resolved()
    return [create(config, D, workers, SEGMENTS) for _ in range(workers + 1)]


@pytest.mark.parametrize("workers", [1, 2, 4])
@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_allreduce_is_momentum_sgd_on_the_mean_gradient(workers, weight_decay):
    lr, momentum = 0.05, 0.9
    ranks = ranks_of(workers, lr=lr, momentum=momentum, weight_decay=weight_decay)
    assert ranks[0].topology == "allreduce"
    start = np.random.default_rng(2).standard_normal(D).astype(np.float32)
    params = [start.copy() for _ in ranks]
    reference = TorchSGD(start, lr, momentum, weight_decay)
    for step in range(6):
        grads = gradients(workers, step)
        sends, total = iteration(ranks, params, grads, step)
        assert not sends[0].any()  # rank 0 computes no gradient: it adds zeros
        for send, grad in zip(sends[1:], grads):
            assert send.tobytes() == grad.tobytes()  # the raw fp32 gradient, no header
        expected = reference.step(np.mean(np.array(grads, np.float64), axis=0))
        for p in params:
            np.testing.assert_array_equal(p, params[0])  # rank 0 keeps a replica too
        np.testing.assert_allclose(params[0], expected, rtol=1e-5, atol=1e-6)


def test_the_sum_is_divided_by_the_workers_not_the_ranks():
    """Rank 0 takes part in the Allreduce (with zeros) but is not a worker: with M workers
    sending the same gradient g, the step is the one of gradient g, not of g * M / (M + 1)."""
    workers = 3
    ranks = ranks_of(workers, lr=1.0, momentum=0.0, weight_decay=0.0)
    g = np.linspace(-1, 1, D, dtype=np.float32)
    params = [np.zeros(D, np.float32) for _ in ranks]
    iteration(ranks, params, [g] * workers)
    np.testing.assert_array_equal(params[0], -(g * np.float32(3)) / np.float32(3))


# ------------------------------------------------------------------------------- MPI


@pytest.mark.mpi(min_size=3)
def test_training_keeps_every_replica_bit_identical(comm, mpi_tmp_path):
    summary, initial, final = train(comm, mpi_tmp_path, "allreduce")
    assert len(set(comm.allgather(hashlib.sha256(final.tobytes()).hexdigest()))) == 1
    assert not np.array_equal(final, comm.bcast(initial, root=0))  # it trained
    if comm.Get_rank() == 0:
        d = final.size
        assert summary.workers == comm.Get_size() - 1
        # the Allreduce buffer, 4d bytes each way per step: no header (docs/log-format.md)
        assert summary.bytes_up_per_worker == summary.bytes_down == 20 * 4 * d
    else:
        assert summary is None


@pytest.mark.mpi(min_size=3)
def test_allreduce_ends_close_to_fp32_ps_from_the_same_seed(comm, mpi_tmp_path):
    """Same seed, data shards, initial parameters and momentum SGD: the two differ only in
    how the M gradients are summed.  fp32-ps's server adds them in rank order; MPI_Allreduce
    adds in an order of its own choosing (a tree or recursive halving, rank 0's zeros
    included), and float32 addition is not associative, so the mean may differ in its last
    bits and the parameters drift apart by rounding, not by a different algorithm.  (With
    two workers the two sums are one commutative addition and agree bit for bit.)"""
    _, initial, fp32 = train(comm, mpi_tmp_path, "fp32-ps", seed=3)
    _, initial_ar, ar = train(comm, mpi_tmp_path, "allreduce", seed=3)
    assert np.array_equal(comm.bcast(initial, root=0), comm.bcast(initial_ar, root=0))
    moved = np.abs(fp32 - comm.bcast(initial, root=0)).max()
    assert moved > 1e-3  # both trained, far beyond the tolerance below
    # measured at 5 ranks after 20 steps: at most 6e-8 apart, on parameters of order 0.1
    np.testing.assert_allclose(ar, fp32, rtol=1e-4, atol=1e-6)
    if comm.Get_size() == 3:
        np.testing.assert_array_equal(ar, fp32)
