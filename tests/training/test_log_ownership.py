"""A log belongs to one run (issue 23): an existing ``--log`` is refused unless ``--overwrite``,
a log being written is locked, a missing or non-directory parent is named, and a full disk
under the log is one line.  Real ``mpiexec`` launches, real HDF5 files, a real tmpfs."""

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy as np
import pytest

from hpcgrad.errors import ConfigError
from hpcgrad.training import logfile
from hpcgrad.training.tracelog import TrafficLog
from mpirun import run_mpi

#: Up to four launches a test, on a loaded 2-core machine.
pytestmark = pytest.mark.timeout(400)

QUICK = ["--iterations", "20", "--quiet", "--hidden", "16", "--eval-every", "10",
         "--flush-every", "5"]


def train(log, *options, timeout=150):
    return run_mpi(3, ["train", *QUICK, "--log", str(log), *options], timeout=timeout)


def assert_complete(path, steps=20):
    with h5py.File(path, "r") as f:  # closed properly: opens without swmr=True
        assert list(f["steps/iteration"][:]) == list(range(steps))
        assert np.all(f["steps/bytes_up"][:] > 0)  # no zero rows from another writer
        assert len(f["final_params_sha256"][()]) == 64
        return str(f.attrs["run_id"])


# --------------------------------------------------------------- the claim, in one process

def test_claim_refuses_an_existing_file_and_a_locked_one(tmp_path):
    path = tmp_path / "run.h5"
    held = logfile.claim(path, overwrite=False, default=False)
    try:
        with pytest.raises(ConfigError, match="exists .*--overwrite"):
            logfile.claim(path, overwrite=False, default=False)
        # An open-file-description lock: refused even from another descriptor of this process.
        with pytest.raises(ConfigError, match="is in use: another run is writing it"):
            logfile.claim(path, overwrite=True, default=False)
    finally:
        held.release()
    logfile.claim(path, overwrite=True, default=False).release()  # free again


def test_a_live_log_is_locked_but_swmr_readers_still_read_it(tmp_path):
    path = tmp_path / "live.h5"
    log = TrafficLog(path, attrs={"algorithm": "fp32-ps"}, num_workers=1, world_size=2)
    try:
        with pytest.raises(ConfigError, match="in use"):
            logfile.claim(path, overwrite=True, default=False)
        # Another process's SWMR reader, with HDF5's default flock: not blocked by the lock.
        read = subprocess.run([sys.executable, "-c", "import h5py, sys; print(h5py.File("
                               "sys.argv[1], 'r', swmr=True).attrs['algorithm'])", str(path)],
                              capture_output=True, text=True, timeout=60)
        assert read.stdout.strip() == "fp32-ps", read.stderr
    finally:
        log.close()
    with pytest.raises(ConfigError, match="exists"):
        TrafficLog(path, attrs={}, num_workers=1, world_size=2)


def test_parents(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("")
    with pytest.raises(ConfigError, match=r"'.*notes.txt' is a file, not a directory"):
        logfile.check_path(notes / "x.h5", overwrite=False, default=False)
    with pytest.raises(ConfigError, match=r"the directory '.*nodir' does not exist"):
        logfile.claim(tmp_path / "nodir" / "x.h5", overwrite=False, default=False)
    assert not (tmp_path / "nodir").exists()
    with pytest.raises(ConfigError, match="is a directory"):
        logfile.check_path(tmp_path, overwrite=True, default=False)


def test_default_path_gets_a_free_name_and_creates_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = logfile.claim("runs/a.h5", overwrite=False, default=True)
    second = logfile.claim("runs/a.h5", overwrite=False, default=True)
    assert (first.path.name, second.path.name) == ("a.h5", "a-2.h5")
    first.release()
    second.release(remove=True)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["a.h5"]


# --------------------------------------------------------------- two jobs, real mpiexec

def test_two_jobs_started_together_one_is_refused(tmp_path):
    log = tmp_path / "shared.h5"
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda seed: train(log, "--seed", str(seed)), (1, 2)))
    codes = sorted(r.returncode for r in results)
    assert codes == [0, 2], [r.stderr[-2000:] for r in results]
    loser = next(r for r in results if r.returncode == 2)
    assert "exists" in loser.stderr or "in use" in loser.stderr
    assert loser.stderr.count("hpcgrad: error:") == 1
    winner = next(r for r in results if r.returncode == 0)
    assert_complete(log)
    with h5py.File(log, "r") as f:  # the file is the winner's run, seed and all
        assert f"seed = {f.attrs['seed']}" in "seed = 1 seed = 2"
        assert str(log) in winner.stdout


def test_a_second_job_is_refused_and_the_first_keeps_its_log(tmp_path):
    log = tmp_path / "run.h5"
    first = train(log)
    assert first.returncode == 0, first.stderr
    run_id = assert_complete(log)
    again = train(log, "--seed", "7")
    assert again.returncode == 2
    assert "--log" in again.stderr and "exists (a log belongs to one run)" in again.stderr
    assert assert_complete(log) == run_id  # untouched


def test_a_log_in_use_is_refused_even_with_overwrite(tmp_path):
    """This process holds the lock a running job holds on its log (the same claim)."""
    log = tmp_path / "run.h5"
    held = logfile.claim(log, overwrite=False, default=False)
    log.write_bytes(b"the other run's data")
    try:
        busy = train(log, "--overwrite")
    finally:
        held.release()
    assert busy.returncode == 2
    assert "is in use: another run is writing it" in busy.stderr
    assert log.read_bytes() == b"the other run's data"
    replaced = train(log, "--overwrite")  # the lock released: --overwrite replaces it
    assert replaced.returncode == 0, replaced.stderr
    assert_complete(log)


def test_missing_parent_is_not_created(tmp_path):
    result = train(tmp_path / "nodir" / "x.h5")
    assert result.returncode == 2
    assert "does not exist; create it first" in result.stderr
    assert not (tmp_path / "nodir").exists()


# --------------------------------------------------------------- a full disk under the log

@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 256 kB tmpfs (root only); skipped where mounting is not allowed."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_under_the_log_is_one_line(tiny_tmpfs):
    log = tiny_tmpfs / "run.h5"
    result = run_mpi(3, ["train", "--iterations", "300", "--quiet", "--eval-every", "0",
                         "--record-messages", "300", "--log", str(log)], timeout=150)
    assert result.returncode == 1, result.stderr
    assert f"cannot write the log file {str(log)!r}: No space left on device" in result.stderr
    assert "Traceback" not in result.stderr and "HDF5-DIAG" not in result.stderr
    assert result.stderr.count("hpcgrad: error on rank") == 1
    assert os.path.getsize(log) > 0
