"""The batch scripts in slurm/ on a real (private, single-node) Slurm cluster.

tests/slurm_cluster.py installs Debian's Slurm packages if they are missing (as root, with
apt-get; the tests skip with the reason where that is impossible), starts slurmctld and slurmd
with a private configuration for this module, and stops exactly those two daemons at the end,
also when a test fails. Every job is submitted at the start (they run side by side on the
node's 12 advertised CPUs); each test then waits for its own job and checks its final state
(``scontrol show job``: there is no accounting, so no sacct), its output and its HDF5 logs.
Jobs see the virtual environment through PATH, as after ``source .venv/bin/activate``.

Set HPCGRAD_TEST_SLURM_CPUS to change the advertised CPU count (concurrent ranks).
"""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest

from slurm_cluster import FINISHED_STATES, SlurmCluster, ensure_installed

ROOT = Path(__file__).resolve().parent.parent
SLURM_DIR = ROOT / "slurm"
FAULTY = Path(__file__).resolve().parent / "scripts" / "faulty_run.py"
TASKS = "--ntasks-per-node=3"  # 1 server + 2 workers per run
TWO = "--ntasks-per-node=2"  # 1 server + 1 worker, where 3 ranks would only cost more CPU
QUICK = {"HPCGRAD_ITERATIONS": "20", "HPCGRAD_EXTRA_ARGS": "--quiet"}
PREEMPT_RUN = {"HPCGRAD_ITERATIONS": "6000", "HPCGRAD_EXTRA_ARGS": "--quiet --seed 5"}
WAIT_S = 240  # per test; a quiet 2-core machine finishes every job in well under a minute

pytestmark = pytest.mark.timeout(600)  # the first test also installs and starts Slurm


def sweep_configs() -> list[list[str]]:
    """The CONFIGS lines of slurm/sweep.sbatch, each split into words."""
    text = (SLURM_DIR / "sweep.sbatch").read_text()
    block = re.search(r"^CONFIGS=\($(.*?)^\)$", text, re.S | re.M)
    assert block, "slurm/sweep.sbatch has no CONFIGS=( ... ) block"
    return [line.strip().strip('"').split() for line in block.group(1).splitlines()
            if line.strip() and not line.strip().startswith("#")]


def sweep_array_range() -> tuple[int, int]:
    text = (SLURM_DIR / "sweep.sbatch").read_text()
    match = re.search(r"^#SBATCH --array=(\d+)-(\d+)", text, re.M)
    assert match, "slurm/sweep.sbatch has no '#SBATCH --array=A-B' line"
    return int(match.group(1)), int(match.group(2))


# --------------------------------------------------------------------------- static checks


def test_sweep_array_range_matches_its_configs():
    first, last = sweep_array_range()
    assert (first, last) == (0, len(sweep_configs()) - 1)


def test_sweep_configs_name_known_algorithms():
    from hpcgrad.training.config import ALGORITHMS
    for words in sweep_configs():
        assert words[0] in ALGORITHMS, f"sweep line {' '.join(words)!r}: unknown algorithm"


@pytest.mark.parametrize("script", ["train.sbatch", "sweep.sbatch", "multinode.sbatch",
                                    "experiments.sbatch"])
def test_job_scripts_are_valid_bash_that_exits_with_sruns_status(script):
    path = SLURM_DIR / script
    subprocess.run(["bash", "-n", str(path)], check=True)
    text = path.read_text()
    assert text.startswith("#!/bin/bash\n# hpcgrad")
    assert 'exit "$rc"' in text and "rc=$?" in text
    assert 'OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"' in text
    assert "--kill-on-bad-exit=1" in text


def test_train_script_is_set_up_for_preemption():
    text = (SLURM_DIR / "train.sbatch").read_text()
    for line in ("#SBATCH --signal=USR1@", "#SBATCH --requeue", "#SBATCH --open-mode=append"):
        assert line in text
    assert "--preempt-signal USR1" in text and 'scontrol requeue "$SLURM_JOB_ID"' in text


# --------------------------------------------------------------------------- the cluster


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    reason = ensure_installed()
    if reason:
        pytest.skip(reason)
    cpus = int(os.environ.get("HPCGRAD_TEST_SLURM_CPUS", "12"))
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm-cluster"), cpus=cpus)
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def submit_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("slurm-submit")


def job_env(**extra) -> dict:
    """What an activated environment gives a job: the venv's bin first on PATH."""
    env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.update(extra)
    return env


def _wrapper(tmp: Path) -> Path:
    """A program for HPCGRAD_RUN: `hpcgrad train` with rank 1 exiting at step 3 (as if killed)."""
    path = tmp / "die_at_step_3.py"
    path.write_text(
        "import runpy, sys\n"
        f"faulty = {str(FAULTY)!r}\n"
        "assert sys.argv[1] == 'train'\n"
        "sys.argv = [faulty, 'die', '1', '--', *sys.argv[2:]]\n"
        "runpy.run_path(faulty, run_name='__main__')\n")
    return path


LOCAL_RANK_PROBE = """\
import os
from mpi4py import MPI
from hpcgrad.comm import device
comm = MPI.COMM_WORLD
local = device.node_local_rank(comm)
print(f"probe rank={comm.rank} size={comm.size} local={local} "
      f"slurm_localid={os.environ['SLURM_LOCALID']}", flush=True)
"""


@pytest.fixture(scope="session")
def jobs(cluster, submit_dir):
    wrapper = _wrapper(submit_dir)
    probe = submit_dir / "local_rank_probe.py"
    probe.write_text(LOCAL_RANK_PROBE)
    # name: (sbatch options and script, extra environment); submitted together, cheap ones
    # first (the scheduler is FIFO). Options must come before the script: sbatch passes what
    # follows the script to the script.
    specs = {
        "no-log-dir": ([TASKS, "train.sbatch"], dict(QUICK, HPCGRAD_RUNS="/proc/no-such-dir")),
        "no-python": ([TASKS, "train.sbatch"],
                      dict(QUICK, HPCGRAD_PYTHON="/nonexistent/bin/python")),
        "array-beyond-configs": ([f"--array={len(sweep_configs())}", TASKS, "sweep.sbatch"],
                                 QUICK),
        "bad-option": ([TWO, "train.sbatch"], dict(QUICK, HPCGRAD_EXTRA_ARGS="--lr -1")),
        "pmi-none": ([TASKS, "train.sbatch"], dict(QUICK, HPCGRAD_SRUN_MPI="none")),
        "rank-dies": ([TASKS, "train.sbatch"],
                      dict(HPCGRAD_ITERATIONS="100000", HPCGRAD_EXTRA_ARGS="--quiet",
                           HPCGRAD_RUN=f"{sys.executable} -m mpi4py {wrapper}")),
        "local-rank": ([TASKS, "train.sbatch"],
                       dict(QUICK, HPCGRAD_RUN=f"{sys.executable} -m mpi4py {probe}")),
        "train": ([TASKS, "train.sbatch"], QUICK),
        # The run that test_a_signalled_job_... signals and resumes, left alone.
        "uninterrupted": ([TASKS, "train.sbatch"], PREEMPT_RUN),
        "multinode": (["--nodes=1", TWO, "--cpus-per-task=1", "multinode.sbatch"], QUICK),
        "sweep": ([TWO, "sweep.sbatch"], QUICK),
    }
    ids = {}
    for name, (args, env) in specs.items():
        args = [str(SLURM_DIR / a) if a.endswith(".sbatch") else a for a in args]
        ids[name] = cluster.sbatch([f"--job-name=t-{name}", *args], env=job_env(**env),
                                   cwd=submit_dir)
    return ids


def finished(cluster, jobs, name, tasks=1):
    job = jobs[name]
    records = cluster.wait([job], timeout=WAIT_S, tasks={job: tasks})[job]
    return job, records


def output(submit_dir, job, task=None):
    path = submit_dir / (f"slurm-{job}.out" if task is None else f"slurm-{job}_{task}.out")
    return path.read_text(errors="replace") if path.exists() else f"<no {path.name}>"


def assert_state(record, state, exit_code, text):
    assert (record["JobState"], record["ExitCode"]) == (state, exit_code), (
        f"job {record['JobId']} ({record['JobName']}): {record['JobState']} "
        f"{record['ExitCode']}, expected {state} {exit_code}; output:\n{text}")


def assert_failed(record, text):
    assert record["JobState"] == "FAILED" and record["ExitCode"] != "0:0", (
        f"job {record['JobId']} ({record['JobName']}): {record['JobState']} "
        f"{record['ExitCode']}, expected FAILED with a non-zero exit code; output:\n{text}")


def test_train_job_completes_with_the_full_world(cluster, jobs, submit_dir):
    job, [record] = finished(cluster, jobs, "train")
    text = output(submit_dir, job)
    assert_state(record, "COMPLETED", "0:0", text)
    assert f"hpcgrad job {job}: 3 tasks on 1 node(s)" in text
    with h5py.File(submit_dir / "runs" / job / "train.h5", "r", swmr=True) as f:
        assert f.attrs["world_size"] == 3
        assert f.attrs["num_workers"] == 2
        assert f.attrs["algorithm"] == "signum-mv"
        assert f.attrs["iterations"] == 20


def test_sweep_array_runs_every_config_with_one_log_per_task(cluster, jobs, submit_dir):
    configs = sweep_configs()
    job, records = finished(cluster, jobs, "sweep", tasks=len(configs))
    assert len(records) == len(configs)
    for record in records:
        task = int(record["ArrayTaskId"])
        assert_state(record, "COMPLETED", "0:0", output(submit_dir, job, task))
    logs = sorted(p.name for p in (submit_dir / "runs" / job).iterdir())
    expected = sorted(f"task-{i}-{words[0]}.h5" for i, words in enumerate(configs))
    assert logs == expected
    for i, words in enumerate(configs):
        with h5py.File(submit_dir / "runs" / job / f"task-{i}-{words[0]}.h5", "r",
                       swmr=True) as f:
            assert f.attrs["algorithm"] == words[0]
            assert f.attrs["world_size"] == 2


def test_multinode_template_runs_on_one_node(cluster, jobs, submit_dir):
    job, [record] = finished(cluster, jobs, "multinode")
    assert_state(record, "COMPLETED", "0:0", output(submit_dir, job))
    with h5py.File(submit_dir / "runs" / job / "train.h5", "r", swmr=True) as f:
        assert f.attrs["world_size"] == 2


def test_a_bad_option_fails_the_job(cluster, jobs, submit_dir):
    job, [record] = finished(cluster, jobs, "bad-option")
    text = output(submit_dir, job)
    # Every rank exits with status 2, but srun --kill-on-bad-exit may already have terminated
    # the others (143) when it collects the status: any non-zero code will do.
    assert_failed(record, text)
    assert "lr must be > 0" in text


def test_a_rank_that_dies_fails_the_job_promptly(cluster, jobs, submit_dir):
    # 100000 iterations would run for many minutes: only the kill ends it within WAIT_S.
    job, [record] = finished(cluster, jobs, "rank-dies")
    text = output(submit_dir, job)
    assert_failed(record, text)
    assert "task 1: Exited with exit code 9" in text  # the injected death, not something else
    assert "srun exited with status" in text


def test_srun_without_pmi_is_refused_not_run_as_single_rank_jobs(cluster, jobs, submit_dir):
    job, [record] = finished(cluster, jobs, "pmi-none")
    text = output(submit_dir, job)
    assert_failed(record, text)
    assert "the launcher started 3 tasks, but each sees an MPI world of 1" in text
    assert "srun --mpi=pmi2" in text
    assert not (submit_dir / "runs" / job / "train.h5").exists()


def test_an_uncreatable_log_directory_fails_at_once(cluster, jobs, submit_dir):
    job, [record] = finished(cluster, jobs, "no-log-dir")
    text = output(submit_dir, job)
    assert_state(record, "FAILED", "2:0", text)
    assert "cannot create or write the log directory '/proc/no-such-dir/" in text
    assert "HPCGRAD_RUNS" in text


def test_a_python_without_hpcgrad_is_named(cluster, jobs, submit_dir):
    job, [record] = finished(cluster, jobs, "no-python")
    text = output(submit_dir, job)
    assert_state(record, "FAILED", "2:0", text)
    assert "'/nonexistent/bin/python'" in text and "cannot import hpcgrad" in text


def test_an_array_task_without_a_config_line_is_named(cluster, jobs, submit_dir):
    n = len(sweep_configs())
    job, [record] = finished(cluster, jobs, "array-beyond-configs")
    text = output(submit_dir, job, n)
    assert_state(record, "FAILED", "2:0", text)
    assert f"array task {n} has no line in CONFIGS" in text


def test_hpcgrads_node_local_rank_is_slurms_local_id(cluster, jobs, submit_dir):
    # What --device cuda picks its GPU by, without any launcher: the MPI shared-memory split.
    job, [record] = finished(cluster, jobs, "local-rank")
    text = output(submit_dir, job)
    assert_state(record, "COMPLETED", "0:0", text)
    lines = sorted(line for line in text.splitlines() if line.startswith("probe "))
    assert lines == [f"probe rank={r} size=3 local={r} slurm_localid={r}" for r in range(3)]


def _log_rows(path) -> int:
    try:
        with h5py.File(path, "r", swmr=True) as f:
            return f["steps/iteration"].shape[0]
    except (OSError, KeyError):
        return 0


def _final_hash(path) -> bytes:
    with h5py.File(path, "r") as f:  # closed cleanly: no swmr
        return f["final_params_sha256"][()]


def test_a_signalled_job_checkpoints_requeues_and_ends_as_if_uninterrupted(cluster, jobs,
                                                                           submit_dir):
    """`scancel --signal=USR1` (what --signal=USR1@120 sends before the time limit): every rank
    stops at one step and checkpoints, the script requeues the job, the next attempt resumes
    into its own log, and the run ends with the uninterrupted run's final parameters."""
    # Submitted here, not with the others: it must still be training when it is signalled.
    job = cluster.sbatch(["--job-name=t-preempted", TASKS, SLURM_DIR / "train.sbatch"],
                         env=job_env(**PREEMPT_RUN), cwd=submit_dir)
    runs = submit_dir / "runs" / job
    deadline = time.monotonic() + WAIT_S
    while _log_rows(runs / "train.h5") < 50:  # training runs on every rank
        assert time.monotonic() < deadline, output(submit_dir, job)
        time.sleep(0.2)
    cluster.run(["scancel", "--signal=USR1", job])
    while True:  # requeued: pending again, Restarts=1
        [record] = cluster.job_records(job)
        if record.get("Restarts") == "1" and record["JobState"] == "PENDING":
            break
        assert record["JobState"] not in FINISHED_STATES, output(submit_dir, job)
        assert time.monotonic() < deadline, output(submit_dir, job)
        time.sleep(0.3)
    # Slurm holds a requeued job for about two minutes (BeginTime), time for the node to
    # clean up the first attempt. A test need not wait that long, but it must let the first
    # attempt's step daemons end: released earlier, the job is killed unstarted ("Job
    # credential revoked", FAILED 1:0, no output).
    while subprocess.run(["pgrep", "-f", rf"slurmstepd: \[{job}\."],
                         capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, "the first attempt's steps did not end"
        time.sleep(0.3)
    time.sleep(1.0)
    cluster.run(["scontrol", "update", f"JobId={job}", "StartTime=now"])
    [record] = cluster.wait([job], timeout=WAIT_S)[job]
    text = output(submit_dir, job)
    assert_state(record, "COMPLETED", "0:0", text)
    stopped = int(re.search(r"hpcgrad: stopped by SIGUSR1 after step (\d+) of 6000", text)[1])
    assert f"attempt 1, resuming from runs/{job}/checkpoints/step-{stopped:08d}" in text
    with h5py.File(runs / "train.h5", "r") as f:  # the first attempt's log, closed cleanly
        assert list(f["steps/iteration"]) == list(range(stopped))
        assert f["final_params_sha256"][()] == b""
    whole, [whole_record] = finished(cluster, jobs, "uninterrupted")
    assert_state(whole_record, "COMPLETED", "0:0", output(submit_dir, whole))
    assert (_final_hash(runs / "train.restart-1.h5")
            == _final_hash(submit_dir / "runs" / whole / "train.h5") != b"")
