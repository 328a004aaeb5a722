"""Launch multi-rank programs from a (serial) test.

``run_mpi(3, ["train", ...])`` runs ``<mpiexec> -n 3 <python> -m mpi4py -m hpcgrad train ...``
and returns the finished :class:`subprocess.CompletedProcess` (text output captured). It never
hangs a test: past ``timeout`` seconds the whole launch is stopped and an ``AssertionError``
with the command and the tail of its output is raised.

``train_several(5, {name: (workdir, [train arguments]), ...})`` runs several ``hpcgrad train``
command lines one after another in one 5-rank job (tests/scripts/train_several.py) and returns
one :class:`subprocess.CompletedProcess` per run: for tests that need the logs of several short
runs of one world size, where starting the ranks (Python, torch, Numba) costs more than the runs.

Why this way:

* The ``mpiexec`` is the one next to ``sys.executable`` (the pip ``mpich`` package's). On Debian
  ``/usr/bin/mpiexec`` may be Open MPI, whose launcher makes pip-MPICH ranks abort ("unsupported
  PMI version PMIx"). Set ``HPCGRAD_TEST_MPIEXEC`` to use another launcher (e.g. a cluster's).
* ``python -m mpi4py`` turns an unhandled exception on any rank into ``MPI_Abort``, so the job
  ends instead of the other ranks waiting forever in a collective.
* ``OMP_NUM_THREADS=1``: several ranks share few cores; every rank's torch would otherwise start
  a thread per core.
* MPI variables of an enclosing launch (``PMI_*``, ``HYDRA_*``...) are removed from the child's
  environment, so a nested ``mpiexec`` starts its own job instead of joining the parent's.
* Hydra's proxy and ranks each run in their own session, so a timeout first sends SIGTERM to
  ``mpiexec`` (which then cleans up its ranks), and SIGKILL only if it does not exit.
* The default ``timeout`` (100 s) is below pytest-timeout's per-test limit (120 s in setup.cfg):
  a hung launch then fails its own test with a clear message, instead of pytest-timeout ending
  the whole pytest process (its thread method calls ``os._exit``). On Linux ``mpiexec`` also
  gets SIGTERM if the pytest process dies (``PR_SET_PDEATHSIG``), so no ranks are orphaned.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import Future
from pathlib import Path
from typing import Mapping, Sequence

__all__ = ["mpiexec_path", "mpi_env", "run_mpi", "train_several"]

#: Environment prefixes that belong to a running MPI launch; a child launch must not inherit them.
_LAUNCH_ENV_PREFIXES = ("PMI_", "PMIX_", "HYDRA_", "HYDI_", "MPIR_", "OMPI_", "PRTE_", "SLURM_STEP_")
_LAUNCH_ENV_NAMES = ("MPI_LOCALNRANKS", "MPI_LOCALRANKID")

_OUTPUT_TAIL = 4000


def mpiexec_path() -> str:
    """Path of the ``mpiexec`` to launch tests with.

    ``$HPCGRAD_TEST_MPIEXEC`` if set (a path or a command name on ``PATH``), else the ``mpiexec``
    in the same directory as ``sys.executable`` (the virtual environment's ``bin``; the path is
    deliberately not resolved through symlinks). Raises ``FileNotFoundError`` when there is none.
    """
    override = os.environ.get("HPCGRAD_TEST_MPIEXEC")
    if override:
        found = shutil.which(override)
        if found is None:
            raise FileNotFoundError(f"HPCGRAD_TEST_MPIEXEC={override!r} is not an executable")
        return found
    candidate = Path(sys.executable).parent / "mpiexec"
    if not (candidate.is_file() and os.access(candidate, os.X_OK)):
        raise FileNotFoundError(
            f"no mpiexec next to {sys.executable} (expected {candidate}); install the 'mpich' "
            "package into this environment or set HPCGRAD_TEST_MPIEXEC"
        )
    return str(candidate)


def mpi_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a child launch: ``os.environ`` without the variables of an enclosing MPI
    launch, ``OMP_NUM_THREADS=1`` unless already set in ``env``, then ``env`` on top."""
    child = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(_LAUNCH_ENV_PREFIXES) and key not in _LAUNCH_ENV_NAMES
    }
    child["OMP_NUM_THREADS"] = "1"
    if env:
        child.update({str(k): str(v) for k, v in env.items()})
    return child


def _load_prctl():
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


# Resolved here, not in the forked child: the child must not import anything.
_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child between fork and exec: SIGTERM it when the parent dies."""
    _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


def _tail(text: str | bytes | None) -> str:
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return text if len(text) <= _OUTPUT_TAIL else "...\n" + text[-_OUTPUT_TAIL:]


def _stop_group(proc: subprocess.Popen, grace: float = 5.0) -> tuple[str, str]:
    """Stop a launch started with ``start_new_session=True``; return what it printed."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            return proc.communicate(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    # Something outside the group still holds the pipes open; give up on the output.
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    proc.wait(timeout=10)
    return "", "<output lost: the launch's pipes stayed open after SIGKILL>"


def run_mpi(
    n: int,
    args: Sequence[str] = (),
    *,
    timeout: float = 100,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
    module: str | None = "hpcgrad",
    code: str | None = None,
    mpi4py: bool = True,
) -> subprocess.CompletedProcess:
    """Run a program on ``n`` MPI ranks and wait for it; never raises on a non-zero exit.

    What runs on every rank (``python -m mpi4py`` in front of each):

    * ``code`` given: ``python -m mpi4py -c <code> <args...>`` (``module`` is ignored);
    * else ``module`` (default ``"hpcgrad"``): ``python -m mpi4py -m <module> <args...>``;
    * ``module=None``: ``python -m mpi4py <args...>`` (``args`` start with a script path).

    ``mpi4py=False`` leaves out ``-m mpi4py``: the program's own failure handling is tested
    (``hpcgrad.torch`` installs one).

    ``env`` adds to / overrides the environment (see :func:`mpi_env`), ``cwd`` is the working
    directory. Output is captured as text in the result's ``stdout`` and ``stderr``; stdin is
    ``/dev/null``. If the launch runs longer than ``timeout`` seconds, it is stopped
    (SIGTERM, then SIGKILL, to the launcher's process group) and ``AssertionError`` is raised
    with the command line and the tail of its output.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    cmd = [mpiexec_path(), "-n", str(n), sys.executable] + (["-m", "mpi4py"] if mpi4py else [])
    if code is not None:
        cmd += ["-c", code]
    elif module is not None:
        cmd += ["-m", module]
    cmd += [str(a) for a in args]

    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=mpi_env(env),
        cwd=cwd,
        start_new_session=True,
        preexec_fn=_die_with_parent if _PRCTL is not None else None,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stdout, stderr = _stop_group(proc)
        raise AssertionError(
            f"MPI launch timed out after {timeout:g} s and was killed (a hang: a rank blocked "
            f"in a collective?)\ncommand: {subprocess.list2cmdline(cmd)}\n"
            f"--- stdout (tail) ---\n{_tail(stdout)}\n--- stderr (tail) ---\n{_tail(stderr)}"
        ) from None
    except BaseException:
        _stop_group(proc, grace=2.0)  # e.g. KeyboardInterrupt or pytest-timeout: no orphans
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


_TRAIN_SEVERAL = Path(__file__).resolve().parent / "scripts" / "train_several.py"


def train_several(
    n: int,
    runs: Mapping[str, tuple[str | os.PathLike, Sequence]],
    *,
    timeout: float = 100,
    env: Mapping[str, str] | None = None,
) -> dict[str, subprocess.CompletedProcess]:
    """Run ``hpcgrad train`` once per entry of ``runs`` (name -> (working directory, train
    arguments)), in that order, in one job of ``n`` ranks; return name -> result.

    A result's ``returncode`` is the status ``hpcgrad.cli.main`` returned for that run, the
    same on every rank (0, or 2 for an error all ranks agreed on); where the ranks disagree
    it is -1. A run the job never finished (an earlier run aborted it, or it aborted itself)
    gets the job's own exit status, or 1 where that was 0. ``stdout``/``stderr`` are what the
    run wrote there, rank 0's first, then rank 1's...; for a run the job never finished, that
    followed by the whole job's output.
    Raises like :func:`run_mpi` past ``timeout`` seconds (for the whole job).
    """
    if not runs:
        return {}
    batch = Path(tempfile.mkdtemp(prefix="train-several-"))
    spec = []
    for index, (name, (workdir, arguments)) in enumerate(runs.items()):
        spec.append([name, str(Path(workdir).resolve()), [str(a) for a in arguments],
                     str(batch / f"{index}.status")])
    spec_path = batch / "spec.json"
    spec_path.write_text(json.dumps(spec, indent=1))
    try:
        job = run_mpi(n, [_TRAIN_SEVERAL, spec_path], module=None, timeout=timeout, env=env,
                      cwd=spec[0][1])
        results = {}
        for name, _, arguments, status_file in spec:
            args = ["hpcgrad", "train", *arguments]
            out, err = (_rank_files(status_file, n, suffix) for suffix in (".out", ".err"))
            if os.path.exists(status_file):
                with open(status_file) as status:
                    statuses = json.load(status)["statuses"]
                code = statuses[0] if len(set(statuses)) == 1 else -1
            else:
                code = job.returncode or 1
                out, err = out + job.stdout, err + job.stderr
            results[name] = subprocess.CompletedProcess(args, code, out, err)
        return results
    finally:
        shutil.rmtree(batch, ignore_errors=True)


def _rank_files(prefix: str, n: int, suffix: str) -> str:
    """The text of ``PREFIX.0SUFFIX``, ``PREFIX.1SUFFIX``... (those that exist), in rank order."""
    texts = []
    for rank in range(n):
        path = f"{prefix}.{rank}{suffix}"
        if os.path.exists(path):
            with open(path, errors="replace") as f:
                texts.append(f.read())
    return "".join(texts)


def read_each(shared_runs, module_name: str, names, read) -> dict:
    """name -> a future of ``read(work directory, run)`` for each run ``(module_name, name)``
    of a shared job's results (``shared_runs``, e.g. tests/wire/conftest.py's ``doc_runs5``):
    a run that failed, or whose log does not read, fails only the tests that read it
    (``.result()`` raises again)."""
    futures = {}
    for name in names:
        futures[name] = Future()
        try:
            futures[name].set_result(read(*shared_runs[(module_name, name)]))
        except Exception as exc:  # noqa: BLE001 -- raised again by the test that reads it
            futures[name].set_exception(exc)
    return futures
