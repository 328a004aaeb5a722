"""launch/local.py (hpcgrad-local): the GPU map as a pure function, the dry run, and real
mpiexec launches on the CPU (binding visible per rank, a training run, failing ranks)."""

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest

from mpirun import mpi_env

ROOT = Path(__file__).resolve().parent.parent
LAUNCHER = ROOT / "launch" / "local.py"

_spec = importlib.util.spec_from_file_location("hpcgrad_launch_local", LAUNCHER)
local = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(local)


def launch(*args, timeout=90, env=None, unset=()):
    """Run the launcher; returns the CompletedProcess and the wall time."""
    child = mpi_env(env)
    for name in unset:
        child.pop(name, None)
    start = time.monotonic()
    result = subprocess.run([sys.executable, str(LAUNCHER), *map(str, args)],
                            stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            env=child, timeout=timeout)
    return result, time.monotonic() - start


# --------------------------------------------------------------------------- pure functions


def test_each_worker_gets_one_gpu_and_the_server_none():
    assert local.gpu_map(5, ["0", "1", "2", "3"]) == ["", "0", "1", "2", "3"]
    assert local.gpu_map(3, ["2", "3", "5"]) == ["", "2", "3"]  # fewer workers than GPUs


def test_server_may_share_the_first_gpu():
    assert local.gpu_map(3, ["4", "7"], server_gpu="shared") == ["4", "4", "7"]


def test_more_workers_than_gpus_needs_sharing():
    with pytest.raises(local.LaunchError, match=r"5 workers but --gpus gives 4 GPU.*"
                                                r"use -n 5 or fewer.*--share-gpus"):
        local.gpu_map(6, ["0", "1", "2", "3"])
    assert local.gpu_map(6, ["0", "1"], share=True) == ["", "0", "1", "0", "1", "0"]


def test_no_gpus_hides_them_from_every_rank():
    assert local.gpu_map(4, []) == ["", "", "", ""]


def test_a_world_of_one_is_refused():
    with pytest.raises(local.LaunchError, match="at least 2 ranks"):
        local.gpu_map(1, ["0"])


def test_gpu_list_parsing():
    assert local.parse_gpus("0, 1,3") == ["0", "1", "3"]
    assert local.parse_gpus("GPU-ab12,GPU-cd34") == ["GPU-ab12", "GPU-cd34"]
    assert local.parse_gpus("none") == []
    assert local.parse_gpus("auto", {"CUDA_VISIBLE_DEVICES": "2,3"}) == ["2", "3"]
    assert local.parse_gpus("auto", {"CUDA_VISIBLE_DEVICES": ""}) == []
    with pytest.raises(local.LaunchError, match="more than once"):
        local.parse_gpus("0,1,0")
    with pytest.raises(local.LaunchError, match="empty entry"):
        local.parse_gpus("0,,1")


def test_map_round_trips_through_the_bind_argument():
    mapping = ["", "0", "GPU-x", "1"]
    assert local.encode_map(mapping) == "-,0,GPU-x,1"
    assert local.decode_map(local.encode_map(mapping)) == mapping


@pytest.mark.parametrize("environ, rank", [
    ({"MPI_LOCALRANKID": "3", "PMI_RANK": "7"}, 3),       # MPICH / Hydra
    ({"OMPI_COMM_WORLD_LOCAL_RANK": "2"}, 2),             # Open MPI
    ({"SLURM_LOCALID": "1", "PMI_RANK": "5"}, 1),         # srun
    ({"PMI_RANK": "4"}, 4),                               # fallback: global rank
])
def test_local_rank_from_the_launchers_environment(environ, rank):
    assert local.local_rank(environ) == rank


def test_no_local_rank_is_a_clear_error():
    with pytest.raises(local.LaunchError, match="cannot tell this process's node-local rank"):
        local.local_rank({})


def test_cuda_aware_environment_keeps_the_users_settings():
    env = local.rank_environment(5, True, "auto", {"OMP_NUM_THREADS": "2",
                                                   "OMPI_MCA_opal_cuda_support": "false"})
    assert env == {"MPIR_CVAR_ENABLE_GPU": "1"}
    assert local.rank_environment(5, False, "auto", {"OMP_NUM_THREADS": "1"}) == {}
    on = local.rank_environment(5, True, "on", {"OMP_NUM_THREADS": "1"})
    assert on["MPICH_GPU_SUPPORT_ENABLED"] == "1" and on["MV2_USE_CUDA"] == "1"
    assert local.rank_environment(5, True, "off", {"OMP_NUM_THREADS": "1"})[
        "MPIR_CVAR_ENABLE_GPU"] == "0"
    assert int(local.rank_environment(8, False, "auto", {})["OMP_NUM_THREADS"]) >= 1


# --------------------------------------------------------------------------- dry run


def test_dry_run_prints_the_exact_command_and_the_mapping():
    result, _ = launch("-n", "5", "--gpus", "0,1,2,3", "--mpiexec", "/opt/mpi/bin/mpiexec",
                       "--dry-run", "train", "--device", "cuda", "--iterations", "7",
                       env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:5] == [
        "# rank 0 (server): no GPU (CUDA_VISIBLE_DEVICES='')",
        "# rank 1 (worker): CUDA_VISIBLE_DEVICES='0'",
        "# rank 2 (worker): CUDA_VISIBLE_DEVICES='1'",
        "# rank 3 (worker): CUDA_VISIBLE_DEVICES='2'",
        "# rank 4 (worker): CUDA_VISIBLE_DEVICES='3'",
    ]
    assert lines[5] == (
        f"env MPIR_CVAR_ENABLE_GPU=1 OMPI_MCA_opal_cuda_support=true /opt/mpi/bin/mpiexec -n 5 "
        f"{sys.executable} {LAUNCHER} --bind=-,0,1,2,3 -- {sys.executable} -m mpi4py -m hpcgrad "
        "train --device cuda --iterations 7")
    assert len(lines) == 6


def test_dry_run_without_gpus_is_plain_mpiexec(tmp_path):
    # No CUDA_VISIBLE_DEVICES and no nvidia-smi on PATH: --gpus auto finds no GPU.
    result, _ = launch("-n", "3", "--gpus", "auto", "--dry-run", "train",
                       env={"OMP_NUM_THREADS": "1", "PATH": str(tmp_path)},
                       unset=["CUDA_VISIBLE_DEVICES"])
    assert result.returncode == 0, result.stderr
    expected_mpiexec = Path(sys.executable).parent / "mpiexec"
    assert result.stdout.splitlines()[-1] == (
        f"{expected_mpiexec} -n 3 {sys.executable} -m mpi4py -m hpcgrad train")


def test_dry_run_warns_when_gpus_are_bound_but_train_runs_on_the_cpu():
    result, _ = launch("-n", "3", "--gpus", "0,1", "--dry-run", "train")
    assert result.returncode == 0
    assert "unless you pass --device cuda" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["-n", "6", "--gpus", "0,1,2,3", "train"],
     "-n 6 starts 5 workers but --gpus gives 4 GPU(s)"),
    (["-n", "1", "--gpus", "none", "train"], "needs at least 2 ranks"),
    (["-n", "3", "--gpus", "none"], "no hpcgrad command given"),
    (["--gpus", "0", "train"], "-n N is required"),
])
def test_bad_requests_stop_before_launching(args, message):
    result, _ = launch(*args, "--dry-run")
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""


def test_help_describes_the_options():
    result, _ = launch("--help")
    assert result.returncode == 0
    for option in ("--gpus", "--server-gpu", "--share-gpus", "--cuda-aware", "--dry-run",
                   "--timeout", "--mpiexec", "--python"):
        assert option in result.stdout


# --------------------------------------------------------------------------- real launches

PROBE = """\
import os, sys, time
from mpi4py import MPI
from hpcgrad.comm import device
comm = MPI.COMM_WORLD
mode = sys.argv[1]
if mode == "die" and comm.rank == 1:
    os.kill(os.getpid(), 9)
if mode in ("die", "sleep"):
    time.sleep(120)
# A file per rank: mpiexec merges the ranks' stdout in chunks that may split a line.
with open(os.path.join(os.path.dirname(__file__), f"report.{comm.rank}"), "w") as report:
    report.write(f"rank={comm.rank} size={comm.size} "
                 f"cvd={os.environ.get('CUDA_VISIBLE_DEVICES')!r} "
                 f"local={device.node_local_rank(comm)} "
                 f"hydra={os.environ.get('MPI_LOCALRANKID')}")
"""


@pytest.fixture
def probe(tmp_path):
    path = tmp_path / "probe.py"
    path.write_text(PROBE)
    return path


def probe_reports(probe):
    return [path.read_text() for path in sorted(probe.parent.glob("report.*"))]


def test_each_rank_sees_its_gpu_under_mpiexec(probe):
    result, _ = launch("-n", "3", "--gpus", "5,6", "--script", probe, "report")
    assert result.returncode == 0, result.stderr
    assert probe_reports(probe) == [
        "rank=0 size=3 cvd='' local=0 hydra=0",
        "rank=1 size=3 cvd='5' local=1 hydra=1",
        "rank=2 size=3 cvd='6' local=2 hydra=2",
    ]


def test_gpus_none_hides_every_gpu(probe):
    result, _ = launch("-n", "3", "--gpus", "none", "--script", probe, "report")
    assert result.returncode == 0, result.stderr
    reports = probe_reports(probe)
    assert len(reports) == 3 and all("cvd=''" in report for report in reports), reports


def test_a_cpu_training_run_through_the_launcher(tmp_path):
    log = tmp_path / "run.h5"
    result, _ = launch("-n", "3", "--gpus", "none", "train", "--iterations", "20", "--quiet",
                       "--log", log, timeout=100)
    assert result.returncode == 0, result.stderr
    with h5py.File(log, "r", swmr=True) as f:
        assert f.attrs["world_size"] == 3
        assert f.attrs["num_workers"] == 2


def test_a_bad_option_fails_every_rank_with_one_message(tmp_path):
    result, _ = launch("-n", "3", "--gpus", "0,1", "train", "--lr", "-1", "--quiet",
                       "--log", tmp_path / "run.h5")
    assert result.returncode == 2
    assert result.stderr.count("lr must be > 0") == 1


def test_a_killed_rank_ends_the_job_promptly(probe):
    result, elapsed = launch("-n", "3", "--gpus", "none", "--script", probe, "die")
    assert result.returncode != 0
    assert elapsed < 60, f"the job ran {elapsed:.0f} s after a rank died"


def test_a_rank_that_cannot_bind_aborts_the_whole_job(probe):
    # Ranks 1 and 2 are beyond this one-entry map: they must abort the job, not leave rank 0
    # waiting in MPI_Init.
    mpiexec = Path(sys.executable).parent / "mpiexec"
    start = time.monotonic()
    result = subprocess.run(
        [str(mpiexec), "-n", "3", sys.executable, str(LAUNCHER), "--bind=-", "--",
         sys.executable, "-m", "mpi4py", str(probe), "sleep"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, env=mpi_env(), timeout=90)
    assert result.returncode != 0
    assert "beyond the GPU map" in result.stderr
    assert time.monotonic() - start < 60


def test_timeout_stops_every_rank(probe):
    result, elapsed = launch("-n", "3", "--gpus", "none", "--timeout", "5", "--script", probe,
                             "sleep")
    assert result.returncode == 124
    assert "ran past --timeout 5 s" in result.stderr
    assert elapsed < 60
