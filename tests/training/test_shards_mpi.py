"""``--servers S`` on a real multi-rank job: every algorithm at S = 2 against S = 1 with the
same M workers, both in this one job (``train(config, comm=...)`` on sub-communicators, in
process), on a tiny model whose first tensor a shard boundary cuts.

Bit-identical final parameters where the aggregation is coordinate-wise and the worker step
keeps no per-tensor statistic (signum-mv, fp32-ps, fp16-ps, ef-sgd with identity); the others
must train (replicas equal, loss finite and falling).  Rank 0's received bytes fall to its
shard's share.  Runs in the suite's mpi-3 and mpi-5 stages (M = 1 and M = 3 workers).
"""

import hashlib
import json

import h5py
import numpy as np
import pytest
import torch
from mpi4py import MPI

from hpcgrad import workloads
from hpcgrad.training import runtime
from hpcgrad.training.config import TrainConfig
from hpcgrad.wire import HEADER_SIZE

# Two in-process runs per test; the first test also compiles the kernels: on a busy 2-core
# machine that can pass pytest's 120 s default while nothing is wrong.
pytestmark = [pytest.mark.mpi(min_size=3), pytest.mark.timeout(300)]

ITERATIONS = 8

#: (algorithm, settings, bit-identical to one server?)
CASES = [
    ("signum-mv", {}, True),
    ("signum-mv", {"tie": "random", "momentum": 0.0}, True),
    ("signum-mv", {"tie": "zero", "adversaries": 1, "attack": "invert"}, True),
    ("fp32-ps", {}, True),
    ("fp16-ps", {"lr_schedule": "cosine", "warmup": 2}, True),
    ("ef-sgd", {"compressor": "identity"}, True),
    ("ef-sgd", {}, False),
    ("ef-sgd", {"compressor": "topk", "feedback": "step-ahead", "error_averaging": 3}, False),
    ("s3gd-mv", {"sparsity": 0.1}, False),
    ("topk", {"sparsity": 0.1}, False),
    ("qsgd", {}, False),
    ("dq-sgd", {}, False),
    ("terngrad", {}, False),
]

#: Sign methods move each coordinate by lr: larger than their defaults, to see the loss fall
#: in a few steps.
LR = {"signum-mv": 0.01, "s3gd-mv": 0.02}


def _run(comm, tmp, algorithm, settings, servers, name):
    config = TrainConfig(algorithm=algorithm, iterations=ITERATIONS, eval_every=0, flush_every=3,
                         quiet=True, servers=servers, log=str(tmp / name), lr=LR.get(algorithm),
                         **settings).resolved()
    data = workloads.synthetic(config.seed, train=1024, test=128)
    torch.manual_seed(1)
    model = workloads.mlp(data.num_features, 8, data.num_classes)
    before, _ = runtime.evaluate(model, data)  # the same initial model on every rank
    summary = runtime.train(config, comm, model=model, data=data)
    params = b"".join(p.detach().numpy().tobytes() for p in model.parameters())
    return before, summary, hashlib.sha256(params).hexdigest()


@pytest.mark.parametrize("algorithm, settings, identical", CASES,
                         ids=[f"{a}-{'-'.join(map(str, s.values())) or 'default'}"
                              for a, s, _ in CASES])
def test_sharded_servers_against_one(comm, mpi_tmp_path, algorithm, settings, identical):
    rank, size = comm.Get_rank(), comm.Get_size()
    # --tie random's coins decide only ties, which need an even M: 3 servers on 5 ranks (on
    # 3 ranks M = 1 whatever S, and no coin is ever used).
    servers = 3 if settings.get("tie") == "random" and size % 2 and size >= 5 else 2
    workers = size - servers
    # One server and the same M workers: the first M + 1 ranks (the others sit it out).
    one = comm.Split(0 if rank <= workers else MPI.UNDEFINED, rank)
    if one != MPI.COMM_NULL:
        _, _, single = _run(one, mpi_tmp_path, algorithm, settings, 1, "one.h5")
        one.Free()
    before, summary, sharded = _run(comm, mpi_tmp_path, algorithm, settings, servers, "two.h5")
    assert len(set(comm.allgather(sharded))) == 1  # every replica, both servers included
    single = comm.bcast(single if rank == 0 else None, root=0)
    if rank != 0:
        return
    with h5py.File(mpi_tmp_path / "one.h5", "r") as a, h5py.File(mpi_tmp_path / "two.h5",
                                                                   "r") as b:
        assert b.attrs["servers"] == servers and "servers" not in a.attrs
        assert b.attrs["roles"].startswith('["server 0", "server 1", ')
        assert b.attrs["roles"].count("worker") == workers
        assert b.attrs["num_workers"] == workers == a.attrs["num_workers"]
        up1, up2 = a["steps/bytes_up"][...], b["steps/bytes_up"][...]
        incast = b["steps/incast"][...]
        shards = json.loads(b.attrs["shards"])
        assert up2.shape == up1.shape == (ITERATIONS, workers)
        assert incast.shape == (ITERATIONS, servers)
        # what the workers sent is what the servers received, step by step
        np.testing.assert_array_equal(incast.sum(1), up2.sum(1))
        if identical:
            assert b["final_params_sha256"][()] == a["final_params_sha256"][()]
            assert sharded == single
        else:  # it trains: the test loss fell from the initial model's
            assert np.isfinite(b["steps/loss"][...]).all()
            assert summary.final_loss < before, (summary.final_loss, before)
        # rank 0 receives its shard's bodies, not everyone's: the shard's share of the
        # coordinates (headers apart; a per-piece norm moves it a little).  Sparse bodies:
        # K per piece, at least one entry per piece, which on this tiny model is most of K.
        assert (incast[:, 0] < up1.sum(1)).all()
        if not b.attrs["uplink_codec"].startswith("sparse"):
            headers = workers * HEADER_SIZE
            share = (incast[:, 0] - headers) / (up1.sum(1) - headers)
            coordinates = (shards[0][1] - shards[0][0]) / b.attrs["num_params"]
            assert np.all(np.abs(share / coordinates - 1) < 0.35), (share, coordinates)


def test_a_sharded_checkpoint_resumes_exactly_and_refuses_another_s(comm, mpi_tmp_path):
    """Every shard's state (ef-sgd's residuals, momentum) is saved as ``shard{s}.*``; resuming
    gives the uninterrupted run's parameters; resuming with one server is refused by name."""
    from hpcgrad.comm.agreement import SetupError
    ck = mpi_tmp_path / "ck"
    if comm.Get_rank() == 0:
        ck.mkdir()
    comm.Barrier()
    settings = {"checkpoint_every": 4, "checkpoint_dir": str(ck)}
    _, _, whole = _run(comm, mpi_tmp_path, "ef-sgd", settings, 2, "whole.h5")
    _, _, resumed = _run(comm, mpi_tmp_path, "ef-sgd", {"resume": str(ck / "step-00000004")},
                         2, "resumed.h5")
    assert resumed == whole
    with pytest.raises(SetupError, match="servers: checkpoint 2, now 1"):
        _run(comm, mpi_tmp_path, "ef-sgd", {"resume": str(ck)}, 1, "refused.h5")
