"""``hpcgrad bench overhead``: what the runtime adds per step outside compute, codec and MPI.

Every rank runs :func:`hpcgrad.training.runtime.train` with a tiny model: once to warm
up (imports, Numba cache, torch), then ``pairs`` times with N1 = N/3 and with N
iterations, timing the wall clock around each call.  The log gives every
rank's phase times (compute, encode, gather, aggregate, bcast, decode, update)
per step.  Per rank::

    overhead per step = ((wall(N) - wall(N1)) - (phases(N) - phases(N1))) / (N - N1)

Start-up and the final evaluation and replica check are the same in both runs
and cancel; what remains is the loop's own work between the phase timers:
per-step log records, the every-``flush_every`` Gather of records and the HDF5
append, loop control.  Per rank the median over the pairs is taken (the
difference of two wall times is noisy on a shared machine and can come out
slightly negative); the figure reported is the maximum over ranks.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time

import numpy as np

from .common import BenchError, machine, machine_line, median, write_json

DEFAULT_ALGORITHMS = ("signum-mv", "fp32-ps")


def _train_once(comm, algorithm: str, iterations: int, hidden: int, log: str) -> float:
    from ..training.config import TrainConfig
    from ..training.runtime import train
    config = TrainConfig(algorithm=algorithm, iterations=iterations, hidden=hidden,
                         eval_every=0, quiet=True, log=log).resolved()
    comm.Barrier()
    start = time.perf_counter()
    train(config, comm)
    return time.perf_counter() - start


def _phase_sums(log: str, ranks: int):
    """Per rank: total seconds in all phases over the run; and mean ms per phase."""
    import h5py

    from ..training.tracelog import PHASES
    with h5py.File(log, "r") as f:
        times = np.stack([f[f"steps/time_{p}"][...] for p in PHASES], axis=-1)  # n x ranks x P
    return times.sum(axis=(0, 2)), {p: 1e3 * float(times[:, :, i].max(axis=1).mean())
                                    for i, p in enumerate(PHASES)}


def measure(comm, algorithm: str, iterations: int, hidden: int, tmp: str,
            pairs: int = 3) -> dict | None:
    short = max(5, iterations // 3)
    if iterations <= short:
        raise BenchError(f"--iterations must be > {short}")
    rank, size = comm.Get_rank(), comm.Get_size()
    warm = os.path.join(tmp, f"{algorithm}-warm.h5")
    _train_once(comm, algorithm, short, hidden, warm)
    runs = []  # (short wall, long wall, short log, long log) per pair
    for k in range(pairs):
        logs = [os.path.join(tmp, f"{algorithm}-{k}-{n}.h5") for n in (short, iterations)]
        walls = [_train_once(comm, algorithm, n, hidden, log)
                 for n, log in zip((short, iterations), logs)]
        runs.append((walls, logs))
    everyone = comm.gather([walls for walls, _ in runs], root=0)
    if rank != 0:
        return None
    steps = iterations - short
    overhead = np.zeros((size, pairs))
    wall = np.zeros((size, pairs))
    phases = np.zeros((size, pairs))
    for k, (_, logs) in enumerate(runs):
        short_phases, _ = _phase_sums(logs[0], size)
        long_phases, mean_ms = _phase_sums(logs[1], size)
        for r in range(size):
            w_short, w_long = everyone[r][k]
            wall[r, k] = (w_long - w_short) / steps
            phases[r, k] = (long_phases[r] - short_phases[r]) / steps
    overhead = wall - phases
    per_rank = [{"wall_ms_per_step": 1e3 * median(wall[r]),
                 "phases_ms_per_step": 1e3 * median(phases[r]),
                 "overhead_ms_per_step": 1e3 * median(overhead[r])} for r in range(size)]
    return {"iterations": [short, iterations], "pairs": pairs, "per_rank": per_rank,
            "overhead_ms_per_step": max(r["overhead_ms_per_step"] for r in per_rank),
            "median_rank_overhead_ms_per_step": median([r["overhead_ms_per_step"]
                                                        for r in per_rank]),
            "wall_ms_per_step": max(r["wall_ms_per_step"] for r in per_rank),
            "phase_ms_per_step_slowest_rank": mean_ms}


def report(out: dict) -> str:
    lines = [f"hpcgrad bench overhead: {out['world_size']} ranks, tiny MLP "
             f"(hidden {out['hidden']}, {out['num_params']:,} parameters)",
             f"machine: {machine_line(out['machine'])}",
             f"{'algorithm':12s}{'wall ms/step':>14s}{'overhead ms/step (max rank)':>30s}"
             f"{'median rank':>13s}   target <= 1 ms"]
    for name, r in out["algorithms"].items():
        lines.append(f"{name:12s}{r['wall_ms_per_step']:14.3f}{r['overhead_ms_per_step']:30.3f}"
                     f"{r['median_rank_overhead_ms_per_step']:13.3f}")
        lines.append("    per rank: " + ", ".join(
            f"{k}: {p['overhead_ms_per_step']:.3f}" for k, p in enumerate(r["per_rank"])))
    return "\n".join(lines)


def main(args) -> int:
    from mpi4py import MPI

    from ..comm.agreement import SetupError, agree
    from .exchange import selected
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()

    def check():
        if size < 2:
            raise BenchError(f"needs at least 2 MPI ranks; got a world of size {size}. Run e.g. "
                             "mpiexec -n 3 hpcgrad bench overhead")
        if args.iterations < 10 or args.hidden < 1 or args.pairs < 1:
            raise BenchError("--iterations must be >= 10, --hidden and --pairs >= 1")
        names = list(args.algorithm or DEFAULT_ALGORITHMS)
        selected(names)  # checks they are registered
        return names

    tmp = None
    try:
        names = agree(comm, check, "checking the options")
        tmp = comm.bcast(tempfile.mkdtemp(prefix="hpcgrad-overhead-") if rank == 0 else None)
        results = {}
        for name in names:
            results[name] = measure(comm, name, args.iterations, args.hidden, tmp,
                                    args.pairs)
    except SetupError as exc:
        if rank == 0:
            print(f"hpcgrad bench overhead: error: {exc}", file=sys.stderr, flush=True)
        return 2
    finally:
        if rank == 0 and tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    if rank == 0:
        from ..workloads import datasets, models
        data = datasets.synthetic(0)
        model = models.mlp(data.num_features, args.hidden, data.num_classes)
        out = {"world_size": size, "hidden": args.hidden,
               "num_params": sum(p.numel() for p in model.parameters()),
               "algorithms": results, "machine": machine(),
               "overhead_ms_per_step": max(r["overhead_ms_per_step"] for r in results.values())}
        print(report(out), flush=True)
        if args.json:
            write_json(args.json, out)
            print(f"wrote {args.json}", flush=True)
    return 0
