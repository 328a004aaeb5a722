"""Learning-rate schedules (hpcgrad/training/schedule.py), their settings, and Algorithm.set_lr."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from hpcgrad.training import schedule
from hpcgrad.algorithms import REGISTRY, create
from hpcgrad.training.config import TrainConfig
from hpcgrad.errors import ConfigError
from hpcgrad.training.runtime import progress_line

sys.path.insert(0, str(Path(__file__).parents[1] / "algorithms"))
from without_mpi import apply, context, exchange  # noqa: E402


def lrs(text="constant", warmup=0, lr=0.1, iterations=100):
    s = schedule.from_config(TrainConfig(lr=lr, iterations=iterations, lr_schedule=text,
                                         warmup=warmup).resolved())
    return s, np.array([s.lr_at(t) for t in range(iterations)])


def test_constant_is_the_base_lr_and_is_flagged_constant():
    s, values = lrs()
    assert s.is_constant and (values == 0.1).all()
    assert not lrs(warmup=5)[0].is_constant
    assert not lrs("step:10:0.5")[0].is_constant


def test_step_multiplies_by_gamma_every_every_steps():
    _, values = lrs("step:30:0.5")
    np.testing.assert_allclose(values[[0, 29, 30, 59, 60, 99]],
                               [0.1, 0.1, 0.05, 0.05, 0.025, 0.0125])


def test_cosine_falls_from_lr_to_zero_or_to_the_floor():
    _, values = lrs("cosine")
    assert values[0] == pytest.approx(0.1)
    assert np.all(np.diff(values) < 0)
    assert values[50] == pytest.approx(0.05)
    assert 0 < values[-1] < 1e-4  # reaches 0 at t = T, one step after the last
    _, floored = lrs("cosine:0.2")
    assert floored[50] == pytest.approx(0.1 * (0.2 + 0.8 * 0.5))
    assert floored[-1] == pytest.approx(0.02, rel=1e-3) and floored.min() > 0.02


def test_warmup_is_linear_from_lr_over_n_then_the_schedule():
    _, values = lrs(warmup=4)
    np.testing.assert_allclose(values[:6], [0.025, 0.05, 0.075, 0.1, 0.1, 0.1])
    _, cos = lrs("cosine", warmup=20)
    np.testing.assert_allclose(cos[:20], 0.1 * np.arange(1, 21) / 20)
    assert cos[20] == pytest.approx(0.1)  # the decay starts after the warm-up
    assert cos[60] == pytest.approx(0.05)  # half-way through the 80 steps after it
    _, stepped = lrs("step:10:0.5", warmup=4)  # composes: warm-up times the step decay
    assert stepped[3] == pytest.approx(0.1) and stepped[10] == pytest.approx(0.05)


def test_the_lr_is_a_pure_function_of_the_step():
    """A resumed run asks for step t first: it must get what a run from 0 got."""
    s, values = lrs("cosine:0.1", warmup=7)
    again = [s.lr_at(t) for t in reversed(range(100))][::-1]
    assert list(values) == again
    resumed = schedule.from_config(TrainConfig(lr=0.1, iterations=100, lr_schedule="cosine:0.1",
                                               warmup=7).resolved())
    assert resumed.lr_at(63) == values[63]


@pytest.mark.parametrize("text, words", [
    ("linear", "unknown schedule 'linear'"),
    ("constant:1", "constant takes no parameters"),
    ("step:10", "step needs EVERY and GAMMA"),
    ("step:0:0.5", "EVERY must be an integer >= 1"),
    ("step:x:0.5", "EVERY must be an integer >= 1"),
    ("step:10:1.5", "GAMMA must be in (0, 1]"),
    ("step:10:nan", "GAMMA must be in (0, 1]"),
    ("step:10:a", "GAMMA must be a number"),
    ("cosine:1", "FLOOR must be in [0, 1)"),
    ("cosine:0.1:2", "at most one parameter"),
])
def test_bad_schedules_say_the_syntax(text, words):
    with pytest.raises(ConfigError) as err:
        TrainConfig(lr_schedule=text).resolved()
    assert words in str(err.value) and "step:EVERY:GAMMA" in str(err.value)


@pytest.mark.parametrize("settings, words", [
    ({"warmup": -1}, "warmup must be an integer >= 0"),
    ({"warmup": 2.5}, "warmup must be an integer >= 0"),
    ({"warmup": 11, "iterations": 10}, "warmup (11 steps) must be at most the iterations"),
    ({"lr_schedule": 3}, "lr-schedule must be a string"),
])
def test_bad_warmup_and_types_are_named(settings, words):
    with pytest.raises(ConfigError) as err:
        TrainConfig(**settings).resolved()
    assert words in str(err.value)


# ------------------------------------------------------------------------- set_lr


def _apply_once(name, lr, set_to=None, d=40, workers=3):
    """One exchange on fixed gradients; the server's replica after apply (float32)."""
    reads_sparsity = "sparsity" in {option.name for option in REGISTRY[name].options}
    cfg = TrainConfig(algorithm=name, lr=lr, **({"sparsity": 0.25} if reads_sparsity else {})
                      ).resolved()
    algs = [create(cfg, d, workers) for _ in range(workers + 1)]
    if set_to is not None:
        for alg in algs:
            alg.set_lr(set_to)
    rng = np.random.default_rng(3)
    grads = [rng.standard_normal(d).astype(np.float32) for _ in range(workers)]
    params = np.linspace(-1, 1, d, dtype=np.float32)
    if algs[0].topology == "allreduce":
        total = np.sum(grads, axis=0, dtype=np.float32)
        ctx = context(algs[0], 0, params=params)
        algs[0].apply(ctx, algs[0].decode(ctx, total))
        return params
    _, down = exchange(algs[1:], algs[0], grads)
    apply(algs[0], 0, params, down)
    return params


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_set_lr_gives_what_constructing_with_that_lr_gives(name):
    """set_lr(x) on an algorithm built with another lr: bit-identical to one built with x."""
    built = _apply_once(name, 0.004)
    switched = _apply_once(name, 0.05, set_to=0.004)
    np.testing.assert_array_equal(switched, built)
    assert not np.array_equal(_apply_once(name, 0.05), built)  # the lr matters at all


def test_set_lr_stores_float32():
    alg = create(TrainConfig(algorithm="signum-mv").resolved(), 10, 2)
    alg.set_lr(0.1)
    assert alg.lr.dtype == np.float32 and alg.lr == np.float32(0.1)
    sgd = create(TrainConfig(algorithm="fp32-ps").resolved(), 10, 2)
    sgd.set_lr(1 / 3)
    assert sgd.sgd.lr.dtype == np.float32 and sgd.sgd.lr == np.float32(1 / 3)


def test_set_lr_refuses_an_algorithm_it_cannot_reach():
    from hpcgrad.algorithms.base import Algorithm

    class Odd(Algorithm):
        name = "odd"

    with pytest.raises(NotImplementedError, match="odd keeps its learning rate"):
        Odd(TrainConfig().resolved(), 4, 2).set_lr(0.1)


def test_progress_line_shows_throughput_and_bytes_both_ways():
    line = progress_line(50, 300, 1.25, 0.5, 0.0125, 50, 2.0, 128, 3.5e6, 7e6)
    assert "step     50/300" in line and "lr 0.0125" in line
    assert "up     3.500 MB/worker" in line and "down     7.000 MB" in line
    assert "25.0 steps/s" in line and "3200 examples/s" in line
    assert "lr" not in progress_line(1, 2, 1.0, 0.5, None, 1, 1.0, 4, 0, 0)
    assert "inf steps/s" in progress_line(1, 2, 1.0, 0.5, None, 1, 0.0, 4, 0, 0)


# ------------------------------------------------------------------------- in a run


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("algorithm", ["signum-mv", "fp32-ps"])
def test_a_scheduled_run_logs_the_lr_of_every_step(comm, mpi_tmp_path, algorithm):
    import h5py

    from hpcgrad.training import runtime
    from hpcgrad import workloads

    log = str(mpi_tmp_path / f"schedule-{algorithm}.h5")
    config = TrainConfig(algorithm=algorithm, iterations=12, lr_schedule="step:4:0.5",
                         warmup=3, eval_every=0, flush_every=5, quiet=True, log=log).resolved()
    data = workloads.synthetic(config.seed, train=1024, test=128)
    model = workloads.mlp(data.num_features, 16, data.num_classes)
    runtime.train(config, comm, model=model, data=data)  # checks the replicas at the end
    if comm.Get_rank() == 0:
        s = schedule.from_config(config)
        expected = np.array([np.float32(s.lr_at(t)) for t in range(12)], dtype=np.float64)
        with h5py.File(log, "r") as f:
            np.testing.assert_array_equal(f["steps/lr"][:], expected)
            assert json.loads(f.attrs["config"])["lr_schedule"] == "step:4:0.5"
        assert expected[0] == np.float32(config.lr / 3) and expected[4] == np.float32(config.lr / 2)


@pytest.mark.mpi(min_size=2)
def test_a_constant_run_logs_its_constant_lr(comm, mpi_tmp_path):
    import h5py

    from hpcgrad.training import runtime
    from hpcgrad import workloads

    log = str(mpi_tmp_path / "constant.h5")
    config = TrainConfig(iterations=4, eval_every=0, quiet=True, log=log).resolved()
    data = workloads.synthetic(config.seed, train=1024, test=128)
    runtime.train(config, comm, model=workloads.mlp(data.num_features, 16, data.num_classes),
                  data=data)
    if comm.Get_rank() == 0:
        with h5py.File(log, "r") as f:
            assert (f["steps/lr"][:] == np.float32(config.lr)).all()
