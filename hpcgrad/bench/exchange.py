"""``hpcgrad bench exchange``: one iteration's exchange of every algorithm vs a fp32 Allreduce.

Runs under ``mpiexec -n P`` (P >= 2).  For every algorithm registered in
:data:`hpcgrad.algorithms.REGISTRY` (at its defaults) and the :data:`VARIANTS`
of them (:func:`table`), every rank builds the algorithm from a
:class:`~hpcgrad.training.config.TrainConfig` and the exchange with
:func:`hpcgrad.training.exchange.create` -- the objects training runs -- and drives
``exchange.step`` with a synthetic random gradient: ``warmup`` untimed steps,
then ``repeat`` timed ones, each started after a barrier.  ``PhaseClock``
times the phases on every rank; rank 0 collects them.

Per step and phase the figure is the maximum over ranks (the slowest rank sets
the pace); ``total`` is, per step, the maximum over ranks of that rank's summed
phases (encode + gather + aggregate + bcast + decode + update).  Reported are
medians over the timed steps.  The reference is the fp32 ``MPI_Allreduce``
itself: the ``gather`` phase of the ``allreduce`` algorithm (its exchange also
copies the gradient and takes the SGD step; that total is reported too).
``ratio_vs_allreduce`` = algorithm total / Allreduce time.

Then rank 0 runs the kernel micro-benchmarks (:mod:`.micro`) at the same d and
M = P - 1 while the other ranks sleep, so that the ratios the targets name
(``pack_vs_copy``, ``vote_vs_floor``) come from the same run.
"""

from __future__ import annotations

import gc
import os
import sys

import numpy as np

from ..comm import waits
from .common import (BenchError, available_memory, check_fits, gib, idle_barrier, machine,
                     machine_line, median, write_json)

#: Settings measured besides each registered algorithm at its defaults: label -> the
#: settings (``algorithm`` names the registered one; a setting the configuration does not
#: have goes to ``TrainConfig.extra``).  A variant is listed right after its algorithm, and
#: only while that algorithm is registered.
VARIANTS = {
    "signsgd-mv": {"algorithm": "signum-mv", "momentum": 0.0},
    "ef-sgd-topk": {"algorithm": "ef-sgd", "compressor": "topk", "sparsity": 0.01},
    "ef-sgd-server": {"algorithm": "ef-sgd", "server_feedback": True},
}
BASELINE = "allreduce"
PHASE_NAMES = ("encode", "gather", "aggregate", "bcast", "decode", "update")

#: Bytes per coordinate a rank holds for one algorithm at most: gradient,
#: parameters, three fp32 state/scratch vectors (momentum SGD: buffer, scratch,
#: mean), and fp32 messages up and down; rank 0 also receives M fp32 messages.
_RANK_BYTES_PER_PARAM = 4 * (2 + 3 + 2)
_SERVER_BYTES_PER_WORKER_PARAM = 4


def table() -> dict:
    """label -> settings of everything ``bench exchange`` measures, in order: every registered
    algorithm (``hpcgrad.algorithms.REGISTRY``'s order) at its defaults, each followed by its
    :data:`VARIANTS`.  A new algorithm joins by being registered."""
    from ..algorithms import REGISTRY
    out = {}
    for name in REGISTRY:
        out[name] = {}
        out.update((label, settings) for label, settings in VARIANTS.items()
                   if settings["algorithm"] == name)
    return out


def selected(names=None) -> list[str]:
    """The labels to run: all of :func:`table` (or ``names``, checked)."""
    labels = table()
    if names is None:
        chosen = list(labels)
    else:
        unknown = [n for n in names if n not in labels]
        if unknown:
            from ..algorithms import REGISTRY
            raise BenchError(f"unknown algorithm(s) {', '.join(unknown)}; registered: "
                             f"{', '.join(REGISTRY)} (and the labels "
                             f"{', '.join(n for n in labels if n not in REGISTRY)})")
        chosen = list(dict.fromkeys(names))
    if BASELINE not in chosen:
        chosen.append(BASELINE)  # every ratio needs the Allreduce
    return chosen


def config_for(label: str, iterations: int, **overrides):
    """A resolved TrainConfig for the table entry ``label`` (or a plain algorithm name);
    ``overrides``: settings for every label but the Allreduce baseline (``servers``,
    ``hierarchy``)."""
    from ..training.config import TrainConfig
    settings = dict(table().get(label, {}))
    algorithm = settings.pop("algorithm", label)
    if algorithm != BASELINE:
        settings.update(overrides)
    fields = set(TrainConfig.__dataclass_fields__)
    known = {k: v for k, v in settings.items() if k in fields}
    cfg = TrainConfig(algorithm=algorithm, iterations=max(1, iterations), quiet=True, **known)
    cfg.extra.update({k: v for k, v in settings.items() if k not in fields})
    return cfg.resolved()


def memory_per_rank(d: int, world_size: int, rank: int, micro_workers=()) -> int:
    need = _RANK_BYTES_PER_PARAM * d + 64 * 1024 * 1024
    if rank == 0:
        need += _SERVER_BYTES_PER_WORKER_PARAM * d * (world_size - 1)
        if micro_workers:
            from . import micro
            need = max(need, micro.memory_needed(d, micro_workers, context=False))
    return need


def check_memory(comm, d: int, micro_workers=()) -> None:
    """Raise :class:`BenchError` on every rank of a node whose ranks would not fit."""
    from mpi4py import MPI
    local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.Get_rank())
    try:
        need = local.allreduce(memory_per_rank(d, comm.Get_size(), comm.Get_rank(),
                                               micro_workers))
        ranks = local.Get_size()
    finally:
        local.Free()
    check_fits(need, available_memory(),
               f"--params {d:,} on {ranks} rank(s) of this node",
               "use a smaller --params or fewer ranks per node")
    return ranks


def _measure(comm, name: str, d: int, warmup: int, repeat: int, seed: int,
             overrides=None) -> dict:
    from ..training import hierarchy, sharding
    from ..comm.device import Host
    from ..training.exchange import PhaseClock
    from ..kernels import cpu

    rank, size = comm.Get_rank(), comm.Get_size()
    config = config_for(name, warmup + repeat, **(overrides or {}))
    servers = config.servers
    alg = sharding.create(config, [d], size - servers)
    rng = np.random.default_rng([seed, rank])
    grads = (rng.standard_normal(d, dtype=np.float32) if rank >= servers
             else np.zeros(d, np.float32))
    params = np.random.default_rng(seed).standard_normal(d, dtype=np.float32)
    step_exchange = hierarchy.create(comm, alg, Host(), params)
    cpu.warm_up()
    clock = PhaseClock(warmup + repeat)
    for step in range(warmup + repeat):
        comm.Barrier()
        step_exchange.begin(step)
        clock.start(step)
        step_exchange.step(grads, clock)
    # the compute column is unused here, and no benchmarked algorithm averages errors
    times = clock.times[warmup:, 1: 1 + len(PHASE_NAMES)]
    bytes_up = received = None
    if servers > 1:  # every server's last step: M uplink lengths, then the downlink's
        links = comm.gather(step_exchange.link_bytes().copy() if rank < servers else None,
                            root=0)
        if rank == 0:
            links = np.stack(links[:servers])
            bytes_up = int(links[:, :-1].sum(axis=0).max())
            received = int(links[0, :-1].sum())
            bytes_down = int(links[:, -1].sum())
    else:
        if rank == 0:
            bytes_up = int(np.max(step_exchange.bytes_up()))
        if rank == 0 and name != BASELINE:
            # rank 0's incast of the last step: the workers' messages, or the leaders' (node)
            links = alg.step_stats.get("bytes_inter_node")
            received = int(np.sum(links if links is not None else step_exchange.bytes_up()))
        bytes_down = int(step_exchange.bytes_down())
    del step_exchange, alg, grads, params
    gc.collect()
    everyone = comm.gather(times, root=0)
    if rank != 0:
        return {}
    stack = np.stack(everyone)  # ranks x steps x phases
    per_phase = stack.max(axis=0)  # steps x phases: slowest rank per step and phase
    totals = stack.sum(axis=2).max(axis=0)  # steps: slowest rank's exchange
    result = {"total_s": median(totals),
              "phases_s": {p: median(per_phase[:, i]) for i, p in enumerate(PHASE_NAMES)},
              "server_phases_s": {p: median(stack[0, :, i]) for i, p in enumerate(PHASE_NAMES)},
              "bytes_up_per_worker": bytes_up, "bytes_down": bytes_down,
              "servers": servers, "bytes_received_by_server": received}
    if name == BASELINE:
        result["allreduce_s"] = median(per_phase[:, PHASE_NAMES.index("gather")])
    return result


def run(comm, d: int, names=None, warmup: int = 2, repeat: int = 10, micro_repeat: int = 7,
        with_micro: bool = True, seed: int = 0, servers: int = 1, hierarchy: str = "flat",
        ranks_per_node: int = 0) -> dict | None:
    """Measure; rank 0 returns the figures, the other ranks ``None``."""
    from ..comm.agreement import agree
    size, rank = comm.Get_size(), comm.Get_rank()
    workers = size - servers
    names = agree(comm, lambda: selected(names), "choosing the algorithms")
    overrides = {"servers": servers} if servers > 1 else {}
    if hierarchy == "node":
        from ..comm import topology
        agree(comm, lambda: topology.check(topology.discover(comm, ranks_per_node)),
              "checking the nodes")
        overrides.update(hierarchy="node", ranks_per_node=ranks_per_node)
    local_ranks = agree(comm, lambda: check_memory(comm, d, (workers,) if with_micro else ()),
                        "checking memory")
    results = {}
    for name in names:
        results[name] = _measure(comm, name, d, warmup, repeat, seed, overrides)
    micro_result = None
    if with_micro:
        if rank == 0:
            from . import micro
            micro_result = micro.run(d, workers=(workers,), repeat=micro_repeat, context=False)
        idle_barrier(comm)
    if rank != 0:
        return None
    reference = results[BASELINE]["allreduce_s"]
    out = {"params": d, "world_size": size, "workers": workers, "servers": servers,
           "warmup": warmup,
           "repeat": repeat, "allreduce_s": reference,
           "allreduce_exchange_s": results[BASELINE]["total_s"],
           "algorithms": {}, "machine": machine(), "ranks_on_node0": local_ranks,
           "mpich_heavy_yield": os.environ.get("MPIR_CVAR_ENABLE_HEAVY_YIELD"),
           "mpi_waits": waits.decision(), "hierarchy": hierarchy,
           "ranks_per_node": ranks_per_node,
           # under --hierarchy node signum-mv's leaders combine votes, the others forward
           # (training/hierarchy.py); analyze project reads this as analyze reads a log's
           "hierarchy_mode": "combining" if hierarchy == "node" else None}
    for name in names:
        r = results[name]
        r["ratio_vs_allreduce"] = r["total_s"] / reference
        out["algorithms"][name] = r
    out["ratio_vs_allreduce"] = {n: out["algorithms"][n]["ratio_vs_allreduce"] for n in names}
    if micro_result is not None:
        out["micro"] = micro_result
        out["pack_vs_copy"] = micro_result["pack_vs_copy"]
        out["vote_vs_floor"] = micro_result["vote_vs_floor"]
        out["decode_vs_copy"] = micro_result["decode_vs_copy"]
    return out


def report(out: dict) -> str:
    ms = lambda s: f"{1e3 * s:8.2f}"  # noqa: E731
    lines = [f"hpcgrad bench exchange: d = {out['params']:,}, {out['world_size']} ranks "
             f"({out['workers']} workers + {out.get('servers', 1)} server"
             f"{'s' if out.get('servers', 1) > 1 else ''}), median of {out['repeat']} steps after "
             f"{out['warmup']} warm-up",
             f"machine: {machine_line(out['machine'])}",
             f"fp32 MPI_Allreduce: {1e3 * out['allreduce_s']:.2f} ms (allreduce exchange with "
             f"copy + SGD step: {1e3 * out['allreduce_exchange_s']:.2f} ms)",
             "",
             "ms per step, slowest rank per phase; total = slowest rank's sum"]
    cores = out["machine"].get("cores") or 0
    if cores and out.get("ranks_on_node0", 0) > cores:
        lines[3:3] = [f"note: {out['ranks_on_node0']} ranks share {cores} cores: every "
                      "collective costs time slices, so read the ratios as this machine's, "
                      "not the algorithms' (docs/benchmarks.md); MPI waits: "
                      f"{out.get('mpi_waits') or out.get('mpich_heavy_yield') or 'unset'}"]
    header = f"{'algorithm':12s}" + "".join(f"{p:>10s}" for p in PHASE_NAMES) + \
        f"{'total':>10s}{'vs Allreduce':>14s}{'MB up/worker':>14s}{'MB to rank 0':>14s}"
    if out.get("hierarchy") == "node":
        lines.insert(4, f"--hierarchy node, --ranks-per-node {out.get('ranks_per_node') or 0} "
                        "(0: as MPI reports): every algorithm but the Allreduce goes through "
                        "node leaders")
    lines.append(header)
    for name, r in out["algorithms"].items():
        up = (r["bytes_up_per_worker"] or float("nan")) / 1e6
        into = (r.get("bytes_received_by_server") or float("nan")) / 1e6
        lines.append(f"{name:12s}" + "".join(f"{ms(r['phases_s'][p]):>10s}" for p in PHASE_NAMES)
                     + f"{ms(r['total_s']):>10s}{r['ratio_vs_allreduce']:>13.3f}x{up:>14.3f}"
                     + f"{into:>14.3f}")
    if "micro" in out:
        from . import micro
        lines += ["", micro.report(out["micro"])]
    return "\n".join(lines)


def main(args) -> int:
    """``hpcgrad bench exchange`` on every rank (see :mod:`hpcgrad.bench.cli`)."""
    from mpi4py import MPI

    from ..comm.agreement import SetupError, agree
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    try:
        d = agree(comm, lambda: _check_args(args, size), "checking the options")
        out = run(comm, d, args.algorithm, args.warmup, args.repeat, args.micro_repeat,
                  not args.no_micro, servers=getattr(args, "servers", 1),
                  hierarchy=getattr(args, "hierarchy", "flat"),
                  ranks_per_node=getattr(args, "ranks_per_node", 0))
    except SetupError as exc:
        if rank == 0:
            print(f"hpcgrad bench exchange: error: {exc}", file=sys.stderr, flush=True)
        return 2
    if out is not None:
        print(report(out), flush=True)
        if args.json:
            write_json(args.json, out)
            print(f"wrote {args.json}", flush=True)
    return 0


def _check_args(args, size: int) -> int:
    from .common import parse_count
    if size < 2:
        raise BenchError(f"needs at least 2 MPI ranks (rank 0 is the server, ranks 1..N-1 are "
                         f"workers); got a world of size {size}. Run e.g. mpiexec -n 5 hpcgrad "
                         "bench exchange --params 1M")
    d = parse_count(args.params)
    if d >= 2**63:
        raise BenchError(f"--params {d} is too large")
    servers = getattr(args, "servers", 1)
    if not 1 <= servers < size:
        raise BenchError(f"--servers {servers} with {size} ranks: needs 1 <= S < P (at least "
                         "one worker)")
    if servers > 1 and d < 64 * servers:
        raise BenchError(f"--servers {servers}: --params {d:,} cannot be cut into {servers} "
                         "shards of at least one 64-coordinate word each")
    if args.repeat < 1 or args.warmup < 0 or args.micro_repeat < 1:
        raise BenchError("--repeat and --micro-repeat must be >= 1, --warmup >= 0")
    if args.json:
        import os
        parent = os.path.dirname(os.path.abspath(args.json))
        if not os.path.isdir(parent):
            raise BenchError(f"--json {args.json}: directory {parent} does not exist")
    # Say so before allocating anything: the memory check proper runs collectively next.
    need = memory_per_rank(d, size, 0)
    if need > available_memory():
        raise BenchError(f"--params {d:,} needs about {gib(need)} of memory on rank 0 alone, "
                         f"more than the {gib(available_memory())} available on this node; use "
                         "a smaller --params")
    return d
