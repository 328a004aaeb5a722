"""Tests of the test harness itself: tests/mpirun.py and the multi-rank pytest setup."""

import os
import re
import time

import numpy as np
import pytest

from mpirun import mpiexec_path, run_mpi, train_several


def test_mpiexec_is_next_to_python():
    path = mpiexec_path()
    assert os.access(path, os.X_OK), path


def test_run_mpi_starts_three_ranks():
    code = (
        "import sys\n"
        "from mpi4py import MPI\n"
        "c = MPI.COMM_WORLD\n"
        "c.Barrier()\n"
        "sys.stdout.write(f'<rank {c.Get_rank()} of {c.Get_size()}>\\n')\n"
    )
    result = run_mpi(3, code=code, timeout=60)
    assert result.returncode == 0, result.stderr
    # mpiexec merges the ranks' output streams; lines of different ranks can interleave
    # (each rank's text is intact only per write call), so match the markers, not lines.
    seen = sorted(re.findall(r"<rank (\d+) of (\d+)>", result.stdout))
    assert seen == [("0", "3"), ("1", "3"), ("2", "3")], result.stdout


def test_run_mpi_passes_args_and_env(tmp_path):
    # Each rank reports through its own file: the ranks' merged stdout can interleave even
    # within one line, which made a stdout-based version of this test flaky.
    code = (
        "import os, sys\n"
        "from mpi4py import MPI\n"
        "text = f'{sys.argv[1:]} {os.environ[\"OMP_NUM_THREADS\"]} {os.environ[\"HG_X\"]}'\n"
        "open(os.path.join(os.environ['HG_OUT'], str(MPI.COMM_WORLD.Get_rank())), 'w').write(text)\n"
    )
    env = {"HG_X": "42", "HG_OUT": str(tmp_path)}
    result = run_mpi(2, ["a", "b c"], code=code, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    reports = {p.name: p.read_text() for p in tmp_path.iterdir()}
    assert reports == {"0": "['a', 'b c'] 1 42", "1": "['a', 'b c'] 1 42"}, reports


def test_train_several_reports_each_runs_status_and_output(tmp_path):
    """Three command lines in one job: a refused setting (status 2 on every rank, its one line
    in its own stderr), a 2-step run (status 0, its summary in its own stdout), and one whose
    arguments argparse rejects; a log only where a run trained."""
    runs = {name: (tmp_path, ["--iterations", "2", "--quiet", "--log", tmp_path / f"{name}.h5",
                              *extra])
            for name, extra in [("refused", ["--lr", "-1"]), ("trained", []),
                                ("unparsed", ["--no-such-option"])]}
    done = train_several(3, runs, timeout=100)
    assert [done[name].returncode for name in runs] == [2, 0, 2], done["trained"].stderr
    assert done["refused"].stderr.count("lr must be > 0") == 1, done["refused"].stderr
    assert "lr must be > 0" not in done["trained"].stderr + done["unparsed"].stderr
    assert "2 workers" in done["trained"].stdout and "2 workers" not in done["refused"].stdout
    assert done["unparsed"].stderr.count("unrecognized arguments: --no-such-option") == 1
    assert sorted(p.name for p in tmp_path.glob("*.h5")) == ["trained.h5"]


def test_exception_on_one_rank_aborts_the_job():
    # Rank 1 raises; ranks 0 and 2 would wait in the barrier forever without mpi4py's abort.
    code = (
        "from mpi4py import MPI\n"
        "c = MPI.COMM_WORLD\n"
        "if c.Get_rank() == 1:\n"
        "    raise RuntimeError('deliberate failure on rank 1')\n"
        "c.Barrier()\n"
    )
    start = time.monotonic()
    result = run_mpi(3, code=code, timeout=30)
    elapsed = time.monotonic() - start
    assert result.returncode != 0
    assert elapsed < 10, f"the job took {elapsed:.1f} s to end"
    assert "RuntimeError: deliberate failure on rank 1" in result.stderr, result.stderr


def test_run_mpi_timeout_kills_the_launch():
    code = (
        "import time\n"
        "from mpi4py import MPI\n"
        "c = MPI.COMM_WORLD\n"
        "print('started', flush=True)\n"
        "if c.Get_rank() != 0:\n"
        "    c.Barrier()  # rank 0 never joins: a hang\n"
        "time.sleep(600)\n"
    )
    start = time.monotonic()
    with pytest.raises(AssertionError, match="timed out after 3 s") as excinfo:
        run_mpi(2, code=code, timeout=3)
    assert time.monotonic() - start < 20
    assert "started" in str(excinfo.value)


@pytest.mark.mpi(min_size=2)
def test_allreduce_sums_over_ranks(comm):
    size, rank = comm.Get_size(), comm.Get_rank()
    send = np.arange(7, dtype=np.float64) + rank
    recv = np.empty_like(send)
    comm.Allreduce(send, recv)  # buffer-based, MPI.SUM by default
    expected = size * np.arange(7, dtype=np.float64) + size * (size - 1) / 2
    np.testing.assert_array_equal(recv, expected)
