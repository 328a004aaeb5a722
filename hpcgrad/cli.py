"""Command line: ``hpcgrad train ...`` (run it under mpiexec or srun).

Failure policy, so that no rank is ever left waiting in a collective:

* setup errors (bad options, config file, world size, log path) are agreed on
  by all ranks; rank 0 prints one message and every rank exits with status 2;
* any error after setup (a corrupt message, a NaN gradient, a bug) is printed
  by the rank that hit it, naming the rank, and the whole job is aborted with
  ``MPI_Abort`` (exit status 1).
"""

from __future__ import annotations

import argparse
import sys
import traceback

from . import __version__
from .config import (ALGORITHMS, DEVICES, SELECTIONS, TIE_RULES, TOPK_SELECTIONS, TOPK_VALUES,
                     TrainConfig)


def _per_algorithm(setting: str) -> str:
    """``"0.001 for signum-mv, s3gd-mv; 0.1 for ..."``: an algorithm-dependent default."""
    from .algorithms import REGISTRY
    groups: dict = {}
    for name, cls in REGISTRY.items():
        groups.setdefault(cls.defaults.get(setting), []).append(name)
    return "; ".join(f"{value} for {', '.join(names)}" for value, names in groups.items())


def _add_train_options(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    p.add_argument("--config", metavar="FILE",
                   help="TOML file of settings (keys as the long options, e.g. lr = 0.01); "
                        "command-line options override it")
    p.add_argument("--algorithm", choices=ALGORITHMS,
                   help=f"training algorithm (default: {d.algorithm}): signum-mv = Signum / "
                        "signSGD with majority vote, 1 bit per coordinate each way; s3gd-mv = "
                        "signs of each worker's top-K entries, majority vote, coded positions; "
                        "topk = each worker's top-K values with error feedback, mean over the "
                        "union; qsgd = per-tensor norm + b-bit stochastic levels, mean; "
                        "dq-sgd = qsgd with a width chosen by the server every step; "
                        "fp32-ps / "
                        "fp16-ps = uncompressed parameter server; allreduce = MPI_Allreduce "
                        "data parallel, no server role")
    p.add_argument("--iterations", type=int, metavar="N",
                   help=f"training iterations (default: {d.iterations})")
    p.add_argument("--seed", type=int, metavar="S",
                   help=f"seed of data, model init, sampling and tie coins (default: {d.seed})")
    p.add_argument("--lr", type=float,
                   help=f"learning rate (default per algorithm: {_per_algorithm('lr')})")
    p.add_argument("--momentum", type=float, metavar="BETA",
                   help="momentum in [0, 1); for signum-mv the worker momentum beta of "
                        "m <- beta*m + (1-beta)*g, 0 giving signSGD (default per algorithm: "
                        f"{_per_algorithm('momentum')})")
    p.add_argument("--weight-decay", type=float, metavar="WD",
                   help=f"weight decay; for signum-mv applied after the vote, x <- x - "
                        f"lr*(sign(v) + wd*x) (default: {d.weight_decay})")
    p.add_argument("--tie", choices=TIE_RULES,
                   help=f"signum-mv: the vote for a tied coordinate (even worker count): "
                        f"positive = +1, random = seeded coin, zero = no move (needs a 2-bit "
                        f"downlink) (default: {d.tie})")
    p.add_argument("--batch-size", type=int, metavar="B",
                   help=f"examples per worker per step (default: {d.batch_size})")
    p.add_argument("--hidden", type=int, metavar="H",
                   help=f"hidden width of the embedded task's MLP (default: {d.hidden})")
    p.add_argument("--eval-every", type=int, metavar="N",
                   help=f"evaluate on held-out data every N steps, 0 = only at the end "
                        f"(default: {d.eval_every})")
    p.add_argument("--flush-every", type=int, metavar="N",
                   help=f"gather per-step records to rank 0 and flush the log every N steps "
                        f"(default: {d.flush_every})")
    p.add_argument("--log", metavar="PATH",
                   help="HDF5 traffic log to write (default: runs/ALGORITHM-nWORLD-sSEED-TIME.h5)")
    p.add_argument("--record-messages", type=int, metavar="N",
                   help="store the raw bytes of every uplink and downlink message of the first "
                        "N iterations in the log's /messages group (default: 0)")
    p.add_argument("--device", choices=DEVICES,
                   help="where workers compute and encode: cpu, or cuda (one GPU per worker, "
                        "chosen by node-local rank among CUDA_VISIBLE_DEVICES; needs CuPy). "
                        f"The server aggregates on the host either way (default: {d.device})")
    s3 = p.add_argument_group("s3gd-mv (sparse signs, majority vote)")
    s3.add_argument("--sparsity", type=float, metavar="S",
                    help="fraction of each tensor's entries a worker sends, in (0, 1]: "
                         "K_l = ceil(S*numel_l) (default: 0.01)")
    s3.add_argument("--k-per-worker", choices=("auto",),
                    help="auto: K_l = ceil(C*numel_l/M) for M workers, C = "
                         "--votes-per-coordinate (our reading of the paper's rule); "
                         "overrides --sparsity")
    s3.add_argument("--votes-per-coordinate", type=float, metavar="C",
                    help=f"C of --k-per-worker auto (default: {d.votes_per_coordinate})")
    s3.add_argument("--residual", type=float, metavar="RHO",
                    help="residual decay rho of a <- rho*a + g, in [0, 1]; 0 = no residual "
                         "(default: 1)")
    s3.add_argument("--selection", choices=SELECTIONS,
                    help="top-K rule: exact (partition, the reference) or threshold (sampled "
                         "threshold refined to within 10%% of K; faster, K varies) "
                         f"(default: {d.selection})")
    tk = p.add_argument_group("topk (top-K values with error feedback; K from --sparsity)")
    tk.add_argument("--topk-selection", choices=TOPK_SELECTIONS,
                    help="how a worker picks its K positions: local = its largest |residual|; "
                         "union-boost = prefer the previous step's union; aggregate-hint = "
                         "|residual| + L*|previous aggregate|; shared-random = the same seeded "
                         "positions on every worker (|U| = K); leader = a rotating worker's "
                         f"previous top-K for all (default: {d.topk_selection})")
    tk.add_argument("--topk-values", choices=TOPK_VALUES,
                    help=f"uplink value precision (default: {d.topk_values})")
    tk.add_argument("--union-boost", type=float, metavar="W",
                    help="union-boost: score |r|*(1 + W) on the previous union, W >= 0 "
                         "(default: 1)")
    tk.add_argument("--aggregate-hint", type=float, metavar="L",
                    help="aggregate-hint: score |r| + L*|previous aggregate|, L >= 0 "
                         "(default: 1)")
    tk.add_argument("--unbiased", action="store_true", default=None,
                    help="shared-random: scale the values by numel/K and keep no residual")
    p.add_argument("--partition", metavar="iid|classes:L",
                   help="how the training set is dealt to workers: iid, or classes:L = each "
                        "worker sees only L classes, chosen from the seed and its rank "
                        f"(default: {d.partition})")
    q = p.add_argument_group("qsgd / dq-sgd (quantized gradients, docs/algorithms/dq-sgd.md)")
    q.add_argument("--bits", type=int, metavar="B",
                   help="qsgd: bits per coordinate, a sign bit and B-1 level bits "
                        "(s = 2^(B-1) - 1 levels), in 2..16; 2..8 is the useful range "
                        "(default: 4)")
    q.add_argument("--quantize-downlink", action="store_true", default=None,
                   help="re-quantize the server's mean at the step's width instead of "
                        "broadcasting it in fp32")
    q.add_argument("--dq-rho", type=float, metavar="RHO",
                   help="dq-sgd: rho in (0, 1] of s_n = lambda*|g_n|*rho^((T-1-n)/2) "
                        "(default: 0.999)")
    q.add_argument("--dq-horizon", type=int, metavar="T",
                   help="dq-sgd: planned iterations T, >= 1 (default: --iterations)")
    q.add_argument("--dq-lambda", type=float, metavar="L",
                   help="dq-sgd: lambda of the width rule, > 0 (default: calibrated on step "
                        "0's gradient norm so that the rule gives --dq-start-bits)")
    q.add_argument("--dq-start-bits", type=int, metavar="B",
                   help="dq-sgd: width of step 0, before any norm is known, and the "
                        "calibration target of lambda (default: 4)")
    q.add_argument("--min-bits", type=int, metavar="B",
                   help="dq-sgd: smallest width the rule may pick (default: 2)")
    q.add_argument("--max-bits", type=int, metavar="B",
                   help="dq-sgd: largest width the rule may pick (default: 8)")
    q.add_argument("--dq-window", type=int, metavar="N",
                   help="dq-sgd: average the gradient norm over the last N steps (default: 1)")
    p.add_argument("--quiet", action="store_true", default=None,
                   help="print only the final summary")


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
        description="Train a small MLP on generated data (no download) across MPI ranks and "
                    "write a per-iteration HDF5 traffic log. Run under mpiexec -n N (N >= 2).")
    _add_train_options(train)
    train.set_defaults(func=cmd_train)
    from .analysis.cli import register as register_analyze  # parser only: no pandas, no MPI
    register_analyze(sub)
    from .bench.cli import register as register_bench  # parser only: no MPI, no Numba
    register_bench(sub)
    return parser


def _cli_settings(args) -> dict:
    skip = {"command", "func", "config"}
    return {k: v for k, v in vars(args).items() if k not in skip}


def _abort(comm, rank: int, exc: BaseException) -> None:
    from .errors import HpcgradError
    if isinstance(exc, HpcgradError):
        detail = f"{type(exc).__name__}: {exc}"
    else:
        detail = "".join(traceback.format_exception(exc)).rstrip()
    print(f"hpcgrad: error on rank {rank}: {detail}\nhpcgrad: aborting all "
          f"{comm.Get_size()} ranks", file=sys.stderr, flush=True)
    comm.Abort(1)


def cmd_train(args) -> int:
    from mpi4py import MPI

    from . import config as configuration
    from .agreement import SetupError, agree
    from .runtime import train

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    try:
        file_settings = agree(comm, lambda: configuration.load_file(args.config)
                              if args.config else {}, "reading the config file")
        config = agree(comm, lambda: configuration.build(file_settings, _cli_settings(args)),
                       "checking the settings")
        summary = train(config, comm)
    except SetupError as exc:
        if rank == 0:
            print(f"hpcgrad: error: {exc}", file=sys.stderr, flush=True)
        return 2
    except BaseException as exc:  # noqa: BLE001 -- any failure must take the whole job down
        _abort(comm, rank, exc)
        return 1
    if summary is not None:
        print(summary.text(), flush=True)
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
