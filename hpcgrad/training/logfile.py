"""A log path belongs to one run: rank 0's exclusive claim on it.

:func:`claim` checks the path (its parent must be an existing directory, except the default
log directory ``runs/`` in the working directory, which is created), creates the file -- refusing an existing one unless
``overwrite`` -- and takes an exclusive lock on it that is held until :meth:`LogClaim.release`
(or until the process dies: the kernel drops it).  A second job on the same path is refused
whether it starts together with the first (``O_EXCL`` lets one create the file) or later (the
file exists, or with ``--overwrite`` the lock is held).

The lock is an open-file-description lock (Linux ``F_OFD_SETLK``), not ``flock``: HDF5 takes
``flock`` locks itself, so a writer holding ``flock`` would make every HDF5 reader of the live
log fail with "unable to lock file", and a classic POSIX ``lockf`` lock is dropped as soon as
HDF5 closes any descriptor of the file in this process.  An OFD lock survives both, and SWMR
readers (``h5py.File(path, "r", swmr=True)``) still open the live log.  The HDF5 writer itself
opens the file with ``locking=False``: HDF5's own lock is released when SWMR writing starts,
so it never protected a running log anyway.  Where the file system has no locks (``ENOLCK``),
the run goes on unlocked, as before.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from pathlib import Path

from ..errors import ConfigError

#: The directory of the default log path, the only parent a run creates.
DEFAULT_DIR = Path("runs")
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


def check_parent(path: Path, option: str, make_parent: bool) -> None:
    """Refuse a log path whose parent is missing or not a directory, naming the one at fault;
    with ``make_parent`` (the default ``runs/``) create it."""
    parent = path.parent
    if path.is_dir():
        raise ConfigError(f"{option} {str(path)!r} is a directory; give a file name")
    for ancestor in (parent, *parent.parents):
        if ancestor.exists() or ancestor.is_symlink():
            if not ancestor.is_dir():
                raise ConfigError(f"{option} {str(path)!r}: {str(ancestor)!r} is a file, not a "
                                  "directory")
            break
    if parent.is_dir():
        return
    if not make_parent:
        raise ConfigError(f"{option} {str(path)!r}: the directory {str(parent)!r} does not "
                          "exist; create it first")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the log directory {str(parent)!r}: "
                          f"{exc.strerror or exc}") from None


def check_path(path, *, overwrite: bool, default: bool, option: str = "--log") -> None:
    """The cheap early check (no file is created): parent and, unless ``overwrite``, existence.
    A default path is only created later, by :func:`claim`."""
    path = Path(path)
    if default:
        return
    check_parent(path, option, make_parent=path.parent == DEFAULT_DIR)
    if path.exists() and not overwrite:
        raise ConfigError(_exists(path, option))


def _exists(path: Path, option: str) -> str:
    return (f"{option} {str(path)!r} exists (a log belongs to one run); give another "
            "--log, or --overwrite to replace it")


class LogClaim:
    """An open descriptor of the log file holding the exclusive lock."""

    def __init__(self, path: Path, fd: int, created: bool):
        self.path, self.fd, self.created = path, fd, created

    def release(self, remove: bool = False) -> None:
        """Drop the lock; with ``remove``, delete the file if this claim created it (a run
        that failed before writing anything leaves no empty log behind)."""
        if self.fd is None:
            return
        if remove and self.created:
            try:
                os.unlink(self.path)
            except OSError:
                pass
        os.close(self.fd)
        self.fd = None


def _lock(fd: int) -> bool:
    """Take the exclusive lock without waiting; False if another process holds it."""
    try:
        if hasattr(fcntl, "F_OFD_SETLK"):
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack("hhqqi4x", fcntl.F_WRLCK, 0, 0, 0, 0))
        else:  # not Linux: flock (HDF5 readers of the live log then need locking=False)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        if exc.errno not in _NO_LOCKS:
            raise
    return True


def claim(path, *, overwrite: bool, default: bool, option: str = "--log") -> LogClaim:
    """Create (or, with ``overwrite``, open) the log file and lock it for this run.

    A default path (``default``) that exists already -- two runs started in the same second
    -- gets a ``-2``, ``-3``, ... suffix instead of being refused."""
    path = Path(path)
    check_parent(path, option, make_parent=default or path.parent == DEFAULT_DIR)
    for attempt in range(1, 100):
        candidate = path if attempt == 1 else path.with_stem(f"{path.stem}-{attempt}")
        flags = os.O_RDWR | os.O_CREAT | (0 if overwrite else os.O_EXCL)
        try:
            existed = candidate.exists()
            fd = os.open(candidate, flags | getattr(os, "O_CLOEXEC", 0), 0o644)
        except FileExistsError:
            if default:
                continue
            raise ConfigError(_exists(candidate, option)) from None
        except OSError as exc:
            raise ConfigError(f"cannot create the log file {str(candidate)!r}: "
                              f"{exc.strerror or exc}") from None
        try:
            locked = _lock(fd)
        except OSError as exc:
            os.close(fd)
            raise ConfigError(f"cannot lock the log file {str(candidate)!r}: "
                              f"{exc.strerror or exc}") from None
        if not locked:
            os.close(fd)
            raise ConfigError(f"{option} {str(candidate)!r} is in use: another run is writing "
                              "it; give this run another --log")
        return LogClaim(candidate, fd, created=not existed)
    raise ConfigError(f"cannot find a free log name next to {str(path)!r}")
