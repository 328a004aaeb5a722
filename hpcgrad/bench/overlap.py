"""``hpcgrad bench overlap``: would bucketed Igatherv/Ibcast pipelining speed up the exchange?

An experiment, not the exchange training runs: it times the signum-mv
communication core -- workers' packed sign messages gathered to rank 0, the
majority vote (the compiled kernel), the result broadcast -- done

* whole: blocking ``Gatherv``, one vote, ``Bcast`` (what ``exchange.py`` does);
* in B buckets: rank 0 posts ``Igatherv`` for every bucket, then for each bucket
  waits for it, votes it and posts its ``Ibcast``, so that the vote of bucket b
  overlaps the transfers of buckets b+1.. and the broadcast of bucket b-1.
  Workers post all ``Igatherv`` and ``Ibcast`` and wait for them all.

Each step starts after a barrier; the figure is the slowest rank's time,
median over the steps.  Overlap can only gain where transfers progress while
rank 0 votes: spare cores, or a network that moves the data by itself.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from .common import BenchError, machine, machine_line, median, parse_count, write_json


def _buckets(nbytes: int, count: int):
    """Byte ranges (multiples of 8 long, except none) splitting ``nbytes`` into ``count``."""
    words = -(-nbytes // 8)
    edges = [8 * (words * b // count) for b in range(count + 1)]
    return [(a, b) for a, b in zip(edges, edges[1:]) if b > a]


def _run_buckets(comm, message, d, ranges, repeat, warmup):
    from mpi4py import MPI

    from ..kernels import cpu
    from ..kernels.generic import TIE_POSITIVE
    rank, size = comm.Get_rank(), comm.Get_size()
    server = rank == 0
    recv, results = [], []
    for a, b in ranges:
        width = b - a
        raw = np.zeros(size * width, dtype=np.uint8) if server else None
        recv.append(raw)
        results.append(np.zeros(width, dtype=np.uint8))
    counts = [np.array([0] + [b - a] * (size - 1)) for a, b in ranges]
    displs = [np.arange(size) * (b - a) for a, b in ranges]
    empty = np.zeros(0, dtype=np.uint8)
    times = []
    for step in range(warmup + repeat):
        comm.Barrier()
        start = time.perf_counter()
        if len(ranges) == 1:
            a, b = ranges[0]
            if server:
                comm.Gatherv([empty, MPI.BYTE], [recv[0], (counts[0], displs[0]), MPI.BYTE], root=0)
                rows = recv[0].reshape(size, b - a)[1:]
                cpu.majority_vote(rows, d, TIE_POSITIVE, results[0], results[0], results[0])
            else:
                comm.Gatherv([message[a:b], MPI.BYTE], None, root=0)
            comm.Bcast([results[0], MPI.BYTE], root=0)
        else:
            if server:
                gathers = [comm.Igatherv([empty, MPI.BYTE], [recv[i], (counts[i], displs[i]),
                                                              MPI.BYTE], root=0)
                           for i in range(len(ranges))]
                bcasts = []
                for i, (a, b) in enumerate(ranges):
                    gathers[i].Wait()
                    rows = recv[i].reshape(size, b - a)[1:]
                    bits = min(8 * (b - a), d - 8 * a)
                    cpu.majority_vote(rows, bits, TIE_POSITIVE, results[i], results[i],
                                      results[i])
                    bcasts.append(comm.Ibcast([results[i], MPI.BYTE], root=0))
                MPI.Request.Waitall(bcasts)
            else:
                requests = [comm.Igatherv([message[a:b], MPI.BYTE], None, root=0)
                            for a, b in ranges]
                requests += [comm.Ibcast([results[i], MPI.BYTE], root=0)
                             for i in range(len(ranges))]
                MPI.Request.Waitall(requests)
        if step >= warmup:
            times.append(time.perf_counter() - start)
    slowest = np.max(comm.allgather(np.array(times)), axis=0)
    return median(slowest), np.concatenate(results)


def main(args) -> int:
    from mpi4py import MPI

    from ..kernels import cpu
    from ..comm.agreement import SetupError, agree
    from ..wire import round_up
    from .exchange import check_memory
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()

    def check():
        if size < 2:
            raise BenchError(f"needs at least 2 MPI ranks; got a world of size {size}")
        d = parse_count(args.params)
        buckets = [int(b) for b in args.buckets.split(",")]
        if min(buckets) < 1 or args.repeat < 1:
            raise BenchError("--buckets and --repeat must be >= 1")
        return d, buckets

    try:
        d, buckets = agree(comm, check, "checking the options")
        agree(comm, lambda: check_memory(comm, d), "checking memory")
    except SetupError as exc:
        if rank == 0:
            print(f"hpcgrad bench overlap: error: {exc}", file=sys.stderr, flush=True)
        return 2
    nbytes = round_up((d + 7) // 8)
    message = np.zeros(nbytes, dtype=np.uint8)
    grad = np.random.default_rng(rank).standard_normal(d, dtype=np.float32)
    cpu.sign_pack(grad, message)
    figures, reference = {}, None
    for count in buckets:
        seconds, result = _run_buckets(comm, message, d, _buckets(nbytes, count),
                                       args.repeat, warmup=2)
        figures[str(count)] = seconds
        if reference is None:
            reference = result
        elif rank == 0 and not np.array_equal(reference, result):
            raise AssertionError(f"bucketed vote with {count} buckets differs")
    if rank == 0:
        base = figures[str(buckets[0])]
        out = {"params": d, "world_size": size, "seconds": figures,
               "speedup_vs_first": {b: base / s for b, s in figures.items()},
               "machine": machine()}
        print(f"hpcgrad bench overlap: d = {d:,}, {size} ranks; gather + vote + bcast of "
              f"packed signs, slowest rank, median of {args.repeat} steps")
        print(f"machine: {machine_line(out['machine'])}")
        for b, s in figures.items():
            print(f"  {b:>3s} bucket(s){'' if b != '1' else ' (blocking)'}: {1e3 * s:8.2f} ms  "
                  f"({base / s:.2f}x vs {buckets[0]})")
        if args.json:
            write_json(args.json, out)
    return 0
