"""Command line: ``hpcgrad train ...`` (run it under mpiexec or srun).

Failure policy of ``hpcgrad train``, so that no rank is ever left waiting in a collective. It
covers a rank's whole life: the signal policy (``comm/interrupts.py``) is installed before MPI
starts, and every statement after ``MPI_Init`` -- the heavy imports (torch, Numba) included --
runs inside it:

* argument errors (argparse) are printed by the launcher's rank 0 only; every rank exits with
  status 2 before MPI starts;
* setup errors (bad settings, config file, world size, log path) are agreed on by all ranks;
  rank 0 prints one message and every rank exits with status 2.  Settings are checked before
  torch and Numba are imported, so they are reported within about 2 s; a checkpoint that
  cannot be written is agreed on likewise (status 1);
* any other error, on any rank, at any time after MPI started (a failed import, a corrupt
  message, a NaN gradient, a bug) is printed once, naming the rank, and the whole job is
  aborted with ``MPI_Abort`` (exit status 1);
* SIGINT (Ctrl-C) aborts the job with one line, status 130;
* SIGTERM or ``--preempt-signal`` stops the run after a step all ranks agree on, with a
  checkpoint (``--checkpoint-dir``) and the log closed, status 143; before training started,
  it aborts the job, status 143.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import traceback
import warnings

from . import __version__
from .comm import interrupts, waits
from .comm.agreement import AgreedError, abort_job, all_started

# Nothing heavier than the standard library above: main() installs the signal policy before
# it imports the settings (NumPy and the algorithm registry), so that a Ctrl-C early in a
# rank's start-up finds the policy in place.


def _per_algorithm(setting: str, algorithms=None) -> str | None:
    """``"0.001 for signum-mv, s3gd-mv; 0.1 for ..."``: an algorithm-dependent default, over the
    algorithms that have one (None if none has)."""
    from .training.config import TrainConfig

    groups: dict = {}
    for name, cls in (algorithms or TrainConfig.ALGORITHMS).items():
        if setting in cls.defaults:
            groups.setdefault(cls.defaults[setting], []).append(name)
    if not groups:
        return None
    return "; ".join(f"{value} for {', '.join(names)}" for value, names in groups.items())


def _default_text(settings):
    """What the help says after an option of ``settings`` (a ``TrainConfig`` class): its
    default -- where the chosen algorithm decides it, the one value all agree on, else one per
    algorithm -- and, for a setting several algorithms or compressors share, who reads it."""
    def text(option):
        values = {cls.defaults[option.name] for cls in settings.ALGORITHMS.values()
                  if option.name in cls.defaults and not callable(cls.defaults[option.name])}
        if option.default_help is not None or not values:
            default = option.default_text()
        elif len(values) == 1:
            default = f"default: {values.pop()}"
        else:
            default = f"default per algorithm: {_per_algorithm(option.name, settings.ALGORITHMS)}"
        owners = settings.OWNERS.get(option.name, ())
        if len(owners) < 2:
            return default
        from .options import owners_text

        shared = "read by " + owners_text(owners)
        return f"{default}; {shared}" if default else shared
    return text


def add_train_options(p: argparse.ArgumentParser, settings=None) -> None:
    """``hpcgrad train``'s arguments: ``--config`` and one per setting of ``settings`` (a
    ``TrainConfig`` class; default: the registries'), grouped as declared."""
    from .options import add_arguments
    from .training.config import TrainConfig

    settings = settings or TrainConfig
    p.add_argument("--config", metavar="FILE",
                   help="TOML file of settings (keys as the long options, e.g. lr = 0.01); "
                        "command-line options override it")
    add_arguments(p, settings.SECTIONS, _default_text(settings))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hpcgrad",
        description="Communication-efficient distributed training over MPI. "
                    "Rank 0 is the parameter server, ranks 1..N-1 are workers.",
        epilog="Example: mpiexec -n 5 hpcgrad train --algorithm signum-mv --iterations 300")
    parser.add_argument("--version", action="version", version=f"hpcgrad {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train = sub.add_parser(
        "train", help="train the embedded task with a chosen algorithm (under mpiexec/srun)",
        description="Train a model (default: a small MLP on generated data, no download; "
                    "--model and --dataset choose others) across MPI ranks and write a "
                    "per-iteration HDF5 traffic log. Run under mpiexec -n N (N >= 2).")
    add_train_options(train)
    train.set_defaults(func=cmd_train)
    from .analysis.cli import register as register_analyze  # parser only: no pandas, no MPI
    register_analyze(sub)
    from .bench.cli import register as register_bench  # parser only: no MPI, no Numba
    register_bench(sub)
    return parser


def _cli_settings(args) -> dict:
    skip = {"command", "func", "config"}
    return {k: v for k, v in vars(args).items() if k not in skip}


def cmd_train(args) -> int:
    interrupts.install()  # before MPI starts: no signal may find a rank without the policy
    try:
        MPI = interrupts.start_mpi()  # MPI_Init
    except ImportError as exc:  # on every rank alike, and no MPI to abort with
        interrupts.mpi_not_coming()
        if interrupts.launcher_rank() in (None, 0):
            print(f"hpcgrad: error: cannot start MPI: {exc}", file=sys.stderr, flush=True)
        return 1

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    try:
        all_started(comm, interrupts.start_timeout())
        return _train(comm, rank, args)
    except AgreedError as exc:  # every rank has it: one line from rank 0, no MPI_Abort
        if rank == 0:
            print(f"hpcgrad: error: {exc}", file=sys.stderr, flush=True)
        return exc.status
    except interrupts.Stopped as stop:
        # Every rank got here after the same step, the state saved and rank 0's log closed.
        if rank == 0:
            print(f"hpcgrad: {stop}", file=sys.stderr, flush=True)
        # Leave together and through MPI_Finalize, not MPI_Abort: a launcher that kills the
        # job when one task exits non-zero (srun --kill-on-bad-exit) must find rank 0 done,
        # and MPICH's shared-memory segments are removed for the requeued job (same job id).
        comm.Barrier()
        MPI.Finalize()
        interrupts.mpi_not_coming()
        return interrupts.EXIT_PREEMPTED
    except KeyboardInterrupt:  # not from a signal (the policy handles those): a raise
        interrupts.abort(interrupts.EXIT_INTERRUPTED, lambda rank, size: (
            f"hpcgrad: interrupted on rank {rank}; aborting all {size} ranks"), rank)
    except BaseException as exc:  # noqa: BLE001 -- any failure must take the whole job down
        abort_job(comm, rank, exc)
    return 1


def _train(comm, rank, args) -> int:
    """``hpcgrad train`` once MPI runs: settings first (light imports only), then the run."""
    from .comm.agreement import agree
    from .options import IgnoredSettingWarning
    from .training import config as configuration
    from .workloads import footprint

    file_settings = agree(comm, lambda: configuration.load_file(args.config)
                          if args.config else {}, "reading the config file")
    with warnings.catch_warnings(record=True) as ignored:
        warnings.simplefilter("always", IgnoredSettingWarning)
        config = agree(comm, lambda: footprint.check(  # the memory they imply, too
            configuration.build(file_settings, _cli_settings(args)), comm.Get_size()),
            "checking the settings")
    if rank == 0:  # every rank checked the same settings: one copy of each warning
        for warning in ignored:
            print(f"hpcgrad: warning: {warning.message}", file=sys.stderr, flush=True)
    if config.preempt_signal:
        interrupts.install([config.preempt_signal])
    _test_hook_fail_at_start(rank)
    from .training.runtime import train  # torch, Numba: seconds, after the settings passed

    summary = train(config, comm)
    if summary is not None:
        print(summary.text(), flush=True)
    return 0


def _test_hook_fail_at_start(rank: int) -> None:
    """``HPCGRAD_TEST_FAIL_AT_START=R`` makes rank R raise ``ImportError`` where torch is
    imported: a start-up failure on one rank, for the tests (tests/training/test_interrupts.py)
    and the stress script. One environment variable, read nowhere else."""
    if os.environ.get("HPCGRAD_TEST_FAIL_AT_START") == str(rank):
        raise ImportError(f"HPCGRAD_TEST_FAIL_AT_START={rank}: injected start-up failure")


def _parse(argv):
    parser = build_parser()
    # Every rank parses the same arguments: only the launcher's rank 0 prints what argparse
    # prints (usage errors, --help), so a mistake is shown once, not once per rank.
    quiet = interrupts.launcher_rank() not in (None, 0)
    with contextlib.ExitStack() as stack:
        if quiet:
            stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
            stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
        return parser.parse_args(argv)


def _fail_before_mpi(exc: BaseException) -> None:
    """A ``hpcgrad train`` rank failed before ``MPI_Init`` (an import of the settings, say):
    start MPI only to end the whole job, as a failure after it would."""
    try:
        interrupts.start_mpi()  # MPI_Init, so that MPI_Abort reaches every rank
    except BaseException:  # noqa: BLE001 -- no MPI: exit; all_started() ends the others
        interrupts.mpi_not_coming()
    if isinstance(exc, KeyboardInterrupt):
        interrupts.abort(interrupts.EXIT_INTERRUPTED, lambda rank, size: (
            f"hpcgrad: interrupted on rank {rank}; aborting all {size} ranks"))
    detail = "".join(traceback.format_exception(exc)).rstrip()
    interrupts.abort(1, lambda rank, size: f"hpcgrad: error on rank {rank}: {detail}\n"
                                           f"hpcgrad: aborting all {size} ranks")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] in (["train"], ["bench"]):  # before MPI_Init: MPICH reads it there
        waits.prefer_yield()
    if argv[:1] != ["train"]:
        args = _parse(argv)
        return args.func(args)
    interrupts.install()  # first: before the settings are imported, and before MPI_Init
    try:
        args = _parse(argv)
    except SystemExit:  # argparse: every rank alike, so every rank exits, none waits
        raise
    except BaseException as exc:  # noqa: BLE001
        _fail_before_mpi(exc)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
