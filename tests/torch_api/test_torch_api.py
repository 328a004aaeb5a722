"""hpcgrad.torch (your own training loop) under real mpiexec: bit-identical to hpcgrad train,
the examples, checkpoints with the optimizer state, and bad input (a clear error naming the
rank and the parameter, every rank exits, nothing hangs).  Each test launches jobs with
tests/mpirun.py; the bad-input jobs run without ``-m mpi4py``, so that the failure policy
under test is hpcgrad.torch's own (``context.py``)."""

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from mpirun import run_mpi

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
ALGORITHMS = ["signum-mv", "s3gd-mv", "topk", "fp32-ps"]
ITERATIONS = 4



def _ok(result):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.parametrize("n", [3, 5])
def test_the_wrapper_gives_hpcgrad_trains_parameters_bit_for_bit(n, tmp_path):
    args = [tmp_path, ITERATIONS, *ALGORITHMS]
    _ok(run_mpi(n, [HERE / "embedded_wrapped.py", *args], module=None, timeout=110))
    for name in ALGORITHMS:
        with h5py.File(tmp_path / f"wrapped-{name}.h5", "r") as w, \
                h5py.File(tmp_path / f"train-{name}.h5", "r") as t:
            assert w["final_params_sha256"][()] == t["final_params_sha256"][()], name
            assert w["final_params_sha256"][()] != b""
            for column in ("iteration", "bytes_up", "bytes_down", "loss", "lr"):
                np.testing.assert_array_equal(w["steps"][column][...], t["steps"][column][...],
                                              err_msg=f"{name}: /steps/{column}")
            assert w.attrs["api"] == "hpcgrad.torch" and w.attrs["update"] == "algorithm"


def test_the_example_runs_on_5_ranks_and_hpcgrad_analyze_reads_its_log(tmp_path):
    log = tmp_path / "example.h5"
    # 2048 examples: 1792 for training, 448 per worker, 14 batches of 32, 7 optimizer steps
    # of 2 micro-batches each per epoch: one exchange per optimizer step.
    result = _ok(run_mpi(5, [ROOT / "examples" / "mnist_hpcgrad.py", "--examples", "2048",
                             "--epochs", "2", "--log", log], module=None, cwd=tmp_path,
                         timeout=110))
    assert "epoch 1: test loss" in result.stdout
    with h5py.File(log, "r") as f:
        assert list(f["steps"]["iteration"][...]) == list(range(14))
        assert f["eval"]["iteration"][-1] == 14
        lr = f["steps"]["lr"][...]  # StepLR halves the optimizer's lr after each epoch
        np.testing.assert_allclose(lr[7:], lr[:7] / 2)
    summary = subprocess.run([sys.executable, "-m", "hpcgrad", "analyze", "summary", str(log)],
                             capture_output=True, text=True, timeout=60)
    assert summary.returncode == 0, summary.stderr
    assert "s3gd-mv" in summary.stdout and "14" in summary.stdout


def test_plain_example_runs(tmp_path):
    result = subprocess.run([sys.executable, ROOT / "examples" / "mnist_plain.py",
                             "--examples", "1024"], capture_output=True, text=True, timeout=60,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "epoch 0: test loss" in result.stdout


def bad(case, tmp_path, n=3):
    return run_mpi(n, [HERE / "bad_input.py", case, tmp_path / "run.h5"], module=None,
                   mpi4py=False, timeout=60)


def test_a_script_run_without_mpiexec_is_told_how_to_launch_it(tmp_path):
    result = subprocess.run([sys.executable, HERE / "bad_input.py", "ok", tmp_path / "x.h5"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "got a world of size 1. Run e.g. mpiexec -n 5 python " in result.stderr
    assert "bad_input.py ok" in result.stderr, result.stderr


def test_a_script_that_ends_without_finish_finishes_at_exit(tmp_path):
    result = _ok(bad("ok", tmp_path))
    assert "rank 1 completed 4 exchanges" in result.stdout
    with h5py.File(tmp_path / "run.h5", "r") as f:
        assert f["steps"]["iteration"].shape == (4,)
        assert f["final_params_sha256"][()] != b""


def test_sync_broadcast_starts_every_replica_from_rank_0s_parameters(tmp_path):
    result = _ok(bad("broadcast", tmp_path))  # rank 2's model differs: taken over, no error
    assert "rank 1 completed 4 exchanges" in result.stdout


@pytest.mark.parametrize("case, message", [
    ("early", "rank 2 finished after 3 optimizer steps while rank 1 called step() for step 4"),
    ("differ", "rank 2's parameter head.bias differs from rank 0's at wrap time"),
    ("none-grad", "the gradient of parameter extra.weight is None on rank 2 but not on rank 1"),
    ("nan", "rank 2: non-finite gradient (NaN or Inf) in parameter head.weight at step 2"),
    ("crash", "error on rank 2: Traceback"),
    ("before-init", "error on rank 2: Traceback"),
    ("twice", "ConfigError: this model is already wrapped by a "
     "DistributedOptimizer that has not finished"),
    ("groups", "hpcgrad: error: wrapping the optimizer failed on rank 1: update='algorithm' "
               "applies the algorithm's one learning rate to every parameter, but the "
               "optimizer's parameter groups have learning rates [0.0, 0.1]"),
    ("bad-setting", "hpcgrad: error: checking the settings failed on rank 0: lr must be > 0"),
    ("unknown-setting", "unknown setting 'sparsty' (did you mean 'sparsity'?)"),
])
def test_bad_input_ends_every_rank_with_a_message_naming_rank_and_parameter(case, message,
                                                                            tmp_path):
    result = bad(case, tmp_path)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr[-3000:]
    if case == "crash":
        assert "a bug in the user's loop" in result.stderr
    if case == "before-init":
        assert "FileNotFoundError: the user's data file" in result.stderr
    if "setting" in case or case == "groups":  # agreed by every rank: printed once, no abort
        assert result.stderr.count("hpcgrad: error:") == 1
        assert "Abort" not in result.stderr


def test_a_non_finite_step_is_skipped_on_every_rank_with_nonfinite_skip(tmp_path):
    result = _ok(bad("skip", tmp_path))
    assert "rank 1 completed 3 exchanges" in result.stdout
    with h5py.File(tmp_path / "run.h5", "r") as f:
        assert f["steps"]["iteration"].shape == (3,)


def test_grad_scaler_step_on_the_wrapper_skips_an_overflow_on_every_rank(tmp_path):
    """scaler.step(opt) calls step() on every worker (else the worker whose gradient
    overflowed skips it alone and pairs its next step with the others'), unscaled exactly as
    unscale_ does: the parameters of a run where the step is skipped by nonfinite="skip"."""
    for case in ("scaler", "skip-fp32"):
        result = _ok(run_mpi(3, [HERE / "bad_input.py", case, tmp_path / f"{case}.h5"],
                             module=None, mpi4py=False, timeout=60))
        assert "rank 1 completed 3 exchanges" in result.stdout
    with h5py.File(tmp_path / "scaler.h5", "r") as a, h5py.File(tmp_path / "skip-fp32.h5") as b:
        assert a["final_params_sha256"][()] == b["final_params_sha256"][()] != b""


def test_user_habits_torch_optimizers_amp_half_models_buffers_and_resume(tmp_path):
    """features.py: Adam with update="optimizer", a DataLoader, bf16 autocast, accumulation,
    clipping, a frozen layer, buffers broadcast; a .half() model; a resumed run with the
    optimizer's momentum ending where an unbroken one does; fp16 autocast with a GradScaler,
    an overflowing step skipped on every rank."""
    result = _ok(run_mpi(3, [HERE / "features.py", tmp_path], module=None, timeout=110))
    assert "features ok" in result.stdout
    assert "damaged optimizer state refused" in result.stdout
    with h5py.File(tmp_path / "resumed.h5", "r") as f:
        assert list(f["steps"]["iteration"][...]) == [2, 3]
        assert f.attrs["first_step"] == 2
    assert (tmp_path / "ck" / "step-00000002" / "torch-rank-00001.pt").exists()
    with h5py.File(tmp_path / "scaler.h5", "r") as f:
        assert list(f["steps"]["iteration"][...]) == list(range(7))
