"""Several ``hpcgrad train`` command lines, one after another, in one MPI job.

Usage (every rank, through ``python -m mpi4py``; tests/mpirun.py's ``train_several`` does it):

    mpiexec -n N python -m mpi4py tests/scripts/train_several.py SPEC.json

SPEC.json is a list of ``[name, workdir, [train arguments...], status file]``. For each entry
every rank changes into ``workdir`` and calls ``hpcgrad.cli.main(["train", *arguments])`` -- the
command line's own code: argument parsing, the settings agreed on by all ranks, the signal
policy, training, the log -- with its stdout and stderr (file descriptors 1 and 2) going to
``STATUS.RANK.out`` and ``STATUS.RANK.err``; once every rank has returned, rank 0 writes every
rank's return value to the status file.

Why: a launch spends most of a short run starting its ranks (Python, torch, NumPy, h5py, Numba
and MPI on each): measured on the shared 2-core machine, a 5-rank job of one 6-step run costs
about 25 s of CPU and each further run in the same job about 1 s; a 3-rank job about 14 s.
Tests that only need the logs of several short runs pay the start once here.  The runs do not
depend on each other: ``hpcgrad train`` seeds everything it draws from (checked: a signum-mv
run after an fp32-ps run and a refused one in the same job logs the same messages and final
parameters as a launch of its own; tests/test_golden_runs.py runs its recorded cases one
after another in one process too).

A run that ends with an agreed error (status 2, every rank alike) is recorded and the next one
starts; an error that aborts the job (MPI_Abort, the failure policy's answer to a bug or a
corrupt message) ends the whole job, and the runs after it have no status file.
"""

import contextlib
import json
import os
import sys

# The signal policy first, as ``python -m hpcgrad train`` installs it (hpcgrad/__main__.py).
from hpcgrad.comm import interrupts

interrupts.install()

from hpcgrad.cli import main  # noqa: E402


@contextlib.contextmanager
def output_to(prefix: str):
    """Send this process's stdout and stderr (file descriptors 1 and 2: Python's prints, and
    what C libraries such as MPICH and HDF5 write) to ``PREFIX.out`` and ``PREFIX.err``."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        for fd, suffix in ((1, ".out"), (2, ".err")):
            target = os.open(prefix + suffix, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(target, fd)
            os.close(target)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)


def run_one(workdir: str, arguments: list) -> int:
    os.chdir(workdir)
    try:
        status = main(["train", *arguments])
    except SystemExit as exc:  # argparse: every rank alike, before MPI
        status = exc.code if isinstance(exc.code, int) else 1
    return 0 if status is None else status


def run_all(spec_path: str) -> None:
    with open(spec_path) as spec:
        runs = json.load(spec)
    comm = None
    rank = interrupts.launcher_rank() or 0
    for name, workdir, arguments, status_file in runs:
        with output_to(f"{status_file}.{rank}"):
            status = run_one(workdir, arguments)
        if comm is None:
            from mpi4py import MPI  # started by the first run's main()

            comm = MPI.COMM_WORLD
        # Every rank has returned from this run (and agrees on its status) before the next
        # starts: the status file then says the whole job, not only rank 0, got this far.
        statuses = comm.allgather(status)
        if comm.Get_rank() == 0:
            with open(status_file, "w") as out:
                out.write(json.dumps({"name": name, "statuses": statuses}))
            print(f"train-several: {name}: statuses {statuses}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    run_all(sys.argv[1])
