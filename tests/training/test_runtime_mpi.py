"""Multi-rank tests of the transport and the runtime, under a real mpiexec (pytest-mpi).

Run with: mpiexec -n N python -m mpi4py -m pytest --with-mpi -m mpi tests
"""

import hashlib

import numpy as np
import pytest
from mpi4py import MPI

from hpcgrad.training import runtime
from hpcgrad import workloads
from hpcgrad.training.config import TrainConfig
from hpcgrad.errors import WireFormatError
from hpcgrad.comm.transport import ParameterServer
from hpcgrad.wire import HEADER_SIZE, Header

pytestmark = pytest.mark.mpi(min_size=3)


def test_gatherv_lands_each_worker_in_an_aligned_slot_and_bcast_reaches_all(comm):
    rank, size = comm.Get_rank(), comm.Get_size()
    body = 13  # deliberately not a multiple of 8
    ps = ParameterServer(comm, Header(3, 100, body, 0, 0), Header(3, 100, body, 0, 0))
    if rank:
        ps.uplink.stamp(5)
        ps.uplink.body[:] = rank
    ps.gather(5)
    if rank == 0:
        assert ps.uplinks.slot % 8 == 0
        for worker in range(1, size):
            assert (ps.uplinks.rows[worker - 1, :body] == worker).all()
            assert not ps.uplinks.rows[worker - 1, body:].any()  # padding stays zero
        ps.downlink.stamp(5)
        ps.downlink.body[:] = 200
    ps.broadcast(5)
    assert (ps.downlink.body == 200).all()


def test_a_stale_or_misrouted_uplink_is_named(comm):
    rank = comm.Get_rank()
    ps = ParameterServer(comm, Header(3, 64, 8, 0, 0), Header(3, 64, 8, 0, 0))
    if rank:
        ps.uplink.stamp(7 if rank == 1 else 8)  # rank 1 is one step behind
    if rank == 0:
        with pytest.raises(WireFormatError, match="uplink message from rank 1 at step 8: "
                                                  "header step is 7, expected 8"):
            ps.gather(8)
    else:
        ps.gather(8)


def test_variable_length_messages_move_exactly_their_announced_bytes(comm):
    """Headers first, then bodies of the announced lengths, into aligned slots."""
    rank, size = comm.Get_rank(), comm.Get_size()
    capacity = 37
    ps = ParameterServer(comm, Header(5, 100, capacity, 0, 0), Header(5, 100, capacity, 0, 0),
                         variable=True, uplink_codecs=(5,), downlink_codecs=(5, 6))
    if rank:
        ps.uplink.stamp(3)
        sent = ps.uplink.write(5, rank, 2 * rank + 1)  # 3, 5, 7, ... bytes
        assert (sent.codec, sent.flags, sent.body_length, sent.step, sent.sender) == \
            (5, rank, 2 * rank + 1, 3, rank)
        ps.uplink.body[:] = rank
    ps.gather(3)
    if rank == 0:
        up = ps.uplinks
        for worker in range(1, size):
            n = 2 * worker + 1
            assert up.lengths[worker] == HEADER_SIZE + n
            assert up.header(worker - 1).flags == worker  # parsed on receipt
            assert (up.rows[worker - 1, :n] == worker).all()
            assert not up.rows[worker - 1, n:].any()  # nothing past the announced length
        ps.downlink.stamp(3)
        ps.downlink.write(6, 0, 11)
        ps.downlink.body[:] = 200
    ps.broadcast(3)
    assert ps.downlink.length == HEADER_SIZE + 11 and (ps.downlink.body == 200).all()
    assert ps.downlink.header.codec == 6 and ps.downlink.header.body_length == 11


def test_a_variable_length_header_over_capacity_is_refused(comm):
    rank = comm.Get_rank()
    ps = ParameterServer(comm, Header(5, 100, 16, 0, 0), Header(5, 100, 16, 0, 0),
                         variable=True)
    if rank:
        ps.uplink.stamp(0)
        ps.uplink.write(5, 0, 16)
        if rank == 1:  # corrupt the announced length after the capacity check
            ps.uplink.raw[16:24] = np.frombuffer(np.uint64(17).tobytes(), np.uint8)
    if rank == 0:
        with pytest.raises(WireFormatError, match="rank 1 at step 0: header body_length is "
                                                  "17, more than"):
            ps.gather(0)
    else:
        comm.Gatherv([ps.uplink.wire[:HEADER_SIZE], MPI.BYTE], None, root=0)  # the header phase only: rank 0 stops after it


@pytest.mark.parametrize("algorithm, tie", [("signum-mv", "positive"), ("signum-mv", "zero"),
                                            ("signum-mv", "random"), ("s3gd-mv", "zero"),
                                            ("topk", "positive"),
                                            ("qsgd", "positive"), ("dq-sgd", "positive"),
                                            ("fp32-ps", "positive"),
                                            ("fp16-ps", "positive"), ("allreduce", "positive")])
def test_training_keeps_every_replica_bit_identical(comm, mpi_tmp_path, algorithm, tie):
    config = TrainConfig(algorithm=algorithm, tie=tie, iterations=30, eval_every=0, flush_every=7,
                         quiet=True, log=str(mpi_tmp_path / f"{algorithm}-{tie}.h5")).resolved()
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
        expected_up = {"signum-mv": HEADER_SIZE + (d + 7) // 8, "fp32-ps": HEADER_SIZE + 4 * d,
                       "fp16-ps": HEADER_SIZE + 2 * d, "allreduce": 4 * d}[algorithm]
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
