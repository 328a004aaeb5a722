"""Offline analysis of hpcgrad traffic logs (``docs/analysis.md``).

One concept per module: ``reader`` (open a log, tidy pandas tables), ``summary`` (per-run
figures and comparisons), ``plots`` (PNG figures, matplotlib Agg), ``projection`` (alpha-beta
cost model of Gather/Bcast/Allreduce and its least-squares fit), ``cli`` (``hpcgrad analyze``).
Nothing here imports MPI.  Importing this package is cheap (``hpcgrad train`` builds the
``analyze`` parser): pandas, h5py and matplotlib load when a name below is first used.
"""

__all__ = ["LogError", "RunLog", "open_log", "open_logs"]


def __getattr__(name):
    if name in __all__:
        from . import reader
        return getattr(reader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
