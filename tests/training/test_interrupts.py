"""Start-up failures, Ctrl-C and SIGTERM under a real mpiexec: every job ends within seconds,
with one message, the documented status, and (on SIGTERM) its state saved.

``hpcgrad train``'s failure policy (hpcgrad/cli.py, hpcgrad/comm/interrupts.py). Each test
launches ``mpiexec -n N python -m hpcgrad train`` (tests/launch_signals.py) and signals it, or
one of its ranks, by pid. tests/scripts/interrupt_stress.py repeats the start-up cases."""

import re
import signal
import subprocess
import sys
import time

import h5py
import pytest

from launch_signals import Launch, interrupted_cleanly, signal_at
from mpirun import mpi_env, mpiexec_path, run_mpi

QUICK = ["--quiet", "--flush-every", "5"]
#: A run still going when a start-up signal arrives, however fast the machine starts it (the
#: default 300 steps take under a second once trained: a 5 s signal could find it done).
RUNNING = [*QUICK, "--iterations", "100000"]


def log_rows(path) -> int:
    try:
        with h5py.File(path, "r", swmr=True) as f:
            return f["steps/iteration"].shape[0]
    except (OSError, KeyError):
        return 0


def lines_from_distinct_ranks(stderr: str, text: str, size: int) -> int:
    """How many lines say ``text`` (followed by `` on rank N``); fails if a rank said it twice.
    A signal every rank gets before ``MPI_Init`` has returned everywhere (the first second or
    two) finds ranks that cannot yet agree on who speaks: each prints its own line, once, with
    no traceback. Once MPI runs, one line (the tests of training check that)."""
    ranks = [int(r) for r in re.findall(re.escape(text) + r"[^\n]* on rank (\d+)", stderr)]
    assert len(ranks) == len(set(ranks)) and all(0 <= r < size for r in ranks), stderr
    return len(ranks)


def wait_for_training(launch, log, rows=20, timeout=60):
    """Wait until rank 0 has logged ``rows`` steps: the loop runs on every rank."""
    deadline = time.monotonic() + timeout
    while log_rows(log) < rows:
        assert launch.proc.poll() is None, "the run ended before training"
        assert time.monotonic() < deadline, "no training steps logged in time"
        time.sleep(0.1)


# ----------------------------------------------------------------------------- start-up


def test_an_import_failure_on_one_rank_ends_the_job_with_one_message(tmp_path):
    result = run_mpi(4, ["train", *QUICK, "--log", tmp_path / "run.h5"], timeout=60,
                     module="hpcgrad", env={"HPCGRAD_TEST_FAIL_AT_START": "2"})
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("ImportError: HPCGRAD_TEST_FAIL_AT_START=2") == 1, result.stderr
    assert "hpcgrad: error on rank 2: Traceback" in result.stderr
    assert "aborting all 4 ranks" in result.stderr


def test_a_rank_that_ends_before_mpi_init_does_not_leave_the_others_waiting(tmp_path):
    # MPMD: rank 2 is a Python that exits at once. MPICH's launcher does not end a job for a
    # rank that never called MPI_Init; the others' MPI_Init is bounded by HPCGRAD_START_TIMEOUT.
    cmd = [mpiexec_path(), "-n", "2", sys.executable, "-m", "hpcgrad", "train", *QUICK,
           "--log", str(tmp_path / "run.h5"), ":", "-n", "1", sys.executable, "-c",
           "import sys; sys.exit(1)"]
    started = time.monotonic()
    result = subprocess.run(cmd, env=mpi_env({"HPCGRAD_START_TIMEOUT": "5"}), timeout=60,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True)
    assert result.returncode != 0
    assert time.monotonic() - started < 30


def test_settings_are_checked_before_torch_is_imported(tmp_path):
    # Rank 0 would fail where torch is imported: a bad setting must be reported first.
    started = time.monotonic()
    result = run_mpi(3, ["train", "--lr", "-1", "--log", tmp_path / "run.h5"], timeout=60,
                     env={"HPCGRAD_TEST_FAIL_AT_START": "0"})
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("lr must be > 0") == 1, result.stderr
    assert "injected" not in result.stderr
    assert time.monotonic() - started < 15  # about 1 s on an idle 2-core machine


def test_argument_errors_are_printed_once(tmp_path):
    ended = Launch(3, ["train", "--no-such-option", "1"], cwd=tmp_path).wait(60)
    assert ended.returncode == 2
    assert ended.stderr.count("unrecognized arguments: --no-such-option 1") == 1, ended.stderr
    assert ended.stderr.count("usage:") == 1


@pytest.mark.parametrize("after_s", [1.0, 2.5, 5.0])
def test_ctrl_c_to_mpiexec_during_start_up_ends_the_job(tmp_path, after_s):
    ended, took = signal_at(4, ["train", *RUNNING, "--log", tmp_path / "run.h5"],
                            signal.SIGINT, after_s, cwd=tmp_path, timeout=30)
    assert not interrupted_cleanly(ended), (interrupted_cleanly(ended), ended.stderr)
    assert took < 10, ended.stderr
    if "hpcgrad: interrupted" in ended.stderr:  # the policy was installed: one line, no trace
        assert ended.returncode == 130, ended.stderr
        assert lines_from_distinct_ranks(ended.stderr, "hpcgrad: interrupted (SIGINT)", 4) >= 1
        assert "Traceback" not in ended.stderr


@pytest.mark.parametrize("rank, after_s", [(0, 3.0), (2, 2.0), (3, 5.0)])
def test_ctrl_c_to_one_rank_during_start_up_ends_the_job(tmp_path, rank, after_s):
    ended, took = signal_at(4, ["train", *RUNNING, "--log", tmp_path / "run.h5"],
                            signal.SIGINT, after_s, rank=rank, cwd=tmp_path, timeout=30)
    assert not interrupted_cleanly(ended), (interrupted_cleanly(ended), ended.stderr)
    assert took < 10, ended.stderr
    assert ended.returncode == 130, ended.stderr
    assert ended.stderr.count(f"hpcgrad: interrupted (SIGINT) on rank {rank}; aborting all "
                              "4 ranks") == 1, ended.stderr
    assert "Traceback" not in ended.stderr


def test_ctrl_c_during_training_ends_the_job_and_keeps_the_log_readable(tmp_path):
    log = tmp_path / "run.h5"
    launch = Launch(3, ["train", *QUICK, "--iterations", "100000", "--log", log], cwd=tmp_path)
    try:
        wait_for_training(launch, log)
        launch.signal(signal.SIGINT)
        ended = launch.wait(20)
    finally:
        launch.stop()
    assert ended.returncode == 130, ended.stderr
    assert ended.stderr.count("hpcgrad: interrupted (SIGINT)") == 1, ended.stderr
    assert log_rows(log) >= 20


def test_sigterm_during_start_up_aborts_with_status_143(tmp_path):
    ended, took = signal_at(3, ["train", *QUICK, "--log", tmp_path / "run.h5"],
                            signal.SIGTERM, 2.0, cwd=tmp_path, timeout=30)
    assert ended.returncode == 143, ended.stderr
    assert took < 10
    assert lines_from_distinct_ranks(ended.stderr, "hpcgrad: terminated (SIGTERM)", 3) >= 1
    assert "before training started, nothing to save" in ended.stderr


# ----------------------------------------------------------------------------- preemption

RUN = ["--iterations", "800", "--flush-every", "10", "--quiet", "--seed", "3"]


def final_hash(log) -> bytes:
    with h5py.File(log, "r") as f:
        return f["final_params_sha256"][()]


@pytest.mark.timeout(300)  # three launches, on a busy 2-core machine
def test_sigterm_stops_at_one_step_saves_and_the_resumed_run_ends_equal(tmp_path):
    """SIGTERM to mpiexec (every rank) mid-run: a checkpoint at the step all ranks agreed on,
    the log closed (opens without swmr), status 143; the resumed run ends with the
    uninterrupted run's final parameters."""
    whole = run_mpi(3, ["train", *RUN, "--log", tmp_path / "whole.h5"], timeout=90)
    assert whole.returncode == 0, whole.stderr
    first, ck = tmp_path / "first.h5", tmp_path / "ck"
    launch = Launch(3, ["train", *RUN, "--log", first, "--checkpoint-dir", ck], cwd=tmp_path)
    try:
        wait_for_training(launch, first, rows=50)
        launch.signal(signal.SIGTERM)
        ended = launch.wait(30)
    finally:
        launch.stop()
    assert ended.returncode == 143, ended.stderr
    assert ended.stderr.count("hpcgrad: stopped by SIGTERM after step") == 1, ended.stderr
    with h5py.File(first, "r") as f:  # closed cleanly: no swmr needed
        steps = f["steps/iteration"][...]
        assert f["final_params_sha256"][()] == b""
    stopped = int(ended.stderr.split("after step ")[1].split()[0])
    assert steps[-1] == stopped - 1 and len(steps) == stopped  # every step done is logged
    assert (ck / f"step-{stopped:08d}").is_dir()
    resumed = run_mpi(3, ["train", *RUN, "--log", tmp_path / "resumed.h5", "--resume", ck],
                      timeout=90)
    assert resumed.returncode == 0, resumed.stderr
    assert final_hash(tmp_path / "resumed.h5") == final_hash(tmp_path / "whole.h5") != b""


def test_preempt_signal_to_one_worker_stops_every_rank_at_the_same_step(tmp_path):
    """SIGUSR1 (--preempt-signal USR1) reaches rank 2 only: the vote carries it to every rank,
    which all stop after the same step and write one complete checkpoint."""
    log, ck = tmp_path / "run.h5", tmp_path / "ck"
    launch = Launch(3, ["train", *QUICK, "--iterations", "100000", "--log", log,
                        "--checkpoint-dir", ck, "--preempt-signal", "USR1"], cwd=tmp_path)
    try:
        wait_for_training(launch, log)
        launch.signal(signal.SIGUSR1, rank=2)
        ended = launch.wait(30)
    finally:
        launch.stop()
    assert ended.returncode == 143, ended.stderr
    assert "stopped by a signal to another rank" in ended.stderr  # rank 0 did not get it
    (saved,) = ck.iterdir()
    assert sorted(p.name for p in saved.iterdir()) == [f"rank-0000{r}.h5" for r in range(3)]
    with h5py.File(log, "r") as f:
        assert f["steps/iteration"][-1] + 1 == int(saved.name.split("-")[1])
