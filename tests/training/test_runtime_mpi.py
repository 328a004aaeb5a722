"""Multi-rank tests of the runtime, under a real mpiexec (pytest-mpi).  The transport's own
tests (gather, broadcast, header checks) are in tests/comm/test_transport.py.

Run with: mpiexec -n N python -m mpi4py -m pytest --with-mpi -m mpi tests
"""

import hashlib

import numpy as np
import pytest

from hpcgrad.training import runtime
from hpcgrad import workloads
from hpcgrad.training.config import TrainConfig
from hpcgrad.wire import HEADER_SIZE

pytestmark = pytest.mark.mpi(min_size=3)


@pytest.mark.parametrize("algorithm, tie", [("signum-mv", "positive"), ("signum-mv", "zero"),
                                            ("signum-mv", "random"), ("s3gd-mv", "positive"),
                                            ("topk", "positive"),
                                            ("qsgd", "positive"), ("dq-sgd", "positive")])
def test_training_keeps_every_replica_bit_identical(comm, mpi_tmp_path, algorithm, tie):
    """Replicas end bit-identical and the logged bytes are what each format says (for fp32-ps,
    fp16-ps and allreduce: tests/algorithms/test_dense_ps.py and test_allreduce.py)."""
    # --tie is signum-mv's (s3gd-mv's vote always leaves a tie at 0); others refuse it.
    own = {"tie": tie} if algorithm == "signum-mv" else {}
    config = TrainConfig(algorithm=algorithm, iterations=30, eval_every=0, flush_every=7,
                         quiet=True, log=str(mpi_tmp_path / f"{algorithm}-{tie}.h5"),
                         **own).resolved()
    data = workloads.synthetic(config.seed, train=2048, test=256)
    model = workloads.mlp(data.num_features, 32, data.num_classes)
    initial = hashlib.sha256(b"".join(p.detach().numpy().tobytes()
                                      for p in model.parameters())).hexdigest()
    summary = runtime.train(config, comm, model=model, data=data)
    params = b"".join(p.detach().numpy().tobytes() for p in model.parameters())
    digests = comm.allgather(hashlib.sha256(params).hexdigest())
    assert len(set(digests)) == 1
    assert digests[0] != initial  # it trained
    if comm.Get_rank() == 0:
        assert summary.iterations == 30 and np.isfinite(summary.final_loss)
        workers, d = comm.Get_size() - 1, summary.num_params
        if algorithm == "s3gd-mv":  # variable lengths: checked against the log elsewhere
            assert 0 < summary.bytes_up_per_worker < 30 * (HEADER_SIZE + (d + 7) // 8)
            return
        if algorithm == "topk":  # K fp32 values + coded positions, a mean over |U| <= MK
            assert 0 < summary.bytes_up_per_worker < 30 * (HEADER_SIZE + 5 * d // 50)
            assert 1 <= summary.union_over_k <= workers
            return
        if algorithm in ("qsgd", "dq-sgd"):  # b bits per coordinate + one norm per tensor
            tensors = len(list(model.parameters()))
            widths = (4, 4) if algorithm == "qsgd" else (2, 8)
            low, high = (30 * (HEADER_SIZE + 4 * tensors + sum(
                -(-b * p.numel() // 8) for p in model.parameters())) for b in widths)
            assert low <= summary.bytes_up_per_worker <= high
            assert summary.bytes_down == 30 * (HEADER_SIZE + 4 * d)
            return
        expected_up = HEADER_SIZE + (d + 7) // 8  # signum-mv's sign1 body
        if tie == "zero":
            expected_up = HEADER_SIZE + 2 * ((d + 7) // 8) + (-((d + 7) // 8)) % 8
        assert summary.bytes_up_per_worker == 30 * expected_up
        assert workers == summary.workers
    else:
        assert summary is None


@pytest.mark.parametrize("rule", ["local", "union-boost", "aggregate-hint", "shared-random",
                                  "leader"])
def test_every_topk_rule_trains_and_logs_the_union(comm, mpi_tmp_path, rule):
    import h5py
    log = str(mpi_tmp_path / f"topk-{rule}.h5")
    config = TrainConfig(algorithm="topk", topk_selection=rule, partition="classes:2",
                         iterations=12, eval_every=0, flush_every=5, quiet=True,
                         log=log).resolved()
    data = workloads.synthetic(config.seed, train=2048, test=256)
    model = workloads.mlp(data.num_features, 32, data.num_classes)
    summary = runtime.train(config, comm, model=model, data=data)
    params = b"".join(p.detach().numpy().tobytes() for p in model.parameters())
    assert len(set(comm.allgather(hashlib.sha256(params).hexdigest()))) == 1
    if comm.Get_rank() == 0:
        workers = comm.Get_size() - 1
        with h5py.File(log, "r") as f:
            k = int(f.attrs["k"])
            union = f["steps/union_size"][...]
            nnz_up = f["steps/nnz_up"][...]
            assert union.shape == (12,) and nnz_up.shape == (12, workers)
            np.testing.assert_array_equal(union, f["steps/nnz_down"][...])
        assert np.all(union >= nnz_up.max(1)) and np.all(union <= nnz_up.sum(1))
        if rule == "shared-random":
            assert np.all(union == k)
        if rule == "leader":
            assert np.all(union[1:] <= 2 * k)
        assert summary.union_over_k == pytest.approx(union.mean() / k)
