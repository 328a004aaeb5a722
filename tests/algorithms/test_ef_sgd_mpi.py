"""ef-sgd and checkpoints under a real mpiexec (pytest-mpi): every feedback mode trains with
scaled sign and top-K; error averaging leaves the workers with equal residuals; a run resumed
from a checkpoint ends exactly where the uninterrupted run does.

Run with: mpiexec -n N python -m mpi4py -m pytest --with-mpi -m mpi tests
"""

import h5py
import numpy as np
import pytest

from hpcgrad.training import checkpoint, runtime
from hpcgrad import workloads
from hpcgrad.training.config import TrainConfig

pytestmark = pytest.mark.mpi(min_size=3)


def train(comm, log, **settings):
    config = TrainConfig(**{"iterations": 16, "eval_every": 0, "flush_every": 5, "quiet": True,
                            "hidden": 32, "log": str(log), **settings}).resolved()
    data = workloads.synthetic(config.seed, train=2048, test=256)
    return runtime.train(config, comm, data=data)


def steps(log):
    with h5py.File(log, "r") as f:
        return {name: f["steps"][name][...] for name in f["steps"] if not name.startswith("time")}


def final_digest(log):
    with h5py.File(log, "r") as f:
        return f["final_params_sha256"][()].decode()


@pytest.mark.parametrize("compressor", ["scaled-sign", "topk"])
@pytest.mark.parametrize("feedback, averaging", [("none", None), ("ef", None),
                                                 ("step-ahead", None), ("step-ahead", 4)])
def test_every_feedback_mode_trains(comm, mpi_tmp_path, compressor, feedback, averaging):
    log = mpi_tmp_path / f"{compressor}-{feedback}-{averaging}.h5"
    summary = train(comm, log, algorithm="ef-sgd", compressor=compressor, feedback=feedback,
                    error_averaging=averaging,
                    **({"sparsity": 0.05} if compressor == "topk" else {}))  # topk reads it
    if comm.Get_rank() == 0:
        assert np.isfinite(summary.final_loss)
        logged = steps(log)
        d, workers = summary.num_params, comm.Get_size() - 1
        if compressor == "scaled-sign":  # header + sign plane + fp32 scale
            assert np.all(logged["bytes_up"] == 32 + (d + 7) // 8 + 4)
        assert np.all(logged["bytes_down"] == 32 + 4 * d)
        averaged = np.zeros(16, dtype=bool)
        if averaging:
            averaged[averaging - 1::averaging] = True
        np.testing.assert_array_equal(logged["bytes_average"],
                                      np.where(averaged, 4 * d, 0)[:, None].repeat(workers, 1))
        assert summary.bytes_average_per_worker == 4 * d * averaged.sum()


def _residuals(directory, workers):
    out = []
    for rank in range(1, workers + 1):
        with h5py.File(checkpoint.rank_file(directory, rank), "r") as f:
            group = f["state/residual"]
            out.append(np.concatenate([group[name][...].ravel() for name in group]))
    return out


def test_error_averaging_leaves_every_worker_with_the_mean_residual(comm, mpi_tmp_path):
    # Averaging after steps 4 and 8; checkpoints after steps 4, 6 and 8 (every 2 would also
    # catch 2): the residuals are equal exactly at the averaging steps.
    directory = mpi_tmp_path / "averaging"
    train(comm, mpi_tmp_path / "averaging.h5", algorithm="ef-sgd", compressor="topk",
          sparsity=0.05, feedback="step-ahead", error_averaging=4, iterations=8,
          checkpoint_every=2, checkpoint_dir=str(directory))
    comm.Barrier()
    if comm.Get_rank() == 0:
        workers = comm.Get_size() - 1
        for step in (2, 4, 6, 8):
            residuals = _residuals(directory / f"step-{step:08d}", workers)
            equal = all(np.array_equal(r, residuals[0]) for r in residuals)
            assert equal == (step % 4 == 0), step
            assert np.any(residuals[0])


@pytest.mark.parametrize("settings", [
    dict(algorithm="ef-sgd", compressor="topk", feedback="step-ahead", error_averaging=3,
         sparsity=0.05),
    dict(algorithm="ef-sgd", compressor="qsgd", feedback="ef", server_feedback=True),
    dict(algorithm="topk", topk_selection="leader"),
    dict(algorithm="dq-sgd", dq_horizon=16),  # T defaults to --iterations, which differ here
    dict(algorithm="signum-mv", partition="classes:3"),
    dict(algorithm="s3gd-mv", lr_schedule="step:6:0.5"),  # no momentum: no sgd object
], ids=["ef-topk-averaging", "ef-qsgd-server", "topk-leader", "dq-sgd", "signum-non-iid",
        "s3gd-step-schedule"])
def test_a_resumed_run_continues_exactly(comm, mpi_tmp_path, settings):
    name = settings["algorithm"] + "-" + "-".join(str(v) for v in settings.values())
    full, first, second = (mpi_tmp_path / f"{name}-{part}.h5"
                           for part in ("full", "first", "second"))
    directory = mpi_tmp_path / f"{name}-checkpoints"
    whole = train(comm, full, **settings)
    # The first part stops at step 11 as a killed job would, after checkpoints at 5 and 10.
    train(comm, first, iterations=11, checkpoint_every=5, checkpoint_dir=str(directory),
          **settings)
    resumed = train(comm, second, resume=str(directory), **settings)
    if comm.Get_rank() == 0:
        assert final_digest(second) == final_digest(full)
        a, b = steps(full), steps(second)
        assert b["iteration"][0] == 10
        for column in a:
            np.testing.assert_array_equal(a[column][10:], b[column], err_msg=column)
        # the summary of the resumed run covers the whole run
        assert resumed.bytes_up_per_worker == whole.bytes_up_per_worker
        assert resumed.bytes_down == whole.bytes_down
        assert resumed.bytes_average_per_worker == whole.bytes_average_per_worker
        with h5py.File(second, "r") as f:
            assert f.attrs["first_step"] == 10
            assert f.attrs["resumed_from"].endswith("step-00000010")
