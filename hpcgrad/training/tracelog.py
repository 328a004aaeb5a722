"""The per-iteration traffic log: one HDF5 file per run, written by rank 0.

Layout (``docs/log-format.md`` is the full description)::

    /                 attrs: format="hpcgrad-traffic", format_version=1, algorithm, ...
    /steps/iteration  (n,)            int64
    /steps/bytes_up   (n, workers)    int64   each worker's uplink MPI buffer length
    /steps/bytes_down (n,)            int64   the downlink MPI buffer length
    /steps/loss       (n, workers)    float64 each worker's training loss
    /steps/time_<phase> (n, ranks)    float64 seconds, phases in attrs["phases"]
    /eval/iteration, /eval/loss, /eval/accuracy   (e,)
    /final_params_sha256  ()      S64     SHA-256 of the final parameters (empty until the end)
    /messages/...     raw uplink/downlink bytes of the first N iterations (--record-messages)

Rows are appended in batches and flushed, in SWMR mode, so a killed run leaves
a file readable up to its last flush, and a reader may follow a live run
(``h5py.File(path, "r", swmr=True)``).  The file uses HDF5's v110 format,
which HDF5 1.10+ tools can read.

The file belongs to one run: the writer holds an exclusive lock on it
(:mod:`hpcgrad.training.logfile`) from before it is created until it is closed.  A write
that fails (a full disk, a quota, a lost file system) raises :class:`LogWriteError`, one line
naming the file, instead of HDF5's chained error stack.
"""

from __future__ import annotations

import json

import h5py
import numpy as np

from ..errors import ConfigError, LogWriteError
from . import logfile
from .phases import PHASES

FORMAT = "hpcgrad-traffic"
FORMAT_VERSION = 1


def _width(per_worker, num_workers: int) -> tuple:
    if isinstance(per_worker, bool) or per_worker is None:
        return (num_workers,) if per_worker else ()
    return (int(per_worker),)


def _resizable(group, name, shape_tail, dtype, chunk_rows=256):
    return group.create_dataset(name, shape=(0, *shape_tail), maxshape=(None, *shape_tail),
                                dtype=dtype, chunks=(chunk_rows, *shape_tail))


def _append(dataset, rows) -> None:
    rows = np.asarray(rows, dtype=dataset.dtype)
    start = dataset.shape[0]
    dataset.resize(start + rows.shape[0], axis=0)
    dataset[start:] = rows


class TrafficLog:
    """Writer of one run's log.  Create it on rank 0 only."""

    def __init__(self, path, *, attrs: dict, num_workers: int, world_size: int,
                 record_messages: int = 0, step_fields: dict | None = None,
                 claim: logfile.LogClaim | None = None, overwrite: bool = False,
                 validation: bool = False):
        """``claim``: the path already claimed (:func:`logfile.claim`, which the writer then
        owns and releases on close); otherwise the writer claims ``path`` itself, refusing
        an existing file unless ``overwrite``.  ``validation``: the run evaluates a
        validation set too (group ``/validation``, :meth:`append_validation`)."""
        self.claim = claim or logfile.claim(path, overwrite=overwrite, default=False)
        self.path = self.claim.path
        try:
            # HDF5's own flock would also block readers of the live log: the claim locks.
            self.file = h5py.File(self.path, "w", libver=("v110", "v110"), locking=False)
        except OSError as exc:
            self.claim.release(remove=True)
            raise ConfigError(f"cannot create the log file {str(self.path)!r}: "
                              f"{_reason(exc)}") from None
        try:
            with self._writing():
                self._create(self.file, attrs, num_workers, world_size, record_messages,
                             step_fields or {}, validation)
        except BaseException:
            self._close_quietly()
            self.claim.release(remove=True)
            raise

    def _create(self, f, attrs, num_workers, world_size, record_messages, step_fields,
                validation=False) -> None:
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["phases"] = json.dumps(PHASES)
        for key, value in attrs.items():
            if isinstance(value, str):
                value = str(value)  # numpy str_ has no HDF5 conversion
            elif not isinstance(value, (int, float, bool, np.number)):
                value = json.dumps(value)
            f.attrs[key] = value
        steps = f.create_group("steps")
        self.iteration = _resizable(steps, "iteration", (), np.int64)
        self.bytes_up = _resizable(steps, "bytes_up", (num_workers,), np.int64)
        self.bytes_down = _resizable(steps, "bytes_down", (), np.int64)
        self.loss = _resizable(steps, "loss", (num_workers,), np.float64)
        self.times = {p: _resizable(steps, f"time_{p}", (world_size,), np.float64)
                      for p in PHASES}
        # Algorithm-specific columns (nnz_up, union_size, ...): docs/log-format.md.  A field's
        # width is True (one column per worker), False (one value) or a number of columns
        # (the runtime's ``incast``, one per server).
        self.extra = {name: _resizable(steps, name, _width(per_worker, num_workers), dtype)
                      for name, (per_worker, dtype) in step_fields.items()}
        ev = f.create_group("eval")
        self.eval = {k: _resizable(ev, k, (), np.int64 if k == "iteration" else np.float64, 16)
                     for k in ("iteration", "loss", "accuracy")}
        # Apart from /eval, so that nothing reading /eval mistakes it for the test set.
        self.validation = None
        if validation:
            val = f.create_group("validation")
            self.validation = {k: _resizable(val, k, (), np.int64 if k == "iteration"
                                             else np.float64, 16)
                               for k in ("iteration", "loss", "accuracy")}
        # Written once at the end (SWMR allows writing, not creating): the digest every
        # replica agreed on, so two logs show at a glance whether two runs ended equal.
        self.final_params = f.create_dataset("final_params_sha256", shape=(), dtype="S64")
        self.record_messages = record_messages
        if record_messages:
            msg = f.create_group("messages")
            msg.attrs["description"] = ("uplink_index[i, w] = (offset, length) of worker w+1's "
                                        "message of recorded iteration i in uplink_bytes")
            self.msg_iteration = _resizable(msg, "iteration", (), np.int64, 16)
            self.up_index = _resizable(msg, "uplink_index", (num_workers, 2), np.int64, 16)
            self.up_bytes = _resizable(msg, "uplink_bytes", (), np.uint8, 1 << 16)
            self.down_index = _resizable(msg, "downlink_index", (2,), np.int64, 16)
            self.down_bytes = _resizable(msg, "downlink_bytes", (), np.uint8, 1 << 16)
        f.swmr_mode = True
        f.flush()

    def _writing(self):
        return _WriteErrors(self.path)

    def append_steps(self, iterations, bytes_up, bytes_down, loss, times: dict,
                     extra: dict | None = None) -> None:
        with self._writing():
            self._append_steps(iterations, bytes_up, bytes_down, loss, times, extra)

    def _append_steps(self, iterations, bytes_up, bytes_down, loss, times, extra) -> None:
        for name, dataset in self.extra.items():
            _append(dataset, extra[name])
        _append(self.iteration, iterations)
        _append(self.bytes_up, bytes_up)
        _append(self.bytes_down, bytes_down)
        _append(self.loss, loss)
        for phase, dataset in self.times.items():
            _append(dataset, times[phase])
        self.flush()

    def append_eval(self, iteration: int, loss: float, accuracy: float) -> None:
        with self._writing():
            for key, value in (("iteration", iteration), ("loss", loss),
                               ("accuracy", accuracy)):
                _append(self.eval[key], [value])
            self.flush()

    def append_validation(self, iteration: int, loss: float, accuracy: float) -> None:
        with self._writing():
            for key, value in (("iteration", iteration), ("loss", loss),
                               ("accuracy", accuracy)):
                _append(self.validation[key], [value])
            self.flush()

    def append_messages(self, iteration: int, uplinks, downlink) -> None:
        """Record one iteration's uplink messages (list, worker order) and downlink."""
        with self._writing():
            self._append_messages(iteration, uplinks, downlink)

    def _append_messages(self, iteration: int, uplinks, downlink) -> None:
        offset = self.up_bytes.shape[0]
        index = []
        for message in uplinks:
            index.append((offset, len(message)))
            offset += len(message)
        _append(self.up_bytes, np.concatenate([np.asarray(m, np.uint8) for m in uplinks]))
        _append(self.up_index, [index])
        _append(self.down_index, [(self.down_bytes.shape[0], len(downlink))])
        _append(self.down_bytes, downlink)
        _append(self.msg_iteration, [iteration])
        self.flush()

    def finish(self, params_sha256: str) -> None:
        with self._writing():
            self.final_params[()] = params_sha256.encode()
            self.flush()

    def flush(self) -> None:
        with self._writing():
            self.file.flush()

    def close(self) -> None:
        """Close the file (HDF5 writes its last metadata here: a failure raises
        :class:`LogWriteError`) and release the run's lock on it."""
        try:
            if self.file.id.valid:
                with self._writing():
                    self.file.close()
        finally:
            self.claim.release()

    def abandon(self) -> None:
        """Close after a failure elsewhere: errors closing are not reported over it."""
        self._close_quietly()
        self.claim.release()

    def _close_quietly(self) -> None:
        try:
            if self.file.id.valid:
                self.file.close()
        except Exception:  # noqa: BLE001 -- the error being handled is the one to report
            pass


def _reason(exc: Exception) -> str:
    """HDF5's message cut to its cause: ``No space left on device`` rather than the stack."""
    text = str(exc)
    for cause in ("No space left on device", "Disk quota exceeded", "Read-only file system",
                  "Input/output error", "Permission denied"):
        if cause in text:
            return cause
    return text.strip().splitlines()[0][:200] if text.strip() else type(exc).__name__


class _WriteErrors:
    """Turn an error from HDF5 while writing into one :class:`LogWriteError` line."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        # h5py raises OSError or, from a failed flush, RuntimeError (errno in the text).
        if (kind is not None and issubclass(kind, (OSError, RuntimeError))
                and not isinstance(exc, LogWriteError)):
            raise LogWriteError(f"cannot write the log file {str(self.path)!r}: "
                                f"{_reason(exc)}") from None
        return False
