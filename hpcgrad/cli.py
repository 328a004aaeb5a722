"""Command line: ``hpcgrad train ...`` (run it under mpiexec or srun).

Failure policy, so that no rank is ever left waiting in a collective:

* setup errors (bad options, config file, world size, log path) are agreed on
  by all ranks; rank 0 prints one message and every rank exits with status 2;
  a checkpoint that cannot be written is agreed on likewise (status 1);
* any error after setup (a corrupt message, a NaN gradient, a bug) is printed
  by the rank that hit it, naming the rank, and the whole job is aborted with
  ``MPI_Abort`` (exit status 1).
"""

from __future__ import annotations

import argparse
import sys
import warnings

from . import __version__
from .options import add_arguments, owners_text
from .training.config import TrainConfig


def _per_algorithm(setting: str, algorithms=None) -> str | None:
    """``"0.001 for signum-mv, s3gd-mv; 0.1 for ..."``: an algorithm-dependent default, over the
    algorithms that have one (None if none has)."""
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
        shared = "read by " + owners_text(owners)
        return f"{default}; {shared}" if default else shared
    return text


def add_train_options(p: argparse.ArgumentParser, settings=None) -> None:
    """``hpcgrad train``'s arguments: ``--config`` and one per setting of ``settings`` (a
    ``TrainConfig`` class; default: the registries'), grouped as declared."""
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
    from mpi4py import MPI

    from .training import config as configuration
    from .comm.agreement import AgreedError, abort_job, agree
    from .options import IgnoredSettingWarning
    from .training.runtime import train
    from .workloads import footprint

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    try:
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
        summary = train(config, comm)
    except AgreedError as exc:  # every rank has it: one line from rank 0, no MPI_Abort
        if rank == 0:
            print(f"hpcgrad: error: {exc}", file=sys.stderr, flush=True)
        return exc.status
    except BaseException as exc:  # noqa: BLE001 -- any failure must take the whole job down
        abort_job(comm, rank, exc)
        return 1
    if summary is not None:
        print(summary.text(), flush=True)
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
