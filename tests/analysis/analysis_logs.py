"""Helpers of the analysis tests: synthetic logs and running ``hpcgrad analyze``.

``make_log`` writes a log directly with :class:`hpcgrad.training.tracelog.TrafficLog`, the writer the
runtime uses, with chosen sizes, phase times and optional extra ``/steps`` datasets.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
import traceback

import h5py
import numpy as np

from hpcgrad.training.tracelog import PHASES, TrafficLog


def attrs_for(algorithm="fp32-ps", workers=2, d=1000, iterations=None, **more) -> dict:
    attrs = {"algorithm": algorithm, "world_size": workers + 1, "num_workers": workers,
             "num_params": d, "iterations": iterations, "seed": 0,
             "config": {"algorithm": algorithm}, "uplink_codec": "fp32",
             "downlink_codec": "fp32", "header_bytes": 32, "mpi_library": "test",
             "hostnames": ["h"] * (workers + 1), "devices": ["cpu"] * (workers + 1),
             "created": "2026-01-01T00:00:00+0000", "log_path": "x.h5"}
    attrs.update(more)
    return attrs


def make_log(path, *, algorithm="fp32-ps", workers=2, d=1000, n=10, iterations=None,
             bytes_up=None, bytes_down=None, times=None, evals=((10, 1.0, 0.5),),
             extra=None, close=True):
    """Write a synthetic log.  ``bytes_up`` (n, M) / ``bytes_down`` (n,) default to fp32
    messages; ``times`` maps phase -> (n, W) seconds (default 1 ms everywhere); ``extra`` maps
    dataset name -> array added to ``/steps`` after the writer closed the file."""
    w = workers + 1
    up = np.full((n, workers), 32 + 4 * d) if bytes_up is None else np.asarray(bytes_up)
    down = np.full(n, 32 + 4 * d) if bytes_down is None else np.asarray(bytes_down)
    times = times or {}
    log = TrafficLog(path, attrs=attrs_for(algorithm, workers, d,
                                           n if iterations is None else iterations),
                     num_workers=workers, world_size=w)
    if n:
        loss = np.linspace(2.0, 1.0, n)[:, None] + np.zeros((1, workers))
        log.append_steps(np.arange(n), up, down, loss,
                         {p: times.get(p, np.full((n, w), 1e-3)) for p in PHASES})
    for it, loss_, acc in evals:
        log.append_eval(it, loss_, acc)
    if not close:
        return log
    log.close()
    if extra:
        with h5py.File(path, "a") as f:
            for name, values in extra.items():
                f["steps"].create_dataset(name, data=np.asarray(values))
    return path


def analyze(*args, subprocess_=False, timeout=60) -> subprocess.CompletedProcess:
    """``hpcgrad analyze ARGS``: in this process through ``hpcgrad.cli.main`` (fast), or with
    ``subprocess_=True`` as a user runs it, ``python -m hpcgrad analyze ARGS`` (no mpiexec).
    In process, an exception escaping ``main`` is caught and its traceback put in ``stderr``
    (the tests check that none is printed)."""
    argv = ["analyze", *map(str, args)]
    if subprocess_:
        import mpirun
        return subprocess.run([sys.executable, "-m", "hpcgrad", *argv], capture_output=True,
                              text=True, timeout=timeout, env=mpirun.mpi_env())
    from hpcgrad.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as exc:  # argparse usage errors
            rc = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # noqa: BLE001 -- reported as a test failure by the caller
            traceback.print_exc()
            rc = 1
    return subprocess.CompletedProcess(argv, rc, out.getvalue(), err.getvalue())


def assert_clean_error(result, *fragments) -> None:
    """Exit status 2, a one-line ``error:`` message containing ``fragments``, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert "hpcgrad analyze: error:" in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)
