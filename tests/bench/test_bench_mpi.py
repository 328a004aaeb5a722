"""The benchmark drivers in-process on every rank (pytest-mpi; no extra launches)."""

import math

import numpy as np
import pytest


@pytest.mark.mpi(min_size=3)
def test_exchange_run_reports_every_registered_algorithm(comm):
    from hpcgrad.bench import exchange
    out = exchange.run(comm, 5001, warmup=1, repeat=2, micro_repeat=1)
    if comm.Get_rank() != 0:
        assert out is None
        return
    assert exchange.BASELINE in out["ratio_vs_allreduce"]
    for name, ratio in out["ratio_vs_allreduce"].items():
        assert math.isfinite(ratio) and ratio > 0, name
    assert out["micro"]["vote_workers"] == comm.Get_size() - 1


@pytest.mark.mpi(min_size=3)
def test_overhead_measure(comm, tmp_path):
    from hpcgrad.bench import overhead
    tmp = comm.bcast(str(tmp_path), root=0)
    out = overhead.measure(comm, "signum-mv", 10, 4, tmp, pairs=1)
    if comm.Get_rank() == 0:
        assert len(out["per_rank"]) == comm.Get_size()
        assert math.isfinite(out["overhead_ms_per_step"])


@pytest.mark.mpi(min_size=3)
def test_bucketed_overlap_votes_the_same_bits(comm):
    from hpcgrad.bench import overlap
    from hpcgrad.kernels import cpu
    from hpcgrad.wire import round_up
    d = 10_007
    message = np.zeros(round_up((d + 7) // 8), dtype=np.uint8)
    cpu.sign_pack(np.random.default_rng(comm.Get_rank()).standard_normal(d, dtype=np.float32),
                  message)
    results = [overlap._run_buckets(comm, message, d, overlap._buckets(message.size, b),
                                    repeat=1, warmup=0)[1] for b in (1, 3, 7)]
    # rank 0 voted, the workers received the broadcast votes: the same bits every way
    assert all(np.array_equal(results[0], r) for r in results[1:])
