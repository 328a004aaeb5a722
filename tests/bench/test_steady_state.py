"""Steady-state exchange steps allocate no large arrays (issue 11, part 4; issue 19: every
registered algorithm, the benchmark's variants and every ef-sgd compressor).

Every rank builds the exchange training uses (``hpcgrad.training.exchange.create``) for d ~ 1M,
runs warm-up steps, then traces three more with ``tracemalloc`` (NumPy reports its
array allocations to it): the traced peak may not grow by more than 64 KiB on any rank.
"""

import tracemalloc

import numpy as np
import pytest

LIMIT = 64 * 1024
D = 1_000_003  # odd: the tail word and padding paths run too


def _steady_state_growth(comm, name, settings=None):
    from hpcgrad import algorithms
    from hpcgrad.training import exchange
    from hpcgrad.bench.exchange import config_for
    from hpcgrad.comm.device import Host
    from hpcgrad.training.exchange import PhaseClock

    rank = comm.Get_rank()
    if settings:  # an algorithm with settings other than the benchmark table's
        from hpcgrad.training.config import TrainConfig
        config = TrainConfig(algorithm=name, iterations=10, quiet=True, **settings).resolved()
    else:
        config = config_for(name, 10)
    alg = algorithms.create(config, D, comm.Get_size() - 1)
    grads = np.random.default_rng(rank).standard_normal(D, dtype=np.float32)
    params = np.zeros(D, dtype=np.float32)
    step_exchange = exchange.create(comm, alg, Host(), params)
    clock = PhaseClock(8)
    for step in range(3):
        step_exchange.begin(step)
        clock.start(step)
        step_exchange.step(grads, clock)
    tracemalloc.start(25)
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        snapshot_before = tracemalloc.take_snapshot()
        for step in range(3, 6):
            step_exchange.begin(step)
            clock.start(step)
            step_exchange.step(grads, clock)
        growth = tracemalloc.get_traced_memory()[1] - before
        where = ""
        if growth > LIMIT:
            stats = tracemalloc.take_snapshot().compare_to(snapshot_before, "traceback")
            where = "\n".join(str(s) + "\n" + "\n".join(s.traceback.format()) for s in stats[:3])
    finally:
        tracemalloc.stop()
    return growth, where


def _every_algorithm():
    from hpcgrad.algorithms import REGISTRY
    from hpcgrad.bench.exchange import VARIANTS
    return sorted(REGISTRY) + sorted(VARIANTS)


def _every_compressor():
    from hpcgrad.compression.compressors import COMPRESSORS
    return sorted(COMPRESSORS)


@pytest.mark.mpi(min_size=3)
@pytest.mark.parametrize("name", _every_algorithm())
def test_steady_state_steps_allocate_no_large_arrays(comm, name):
    growth, where = _steady_state_growth(comm, name)
    assert growth <= LIMIT, (f"rank {comm.Get_rank()}: {name} steps grew the traced peak by "
                             f"{growth} bytes\n{where}")


@pytest.mark.mpi(min_size=3)
@pytest.mark.parametrize("compressor", _every_compressor())
def test_every_ef_sgd_compressor_allocates_no_large_arrays(comm, compressor):
    settings = {"compressor": compressor}
    if compressor in ("topk", "randomk"):
        settings["sparsity"] = 0.01
    growth, where = _steady_state_growth(comm, "ef-sgd", settings)
    assert growth <= LIMIT, (f"rank {comm.Get_rank()}: ef-sgd --compressor {compressor} steps "
                             f"grew the traced peak by {growth} bytes\n{where}")
