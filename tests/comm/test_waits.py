"""Oversubscription: hpcgrad sets MPIR_CVAR_ENABLE_HEAVY_YIELD=1 before MPI_Init when the
launcher's node-local ranks outnumber the cores, and never over the user's value.

Real launches: Hydra's mpiexec, its MPI_LOCALNRANKS, the ranks' affinity pinned to one core
(inherited from the launcher) so that any machine is oversubscribed by two ranks."""

import os
import re
import subprocess
import sys

import h5py
import pytest

from mpirun import mpi_env, mpiexec_path, run_mpi

from hpcgrad.comm import waits

VARIABLE = waits.VARIABLE

#: Each rank: the decision, then MPI_Init, then what the environment holds inside MPI.
PROBE = ("import os, hpcgrad.comm.waits as w; line = w.prefer_yield(); "
         "from mpi4py import MPI; r = MPI.COMM_WORLD.Get_rank(); "
         f"print(f'rank {{r}}: {{os.environ.get(\"{VARIABLE}\")}} | {{line}}.', flush=True)")


def launch_on_one_core(n, argv, env=None, timeout=90):
    """``mpiexec -n n python -m mpi4py argv...``, launcher and ranks pinned to one core."""
    core = min(os.sched_getaffinity(0))
    cmd = [mpiexec_path(), "-n", str(n), sys.executable, "-m", "mpi4py", *argv]
    return subprocess.run(cmd, env=mpi_env(env), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout,
                          preexec_fn=lambda: os.sched_setaffinity(0, {core}))


def rank_lines(result, n):
    assert result.returncode == 0, result.stderr[-2000:]
    # Hydra may join two ranks' lines: each record ends with ".", which the lines lack.
    lines = sorted(re.findall(r"rank \d+: .*?\.(?=rank |\n|$)", result.stdout))
    assert len(lines) == n, result.stdout
    return lines


def test_oversubscribed_ranks_yield():
    lines = rank_lines(launch_on_one_core(2, ["-c", PROBE]), 2)
    for line in lines:
        assert line.endswith(f": 1 | {VARIABLE}=1 (set by hpcgrad: 2 ranks share 1 cores, "
                             "MPI_LOCALNRANKS)."), line


def test_the_users_setting_is_kept():
    lines = rank_lines(launch_on_one_core(2, ["-c", PROBE], env={VARIABLE: "0"}), 2)
    for line in lines:
        assert line.endswith(f": 0 | {VARIABLE}=0 (set by the user)."), line


def test_a_rank_per_core_keeps_busy_polling():
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 cores for 2 ranks")
    lines = rank_lines(run_mpi(2, code=PROBE, timeout=60), 2)
    for line in lines:
        assert ": None | MPI waits busy-poll (MPICH default): 2 ranks on this machine " \
               "(MPI_LOCALNRANKS)" in line, line


def test_train_says_so_in_the_summary_and_the_log(tmp_path):
    log = tmp_path / "run.h5"
    result = launch_on_one_core(3, ["-m", "hpcgrad", "train", "--iterations", "2", "--quiet",
                                    "--log", str(log)], timeout=110)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    expected = f"{VARIABLE}=1 (set by hpcgrad: 3 ranks share 1 cores, MPI_LOCALNRANKS)"
    assert result.stdout.count("MPI waits:") == 1, result.stdout
    assert f"  MPI waits: {expected}" in result.stdout
    with h5py.File(log, "r") as f:
        assert f.attrs["mpi_waits"] == expected


@pytest.mark.parametrize("environ, count", [
    ({"MPI_LOCALNRANKS": "4", "PMI_SIZE": "8"}, (4, "MPI_LOCALNRANKS")),
    ({"OMPI_COMM_WORLD_LOCAL_SIZE": "3"}, (3, "OMPI_COMM_WORLD_LOCAL_SIZE")),
    ({"SLURM_NTASKS_PER_NODE": "6", "PMI_SIZE": "12"}, (6, "SLURM_NTASKS_PER_NODE")),
    ({"PMI_SIZE": "5"}, (5, "PMI_SIZE")),
    ({"SLURM_STEP_TASKS_PER_NODE": "2(x3),1", "SLURM_NODEID": "3", "PMI_SIZE": "7"},
     (1, "SLURM_STEP_TASKS_PER_NODE")),
    ({"SLURM_STEP_TASKS_PER_NODE": "1(x1000000000),3", "SLURM_NODEID": "1000000000"},
     (3, "SLURM_STEP_TASKS_PER_NODE")),  # walked, not expanded into a list
    ({"SLURM_STEP_TASKS_PER_NODE": "4(x2)", "SLURM_NODEID": "1", "SLURM_NTASKS_PER_NODE": "4"},
     (4, "SLURM_STEP_TASKS_PER_NODE")),
    ({"SLURM_STEP_TASKS_PER_NODE": "2(x3)", "SLURM_NODEID": "5", "PMI_SIZE": "6"},
     (6, "PMI_SIZE")),  # no such node: the next variable
    ({"SLURM_NTASKS_PER_NODE": "2(x3)", "PMI_SIZE": "6"}, (6, "PMI_SIZE")),
    ({}, (None, None)),
])
def test_the_local_rank_count_comes_from_the_most_precise_variable(environ, count):
    assert waits.local_ranks(environ) == count


def test_no_launcher_count_changes_nothing():
    environ = {}
    assert "no launcher rank count" in waits.prefer_yield(environ, cores=1)
    assert environ == {}
