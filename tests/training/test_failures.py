"""Bad input and failing ranks: a clear message, every rank exits, nothing hangs.

Each test launches a real job with mpiexec (tests/mpirun.py)."""

import time
from pathlib import Path

import h5py
import pytest

from mpirun import run_mpi

SCRIPT = str(Path(__file__).parents[1] / "scripts" / "faulty_run.py")
QUICK = ["--iterations", "40", "--quiet", "--flush-every", "2"]


def train(n, *options, tmp_path):
    return run_mpi(n, ["train", "--log", str(tmp_path / "run.h5"), *QUICK, *options],
                   timeout=90)


def test_world_of_one_is_refused(tmp_path):
    result = train(1, tmp_path=tmp_path)
    assert result.returncode == 2
    assert "needs at least 2 MPI ranks" in result.stderr


@pytest.mark.parametrize("options, message", [
    (["--lr", "-1"], "lr must be > 0"),
    (["--momentum", "1.5"], "momentum must be in [0, 1)"),
    (["--iterations", "0"], "iterations must be an integer >= 1"),
])
def test_bad_settings_stop_every_rank_with_one_message(tmp_path, options, message):
    result = train(3, *options, tmp_path=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count(message) == 1, result.stderr


def test_a_batch_larger_than_a_shard_is_a_setup_error(tmp_path):
    result = train(5, "--batch-size", "5000", tmp_path=tmp_path)
    assert result.returncode == 2
    assert "sharding the data failed on rank 1" in result.stderr
    assert "fewer than the batch size 5000" in result.stderr


def test_unknown_algorithm_is_rejected_by_the_parser(tmp_path):
    result = train(3, "--algorithm", "adam-mv", tmp_path=tmp_path)
    assert result.returncode != 0
    assert "invalid choice: 'adam-mv'" in result.stderr


def test_bad_config_file_names_the_setting(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("learning_rate = 0.1\n")
    result = train(3, "--config", str(cfg), tmp_path=tmp_path)
    assert result.returncode == 2
    assert "unknown setting 'learning_rate'" in result.stderr


def test_unwritable_log_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run_mpi(3, ["train", *QUICK, "--log", str(blocker / "sub" / "run.h5")], timeout=90)
    assert result.returncode == 2
    assert result.stderr.count("hpcgrad: error:") == 1
    assert f"{str(blocker)!r} is a file, not a directory" in result.stderr


def faulty(mode, rank, tmp_path, world=4, options=()):
    started = time.monotonic()
    result = run_mpi(world, [SCRIPT, mode, str(rank), "--", "--log", str(tmp_path / "run.h5"),
                             "--iterations", "200", "--quiet", "--flush-every", "2", *options],
                     module=None, timeout=90)
    return result, time.monotonic() - started


def assert_log_readable(tmp_path):
    # A writer killed in SWMR mode leaves the file marked open-for-write; SWMR readers
    # still open it (docs/log-format.md).
    with h5py.File(tmp_path / "run.h5", "r", swmr=True) as f:
        steps = f["steps/iteration"][:]
        assert len(steps) >= 2 and (steps == range(len(steps))).all()
        assert f["steps/bytes_up"].shape[0] == len(steps)


def test_a_rank_that_raises_aborts_the_job(tmp_path):
    result, seconds = faulty("raise", 2, tmp_path)
    assert result.returncode != 0
    assert "error on rank 2" in result.stderr and "injected failure" in result.stderr
    assert seconds < 30
    assert_log_readable(tmp_path)


def test_a_corrupt_uplink_header_is_named_by_the_server(tmp_path):
    result, seconds = faulty("corrupt", 2, tmp_path)
    assert result.returncode != 0
    assert "error on rank 0" in result.stderr
    assert "uplink message from rank 2 at step 3: bad magic" in result.stderr
    assert_log_readable(tmp_path)


def test_a_nan_gradient_names_the_tensor(tmp_path):
    result, _ = faulty("nan", 1, tmp_path)
    assert result.returncode != 0
    assert "error on rank 1" in result.stderr
    assert "non-finite gradient" in result.stderr and "4.bias" in result.stderr


def test_a_rank_that_dies_ends_the_job(tmp_path):
    result, seconds = faulty("die", 3, tmp_path)
    assert result.returncode != 0
    assert seconds < 30
    assert_log_readable(tmp_path)


def test_a_corrupt_sparse_body_is_named_by_the_server(tmp_path):
    result, seconds = faulty("corrupt-body", 2, tmp_path, options=["--algorithm", "s3gd-mv"])
    assert result.returncode != 0
    assert "error on rank 0" in result.stderr
    assert "uplink message from rank 2 at step 3: sparse-sign body is corrupt" in result.stderr
    assert seconds < 30
    assert_log_readable(tmp_path)


@pytest.mark.parametrize("options, message", [
    (["--sparsity", "0"], "sparsity must be in (0, 1]"),
    (["--k-per-worker", "auto", "--votes-per-coordinate", "5"],
     "asks K = "),
])
def test_bad_s3gd_settings_stop_every_rank_with_one_message(tmp_path, options, message):
    result = train(3, "--algorithm", "s3gd-mv", *options, tmp_path=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count(message) == 1, result.stderr
