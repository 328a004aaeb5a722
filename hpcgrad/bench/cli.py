"""``hpcgrad bench {exchange,micro,overhead,overlap,peers,sparse}``: registered by
``hpcgrad/cli.py``.

Building the parser imports nothing heavy (no MPI, no Numba); each command
imports what it needs when it runs.  Bad input ends with
``hpcgrad bench ...: error: ...`` and exit status 2, never a traceback; under
``mpiexec`` the ranks agree on the error first, so none is left waiting.
"""

from __future__ import annotations

import sys

SIZES_HELP = "coordinates d, e.g. 1000000, 1e6, 1M, 25.6M"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="benchmarks of the exchange, the kernels and the runtime overhead",
        description="Benchmarks (commands, not timed tests). Results and how to read them: "
                    "docs/benchmarks.md.")
    sub = p.add_subparsers(dest="bench_command", required=True, metavar="BENCHMARK")

    e = sub.add_parser(
        "exchange", help="per-phase times of every algorithm's exchange vs a fp32 Allreduce "
                         "(run under mpiexec -n P, P >= 2)",
        description="Times one iteration's exchange (hpcgrad.training.exchange, as in training) of "
                    "every registered algorithm with synthetic gradients, against a fp32 "
                    "MPI_Allreduce of the same d, plus the pack / vote / decode kernels against "
                    "np.copyto on rank 0. Example: mpiexec -n 5 hpcgrad bench exchange "
                    "--params 25.6M --json ex.json")
    e.add_argument("--params", required=True, metavar="D", help=SIZES_HELP)
    e.add_argument("--algorithm", action="append", metavar="NAME",
                   help="measure only this algorithm (repeatable; the Allreduce always runs)")
    e.add_argument("--repeat", type=int, default=10, metavar="R",
                   help="timed steps per algorithm (default 10)")
    e.add_argument("--warmup", type=int, default=2, metavar="W",
                   help="untimed steps first (default 2)")
    e.add_argument("--micro-repeat", type=int, default=7, metavar="R",
                   help="rounds of the kernel micro-benchmarks (default 7)")
    e.add_argument("--no-micro", action="store_true", help="skip the kernel micro-benchmarks")
    e.add_argument("--servers", type=int, default=1, metavar="S",
                   help="sharded servers, as hpcgrad train --servers: ranks 0..S-1 serve a "
                        "shard each, ranks S..P-1 work (default 1; the Allreduce baseline "
                        "runs on all P ranks either way)")
    e.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    e.add_argument("--hierarchy", choices=("flat", "node"), default="flat",
                   help="node: the algorithms' exchange through node leaders (docs/hierarchy.md;"
                        " the Allreduce stays flat); default flat")
    e.add_argument("--ranks-per-node", type=int, default=0, metavar="K",
                   help="with --hierarchy node: nodes of K consecutive ranks (0 = as MPI "
                        "reports)")
    e.set_defaults(bench_func=_exchange, bench_mpi=True)

    m = sub.add_parser(
        "micro", help="pack / vote / decode kernels and every compressing algorithm's worker "
                      "step vs np.copyto, server aggregates vs their memory floor, one process "
                      "(no mpiexec)",
        description="Times the compiled CPU kernels, and each compressing algorithm's worker "
                    "step (fused, and through the reference path for context), against "
                    "np.copyto of the fp32 input in the same process, with np.packbits and "
                    "the NumPy unpack-and-sum vote for context, and the server's fused "
                    "aggregates (fp32, fp16, qsgd, scaled-sign means of M bodies, M the first "
                    "--workers) against reading the M bodies at the copy bandwidth, with the "
                    "worker-by-worker path for context.")
    m.add_argument("--params", default="25.6M", metavar="D", help=SIZES_HELP + " (default 25.6M)")
    m.add_argument("--workers", default="4,8", metavar="M,M",
                   help="worker counts of the vote (default 4,8)")
    m.add_argument("--repeat", type=int, default=9, metavar="R", help="rounds (default 9)")
    m.add_argument("--no-context", action="store_true",
                   help="skip the slow NumPy reference paths (and the worker steps' reference "
                        "path)")
    m.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    m.set_defaults(bench_func=_micro, bench_mpi=False)

    o = sub.add_parser(
        "overhead", help="runtime time per step outside compute, codec and MPI (under mpiexec)",
        description="Trains a tiny model twice (N/3 and N iterations) and reports, per rank, "
                    "the wall time per step minus the logged phase times, from the difference "
                    "of the two runs (start-up cancels).")
    o.add_argument("--iterations", type=int, default=300, metavar="N",
                   help="iterations of the longer run (default 300)")
    o.add_argument("--algorithm", action="append", metavar="NAME",
                   help="algorithm (repeatable; default signum-mv and fp32-ps)")
    o.add_argument("--hidden", type=int, default=8, metavar="H",
                   help="hidden width of the tiny MLP (default 8)")
    o.add_argument("--pairs", type=int, default=3, metavar="K",
                   help="short/long run pairs; the median is reported (default 3)")
    o.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    o.set_defaults(bench_func=_overhead, bench_mpi=True)

    ov = sub.add_parser(
        "overlap", help="does bucketed Igatherv/Ibcast pipelining of the signum-mv exchange "
                        "gain here? (under mpiexec)",
        description="Times gather + vote + bcast of packed sign messages whole, and split "
                    "into B buckets pipelined with Igatherv / Ibcast, so that the vote of "
                    "bucket b overlaps the transfers of the others.")
    ov.add_argument("--params", default="25.6M", metavar="D", help=SIZES_HELP + " (default 25.6M)")
    ov.add_argument("--buckets", default="1,2,4,8,16", metavar="B,B",
                    help="bucket counts to try (default 1,2,4,8,16)")
    ov.add_argument("--repeat", type=int, default=10, metavar="R", help="timed steps (default 10)")
    ov.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    ov.set_defaults(bench_func=_overlap, bench_mpi=True)

    pe = sub.add_parser(
        "peers", help="hpcgrad's algorithms against PyTorch DDP (no hook, fp16, PowerSGD) on "
                      "the same model, data and steps (under mpiexec -n N, N >= 3)",
        description="Trains the same model from the same initialisation on the same data in "
                    "the same order for the same steps, with PyTorch DDP on the N-1 worker "
                    "ranks (gloo; NCCL with --device cuda) and with hpcgrad's algorithms "
                    "through its training loop on all N ranks, and reports per step: median "
                    "time (compute / communication / optimizer), bytes per worker, final loss "
                    "and accuracy, and the ratio to DDP fp32 measured in the same job. "
                    "Example: mpiexec -n 5 hpcgrad bench peers --features 4096 --hidden 2048 "
                    "--iterations 30 --json peers.json")
    pe.add_argument("--algorithm", action="append", metavar="NAME",
                    help="hpcgrad algorithm (repeatable; default allreduce, fp32-ps, "
                         "signum-mv, s3gd-mv: those of them that run on --device)")
    pe.add_argument("--ddp", action="append", metavar="VARIANT",
                    help="DDP variant: fp32 (no hook), fp16 (fp16_compress_hook), powersgd "
                         "(repeatable; default all three)")
    pe.add_argument("--no-ddp", action="store_true", help="run no DDP variant")
    pe.add_argument("--no-hpcgrad", action="store_true", help="run no hpcgrad algorithm")
    pe.add_argument("--powersgd-rank", type=int, default=4, metavar="R",
                    help="PowerSGD's matrix approximation rank (default 4)")
    pe.add_argument("--features", type=int, default=4096, metavar="F",
                    help="input features of the synthetic task (default 4096)")
    pe.add_argument("--hidden", type=int, default=2048, metavar="H",
                    help="hidden width of the MLP (default 2048: 12,607,498 parameters)")
    pe.add_argument("--examples", type=int, default=None, metavar="N",
                    help="training examples generated (default hpcgrad train's)")
    pe.add_argument("--batch-size", type=int, default=32, metavar="B",
                    help="examples per worker per step (default 32)")
    pe.add_argument("--iterations", type=int, default=30, metavar="N",
                    help="training steps of every run (default 30)")
    pe.add_argument("--warmup", type=int, default=2, metavar="W",
                    help="first steps left out of the medians (default 2)")
    pe.add_argument("--flush-every", type=int, default=10, metavar="N",
                    help="hpcgrad's log flush interval (default 10, as hpcgrad train)")
    pe.add_argument("--seed", type=int, default=0, metavar="S", help="seed (default 0)")
    pe.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                    help="where the workers' models live (default cpu)")
    pe.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    pe.set_defaults(bench_func=_peers, bench_mpi=True)

    sp = sub.add_parser(
        "sparse", help="S3GD-MV's position coding and top-K selection, one process (no mpiexec)",
        description="For each d and density: uplink bits per entry against the entropy bound "
                    "log2 C(d,K)/K + 1, encode/decode time against np.copyto of the same fp32 "
                    "array, and exact / threshold top-K against numpy.argpartition and "
                    "torch.topk, all measured in the same run.")
    sp.add_argument("--params", default="1M,25.6M", metavar="D,D",
                    help="sizes, comma-separated (" + SIZES_HELP + "; default 1M,25.6M)")
    sp.add_argument("--densities", default="0.001,0.01,0.1", metavar="F,F",
                    help="fractions K/d (default 0.001,0.01,0.1)")
    sp.add_argument("--repeat", type=int, default=5, metavar="R", help="rounds (default 5)")
    sp.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    sp.set_defaults(bench_func=_sparse, bench_mpi=False)

    p.set_defaults(func=run)


def run(args) -> int:
    """Entry point of ``hpcgrad bench``."""
    from ..errors import HpcgradError
    name = f"hpcgrad bench {args.bench_command}"
    try:
        return args.bench_func(args)
    except (HpcgradError, ValueError, OSError) as exc:
        if args.bench_mpi:
            # Setup errors are agreed among the ranks inside the command (exit 2 there);
            # what arrives here was raised by some ranks after collectives began, and the
            # others may be waiting in one: take the whole job down, as `train` does.
            _abort(exc)
        print(f"{name}: error: {exc}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        return 130


def _abort(exc: BaseException) -> None:
    from mpi4py import MPI

    from ..comm.agreement import abort_job
    comm = MPI.COMM_WORLD
    abort_job(comm, comm.Get_rank(), exc)


def _exchange(args) -> int:
    from . import exchange
    return exchange.main(args)


def _micro(args) -> int:
    from . import micro
    from .common import available_memory, check_fits, parse_count, write_json
    d = parse_count(args.params)
    try:
        workers = tuple(int(w) for w in args.workers.split(","))
    except ValueError:
        raise ValueError(f"--workers must be comma-separated integers, got {args.workers!r}") \
            from None
    if not workers or min(workers) < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers!r}")
    if args.repeat < 1:
        raise ValueError("--repeat must be >= 1")
    check_fits(micro.memory_needed(d, workers, not args.no_context), available_memory(),
               f"--params {d:,}", "use a smaller --params (or --no-context)")
    result = micro.run(d, workers, args.repeat, context=not args.no_context)
    print(micro.report(result), flush=True)
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}", flush=True)
    return 0


def _overhead(args) -> int:
    from . import overhead
    return overhead.main(args)


def _overlap(args) -> int:
    from . import overlap
    return overlap.main(args)


def _peers(args) -> int:
    from . import peers
    return peers.main(args)


def _sparse(args) -> int:
    from . import sparse
    from .common import parse_count, write_json
    sizes = [parse_count(text) for text in args.params.split(",")]
    try:
        densities = [float(text) for text in args.densities.split(",")]
    except ValueError:
        raise ValueError(f"--densities must be comma-separated fractions, got "
                         f"{args.densities!r}") from None
    if not all(0 < f <= 1 for f in densities):
        raise ValueError(f"--densities must be in (0, 1], got {args.densities!r}")
    if args.repeat < 1:
        raise ValueError("--repeat must be >= 1")
    figures = sparse.run(sizes, densities, args.repeat)
    print(sparse.report(figures), flush=True)
    if args.json:
        write_json(args.json, figures)
        print(f"wrote {args.json}", flush=True)
    return 0
