"""``init()``: the job, its settings, and the failure policy of a script that owns its loop.

Settings are ``hpcgrad train``'s: keyword names are the option names (``algorithm``,
``sparsity``, ``lr``, ``log``, ``checkpoint_every``, ...; ``hpcgrad train --help`` lists them
with ``-`` for ``_``), and an optional TOML ``config`` file is read as ``--config`` is, the
keywords winning.  They are validated by the same code (:func:`hpcgrad.training.config.build`),
as a setup step all ranks agree on, and every rank must pass the same ones.

The failure policy is ``hpcgrad train``'s (``hpcgrad/cli.py``): :func:`init` installs a
``sys.excepthook`` so that an exception nobody caught, on any rank, prints one line naming the
rank and ends the whole job with ``MPI_Abort`` -- no rank is left waiting in a collective for
a rank that died.  Errors every rank raises alike (:class:`AgreedError`: a failed setup step,
or a step the ranks found inconsistent, see ``control.py``) are printed once, by rank 0, and
every rank exits with status 1 without aborting.
"""

from __future__ import annotations

import difflib
import sys
import warnings
from dataclasses import dataclass

from mpi4py import MPI

from ..comm.agreement import SetupError, abort_job, agree
from ..errors import ConfigError, HpcgradError
from ..options import IgnoredSettingWarning
from ..training import config as configuration
from ..training.config import TrainConfig
from ..training.runtime import check_world


class AgreedError(HpcgradError):
    """An error every rank of the job raised alike (so nothing needs aborting)."""


@dataclass
class Context:
    """One rank's view of the job: ``comm`` (rank 0 is the server, ranks 1..M the workers)
    and the validated settings ``config`` (a :class:`~hpcgrad.training.config.TrainConfig`)."""

    comm: object
    config: TrainConfig

    @property
    def rank(self) -> int:
        return self.comm.Get_rank()

    @property
    def size(self) -> int:
        return self.comm.Get_size()

    @property
    def is_server(self) -> bool:
        return self.rank == 0

    @property
    def worker(self) -> int | None:
        """This rank's worker index ``rank - 1`` (0..M-1), None on the server."""
        return None if self.is_server else self.rank - 1

    @property
    def num_workers(self) -> int:
        return self.size - 1


def _check_names(settings: dict) -> None:
    unknown = [k for k in settings if k not in configuration.FIELDS]
    if unknown:
        close = difflib.get_close_matches(unknown[0], configuration.FIELDS, n=1)
        raise ConfigError(f"unknown setting {unknown[0]!r}"
                          + (f" (did you mean {close[0]!r}?)" if close else "")
                          + "; the settings are hpcgrad train's options, '-' written '_' "
                            "(hpcgrad train --help)")


def _settings(config_file, settings: dict) -> TrainConfig:
    _check_names(settings)
    file_settings = configuration.load_file(config_file) if config_file else {}
    cfg = configuration.build(file_settings, settings)
    if cfg.servers != 1:
        raise ConfigError(f"servers={cfg.servers}: hpcgrad.torch runs one server (rank 0); "
                          "sharded servers are hpcgrad train's (--servers)")
    return cfg


_installed_comm = None


def install_failure_policy(comm) -> None:
    """An uncaught exception on any rank ends the job (``MPI_Abort``), naming the rank;
    an :class:`AgreedError` or a :class:`SetupError` (every rank has it) is printed by rank 0
    and every rank exits with status 1."""
    global _installed_comm
    if _installed_comm is comm:
        return
    _installed_comm = comm
    previous = sys.excepthook

    def hook(kind, exc, tb):
        if isinstance(exc, (AgreedError, SetupError)):
            if comm.Get_rank() == 0:
                print(f"hpcgrad: error: {exc}", file=sys.stderr, flush=True)
            return
        if issubclass(kind, KeyboardInterrupt) or comm.Get_size() == 1:
            previous(kind, exc, tb)
            return
        abort_job(comm, comm.Get_rank(), exc)

    sys.excepthook = hook


def init(comm=None, *, config: str | None = None, **settings) -> Context:
    """Collective over ``comm`` (default ``MPI.COMM_WORLD``): validate the settings on every
    rank, check the job (at least 2 ranks, the same settings everywhere) and install the
    failure policy.  Raises :class:`SetupError` on every rank alike if anything is wrong."""
    comm = comm or MPI.COMM_WORLD
    install_failure_policy(comm)
    with warnings.catch_warnings(record=True) as ignored:
        warnings.simplefilter("always", IgnoredSettingWarning)
        cfg = agree(comm, lambda: _settings(config, settings), "checking the settings")
    if comm.Get_rank() == 0:
        for warning in ignored:
            print(f"hpcgrad: warning: {warning.message}", file=sys.stderr, flush=True)
    script = " ".join(["python", *sys.argv]) if sys.argv and sys.argv[0] else "python SCRIPT"
    agree(comm, lambda: check_world(comm, cfg, script), "checking the job")
    return Context(comm, cfg)
