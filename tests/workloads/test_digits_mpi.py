"""``--dataset digits`` trains under a real mpiexec: every worker reads the bundled scans, the
replicas agree, and a few dozen steps classify the held-out real digits far above chance.

Run with: mpiexec -n N python -m mpi4py -m pytest --with-mpi -m mpi tests
"""

import json

import h5py
import pytest

from hpcgrad.training import runtime
from hpcgrad.training.config import TrainConfig

pytestmark = pytest.mark.mpi(min_size=3)


@pytest.mark.parametrize("algorithm", ["fp32-ps", "signum-mv"])
def test_digits_train_to_well_above_chance(comm, mpi_tmp_path, algorithm):
    log = mpi_tmp_path / f"digits-{algorithm}.h5"
    config = TrainConfig(dataset="digits", algorithm=algorithm, iterations=60, eval_every=30,
                         hidden=64, quiet=True, log=str(log)).resolved()
    summary = runtime.train(config, comm)
    if comm.Get_rank() != 0:
        return
    assert summary.num_params == 64 * 64 + 64 + 64 * 64 + 64 + 64 * 10 + 10
    assert summary.final_accuracy > 0.85, summary.text()  # chance is 0.10
    with h5py.File(log, "r") as f:
        assert json.loads(f.attrs["config"])["dataset"] == "digits"
        assert f["eval"]["accuracy"][-1] == summary.final_accuracy


def test_a_validation_split_is_evaluated_and_logged_apart(comm, mpi_tmp_path):
    log = mpi_tmp_path / "digits-validation.h5"
    config = TrainConfig(dataset="digits", algorithm="fp32-ps", iterations=40, eval_every=20,
                         hidden=32, validation_fraction=0.2, quiet=True,
                         log=str(log)).resolved()
    summary = runtime.train(config, comm)
    if comm.Get_rank() != 0:
        return
    with h5py.File(log, "r") as f:
        val, test = f["validation"], f["eval"]
        assert list(val["iteration"][...]) == list(test["iteration"][...]) == [20, 40]
        assert val["accuracy"][-1] == summary.final_validation_accuracy > 0.6
        assert test["accuracy"][-1] == summary.final_accuracy
        # 288 validation scans (a fifth of 1,438): accuracies are multiples of 1/288
        assert (val["accuracy"][...] * 288).round(6).tolist() == \
            (val["accuracy"][...] * 288).round().tolist()
    assert "final validation: loss" in summary.text()
