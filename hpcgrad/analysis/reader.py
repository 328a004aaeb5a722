"""Open an hpcgrad traffic log (``docs/log-format.md``) and return tidy tables.

``RunLog(path)`` opens a finished, live (still being written) or killed run alike: a finished
file is opened read-only as usual; one that HDF5 refuses because an SWMR writer holds it (a
live run) or held it and died (a killed run) is opened with ``h5py.File(path, "r",
swmr=True)``.  ``refresh()`` picks up
rows appended since, and every table uses ``n`` = the length of the *shortest* ``/steps``
dataset (datasets are refreshed one at a time while the writer may append between them).

Tables (pandas DataFrames):

* ``steps()``          one row per step: ``iteration``, ``bytes_up`` (mean bytes one worker sent
  that step), ``bytes_up_total`` (sum over workers), ``bytes_down``, ``loss`` (mean over
  workers), and every other ``/steps`` dataset that is not a phase time (e.g. ``nnz_up``,
  ``union_size``, ``bits`` of newer algorithms): 1-D ones as they are, per-worker ones as their
  mean over workers.
* ``worker_steps()``   one row per (step, worker): every per-worker ``(n, M)`` dataset.
* ``phase_times()``    one row per (step, rank): one column per phase, seconds.
* ``evals()``          one row per evaluation: ``iteration``, ``loss``, ``accuracy``.
* ``meta``             the root attributes as a dict, JSON strings decoded.

**Resumed runs.**  A run resumed from a checkpoint (``--resume``) writes a new log, a *part*
of the same run: every log records its ``run_id``, ``part`` and ``first_step``.  The
interrupted part may hold steps past the checkpoint that the next part ran again; nothing is
deleted from it.  Instead :func:`open_runs` stitches the logs it is given that share a
``run_id`` into one :class:`StitchedRun`, by step: a later part (in the order the parts were
started) supersedes an earlier part's steps from its ``first_step`` on, and its evaluations
after ``first_step``.  Given a part alone, the tables hold that part's steps, whose
``iteration`` starts at its ``first_step``.

Any problem (missing file, not HDF5, truncated or corrupt, not an hpcgrad log, unknown
``format_version``, missing datasets) raises :class:`LogError` naming the path.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from ..errors import HpcgradError

FORMAT = "hpcgrad-traffic"  # == hpcgrad.training.tracelog.FORMAT (not imported: keep start-up light)
SUPPORTED_VERSIONS = (1,)
REQUIRED_STEPS = ("iteration", "bytes_up", "bytes_down", "loss")
JSON_ATTRS = ("phases", "config", "hostnames", "devices")


class LogError(HpcgradError):
    """A file is not a readable hpcgrad traffic log; the message names the path and why."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


def _decode(value):
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        value = value.item()
    return value


class RunLog:
    """One run's log, open for reading.  Use as a context manager or call ``close()``."""

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.exists():
            raise LogError(path, "no such file")
        if self.path.is_dir():
            raise LogError(path, "is a directory, not a log file")
        self.file = self._open()
        try:
            self._check()
        except LogError:
            self.file.close()
            raise
        except (OSError, KeyError, ValueError, RuntimeError) as exc:
            self.file.close()
            raise LogError(path, f"cannot read the log's structure ({_short(exc)}); the file is "
                                 "truncated or corrupt") from None

    # ------------------------------------------------------------------ opening and checks

    def _open(self):
        """A plain read-only open first: it checks the file's length against the superblock
        (a truncated file fails here), and HDF5 refuses it only while an SWMR writer holds
        the file or after one died without closing it; then open with ``swmr=True``.  (An
        SWMR reader retries unreadable metadata for a long time, so a truncated or corrupt
        file must not get that far.)"""
        try:
            self.swmr = False
            return h5py.File(self.path, "r")
        except OSError as exc:
            problem = _short(exc)
            if "already open for write" not in str(exc):
                raise LogError(self.path, f"not a readable HDF5 file ({problem}); truncated, "
                                          "corrupt, or not an hpcgrad log") from None
        try:
            self.swmr = True  # live run, or a writer that was killed
            return h5py.File(self.path, "r", swmr=True)
        except OSError as exc:
            raise LogError(self.path, f"cannot open the log ({_short(exc)}); the file is "
                                      "corrupt") from None

    def _check(self) -> None:
        attrs = self.file.attrs
        fmt = _decode(attrs.get("format"))
        if fmt != FORMAT:
            what = "no 'format' attribute" if fmt is None else f"format = {fmt!r}"
            raise LogError(self.path, f"not an hpcgrad traffic log ({what}; expected "
                                      f"format = {FORMAT!r})")
        version = _decode(attrs.get("format_version"))
        if version not in SUPPORTED_VERSIONS:
            raise LogError(self.path, f"unsupported format_version {version!r}: this hpcgrad "
                                      "reads format_version "
                                      f"{', '.join(map(str, SUPPORTED_VERSIONS))}"
                                      " (written by a different hpcgrad version?)")
        meta = {}
        for key, value in attrs.items():
            value = _decode(value)
            if key in JSON_ATTRS and isinstance(value, str):
                try:
                    value = json.loads(value)
                except ValueError:
                    raise LogError(self.path, f"attribute {key!r} is not valid JSON") from None
            meta[key] = value
        self.meta = meta
        for key in ("algorithm", "world_size", "num_workers", "num_params", "phases"):
            if key not in meta:
                raise LogError(self.path, f"missing root attribute {key!r}")
        if "steps" not in self.file or "eval" not in self.file:
            raise LogError(self.path, "missing group /steps or /eval")
        self.phases = list(meta["phases"])
        needed = list(REQUIRED_STEPS) + [f"time_{p}" for p in self.phases]
        missing = [name for name in needed if name not in self.file["steps"]]
        if missing:
            raise LogError(self.path, "missing dataset(s) " +
                           ", ".join(f"/steps/{m}" for m in missing))
        self._steps = {name: ds for name, ds in self.file["steps"].items()
                       if isinstance(ds, h5py.Dataset)}
        self._evals = {name: ds for name, ds in self.file["eval"].items()
                       if isinstance(ds, h5py.Dataset)}
        for key in ("iteration", "loss", "accuracy"):
            if key not in self._evals:
                raise LogError(self.path, f"missing dataset /eval/{key}")
        self.refresh()

    def refresh(self) -> int:
        """See rows a live writer appended since opening; return the number of steps."""
        try:
            for ds in (*self._steps.values(), *self._evals.values()):
                ds.refresh()
        except (OSError, RuntimeError) as exc:
            raise LogError(self.path, f"cannot refresh ({_short(exc)})") from None
        self.n = min(ds.shape[0] for ds in self._steps.values())
        self.num_evals = min(ds.shape[0] for ds in self._evals.values())
        return self.n

    def close(self) -> None:
        if self.file.id.valid:
            self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return (f"RunLog({str(self.path)!r}, {self.algorithm}, {self.num_workers} workers, "
                f"{self.n} steps)")

    # ------------------------------------------------------------------ metadata

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def algorithm(self) -> str:
        return str(self.meta["algorithm"])

    @property
    def world_size(self) -> int:
        return int(self.meta["world_size"])

    @property
    def num_workers(self) -> int:
        return int(self.meta["num_workers"])

    @property
    def servers(self) -> int:
        """S of ``--servers S`` (logs of one-server runs, older ones too, have no attribute:
        1)."""
        return int(self.meta.get("servers", 1))

    def rank0_received(self) -> np.ndarray:
        """``(n,)`` bytes rank 0 (server 0) received per step: every worker's uplink with one
        server, its shard's (``/steps/incast`` column 0) with S > 1."""
        if self.servers > 1:
            return self.array("incast")[:, 0]
        return self.array("bytes_up").sum(axis=1)

    @property
    def num_params(self) -> int:
        return int(self.meta["num_params"])

    @property
    def iterations_requested(self) -> int:
        return int(self.meta.get("iterations", self.n))

    @property
    def topology(self) -> str:
        """``allreduce`` for the Allreduce baseline, ``ps`` (parameter server) otherwise."""
        return "allreduce" if self.algorithm == "allreduce" else "ps"

    @property
    def first_step(self) -> int:
        """The first logged iteration: 0, or the checkpoint's step for a resumed run."""
        return int(self.meta.get("first_step", 0))

    @property
    def complete(self) -> bool:
        """All requested steps are logged (a finished run; a live or killed one is not).
        A resumed run's log holds the steps from its checkpoint on."""
        return self.first_step + self.n >= self.iterations_requested

    def extra_step_datasets(self) -> list[str]:
        """``/steps`` datasets beyond format version 1's (e.g. ``nnz_up``), in file order."""
        base = set(REQUIRED_STEPS) | {f"time_{p}" for p in self.phases}
        return [name for name in self._steps if name not in base]

    # ------------------------------------------------------------------ raw arrays

    def array(self, name: str) -> np.ndarray:
        """``/steps/<name>`` as a numpy array of the first ``n`` rows."""
        if name not in self._steps:
            raise LogError(self.path, f"has no dataset /steps/{name}")
        return self._read(self._steps[name], self.n, f"/steps/{name}")

    def eval_array(self, name: str) -> np.ndarray:
        return self._read(self._evals[name], self.num_evals, f"/eval/{name}")

    def _read(self, ds, rows: int, what: str) -> np.ndarray:
        try:
            return np.asarray(ds[:rows])
        except (OSError, RuntimeError, ValueError) as exc:
            raise LogError(self.path, f"cannot read {what} ({_short(exc)}); the file is "
                                      "truncated or corrupt") from None

    def require_steps(self) -> None:
        """Raise :class:`LogError` if no step is logged yet."""
        if self.n == 0:
            raise LogError(self.path, "no steps logged (0 rows in /steps): the run has not "
                                      "flushed its first batch yet, or stopped before it")

    # ------------------------------------------------------------------ tables

    def _kind(self, ds) -> str:
        """'step' (n,), 'worker' (n, M), 'rank' (n, W) or 'other' by shape."""
        if ds.ndim == 1:
            return "step"
        if ds.ndim == 2 and ds.shape[1] == self.num_workers:
            return "worker"
        if ds.ndim == 2 and ds.shape[1] == self.world_size:
            return "rank"
        return "other"

    def steps(self) -> pd.DataFrame:
        """One row per step; see the module docstring for the columns."""
        cols = {"iteration": self.array("iteration")}
        up = self.array("bytes_up")
        cols["bytes_up"] = up.mean(axis=1) if up.shape[1] else np.zeros(self.n)
        cols["bytes_up_total"] = up.sum(axis=1)
        cols["bytes_down"] = self.array("bytes_down")
        loss = self.array("loss")
        cols["loss"] = loss.mean(axis=1) if loss.shape[1] else np.full(self.n, np.nan)
        for name in self.extra_step_datasets():
            ds = self._steps[name]
            kind = self._kind(ds)
            values = self.array(name)
            if kind == "step":
                cols[name] = values
            elif kind in ("worker", "rank"):
                cols[name] = values.mean(axis=1)
            elif values.ndim >= 2:  # unknown layout: flatten trailing dims, mean
                cols[name] = values.reshape(values.shape[0], -1).mean(axis=1)
        return pd.DataFrame(cols)

    def worker_steps(self) -> pd.DataFrame:
        """One row per (step, worker): ``iteration``, ``worker`` (rank), per-worker datasets."""
        m, n = self.num_workers, self.n
        iteration = self.array("iteration")
        cols = {"iteration": np.repeat(iteration, m), "worker": np.tile(np.arange(1, m + 1), n)}
        for name, ds in self._steps.items():
            if name != "iteration" and self._kind(ds) == "worker" and not name.startswith("time_"):
                cols[name] = self.array(name).reshape(-1)
        return pd.DataFrame(cols)

    def phase_times(self) -> pd.DataFrame:
        """One row per (step, rank): ``iteration``, ``rank``, one column per phase (seconds)."""
        w, n = self.world_size, self.n
        cols = {"iteration": np.repeat(self.array("iteration"), w),
                "rank": np.tile(np.arange(w), n)}
        for phase in self.phases:
            cols[phase] = self.array(f"time_{phase}").reshape(-1)
        return pd.DataFrame(cols)

    def phase_array(self, phase: str) -> np.ndarray:
        """``(n, W)`` seconds of one phase."""
        return self.array(f"time_{phase}")

    def evals(self) -> pd.DataFrame:
        """One row per evaluation: ``iteration`` (steps done), ``loss``, ``accuracy``."""
        return pd.DataFrame({k: self.eval_array(k) for k in ("iteration", "loss", "accuracy")})

    def meta_frame(self) -> pd.DataFrame:
        """The root attributes as a two-column table (JSON values re-encoded as text)."""
        rows = [(k, v if isinstance(v, (str, int, float, bool)) else json.dumps(v))
                for k, v in sorted(self.meta.items())]
        return pd.DataFrame(rows, columns=["attribute", "value"])


def _short(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


def open_log(path) -> RunLog:
    """Open one log; raises :class:`LogError` with a clear message if it is not one."""
    return RunLog(os.fspath(path))


def open_runs(paths) -> list[RunLog]:
    """Open logs and stitch the parts of each resumed run (those sharing a ``run_id``) into
    one :class:`StitchedRun`, in the order each run's first part was given; a log given twice
    counts once."""
    logs = open_logs(paths)
    groups: dict = {}
    seen = set()
    for log in logs:
        key = log.path.resolve()
        if key in seen:
            log.close()
            continue
        seen.add(key)
        run_id = log.meta.get("run_id")
        groups.setdefault(run_id if run_id else ("single", key), []).append(log)
    return [parts[0] if len(parts) == 1 else StitchedRun(parts) for parts in groups.values()]


def open_logs(paths) -> list[RunLog]:
    """Open several logs; on any error the ones already opened are closed first."""
    logs = []
    try:
        for p in paths:
            logs.append(open_log(p))
    except BaseException:
        for log in logs:
            log.close()
        raise
    return logs


class StitchedRun(RunLog):
    """The parts of one resumed run, read as one log (see the module docstring).

    Parts are ordered by when they started (``created_unix``, then ``part``); each part keeps
    its steps before the ``first_step`` of every later part, and its evaluations up to it.
    Metadata are the last part's (its ``iterations`` may have grown), with ``first_step`` the
    first part's and ``parts`` the paths.  The tables are those of :class:`RunLog`."""

    def __init__(self, parts: list[RunLog]):
        self.parts = sorted(parts, key=lambda p: (float(p.meta.get("created_unix", 0.0)),
                                                  int(p.meta.get("part", 0))))
        last = self.parts[-1]
        self.path = last.path
        self.file = last.file
        self.swmr = any(p.swmr for p in self.parts)
        self.phases = last.phases
        self.meta = {**last.meta, "first_step": self.parts[0].first_step,
                     "parts": [str(p.path) for p in self.parts]}
        common = [n for n in last._steps if all(n in p._steps for p in self.parts)]
        self._steps = {n: last._steps[n] for n in common}
        self._evals = last._evals
        self.refresh()

    @property
    def name(self) -> str:
        return f"{self.parts[0].name} ({len(self.parts)} parts)"

    def refresh(self) -> int:
        for part in self.parts:
            part.refresh()
        self._step_rows, self._eval_rows = [], []
        for i, part in enumerate(self.parts):
            cut = min((p.first_step for p in self.parts[i + 1:]), default=None)
            steps = part.array("iteration")
            evals = part.eval_array("iteration")
            self._step_rows.append(steps < cut if cut is not None else slice(None))
            self._eval_rows.append(evals <= cut if cut is not None else slice(None))
        self._step_order = np.argsort(self._join("iteration"), kind="stable")
        self._eval_order = np.argsort(self._join_evals("iteration"), kind="stable")
        self.n = len(self._step_order)
        self.num_evals = len(self._eval_order)
        return self.n

    def _join(self, name: str) -> np.ndarray:
        return np.concatenate([p.array(name)[rows] for p, rows in zip(self.parts,
                                                                        self._step_rows)])

    def _join_evals(self, name: str) -> np.ndarray:
        return np.concatenate([p.eval_array(name)[rows] for p, rows in zip(self.parts,
                                                                             self._eval_rows)])

    def array(self, name: str) -> np.ndarray:
        if name not in self._steps:
            raise LogError(self.path, f"has no dataset /steps/{name} in every part")
        return self._join(name)[self._step_order]

    def eval_array(self, name: str) -> np.ndarray:
        return self._join_evals(name)[self._eval_order]

    def missing_steps(self) -> int:
        """Steps between the first part's first step and the last logged one that no part
        holds (a part not given, or a part killed before its checkpoint's rows reached it)."""
        iteration = self.array("iteration")
        if not len(iteration):
            return 0
        return int(iteration[-1] - self.first_step + 1 - len(np.unique(iteration)))

    @property
    def complete(self) -> bool:
        iteration = self.array("iteration")
        return (len(iteration) > 0 and iteration[-1] + 1 >= self.iterations_requested
                and self.missing_steps() == 0)

    def close(self) -> None:
        for part in self.parts:
            part.close()
