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
from .algorithms.ef_sgd import FEEDBACK_MODES
from .training.attacks import ATTACKS
from .compression.compressors import COMPRESSORS
from .training.config import (ALGORITHMS, DEVICES, SELECTIONS, TIE_RULES, TOPK_SELECTIONS, TOPK_VALUES,
                     TrainConfig)

COMPRESSOR_NAMES = tuple(COMPRESSORS)


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
                        "ef-sgd = error feedback (ef, step-ahead, error averaging) around "
                        "a --compressor; "
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
                   help=f"mlp: hidden width; embedding-bag: embedding dimension "
                        f"(default: {d.hidden})")
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
    from .workloads.catalog import BATCH_NORMS, DATASETS, MODELS
    wl = p.add_argument_group("workload (models, datasets, partitions)",
                              "nothing is downloaded: file datasets are read from --data-path")
    wl.add_argument("--model", choices=MODELS,
                    help="mlp = two hidden layers of --hidden units; cnn = the S3GD-MV "
                         "authors' MNIST CNN (2 conv + 2 fc, 582,026 parameters on MNIST); "
                         "resnet20 / resnet56 = CIFAR ResNets (He et al. 2016, option-A "
                         "shortcuts); embedding-bag = mean of token embeddings + linear, for "
                         f"text (default: {d.model})")
    wl.add_argument("--dataset", choices=DATASETS,
                    help="synthetic = generated from the seed (the embedded task); mnist "
                         "(IDX files, .gz too), cifar10 / cifar100 (python pickle batches), "
                         "ag-news (train.csv, test.csv) = your files in --data-path "
                         f"(default: {d.dataset})")
    wl.add_argument("--data-path", metavar="DIR",
                    help="directory of the dataset's files: mnist: train-images-idx3-ubyte "
                         "etc. (or DIR/MNIST/raw); cifar10: DIR/cifar-10-batches-py or DIR; "
                         "cifar100: DIR/cifar-100-python or DIR; ag-news: DIR or "
                         "DIR/ag_news_csv")
    wl.add_argument("--partition", metavar="iid|classes:L|dirichlet:ALPHA",
                    help="how the training set is dealt to workers: iid; classes:L = each "
                         "worker sees only L classes, chosen from the seed and its rank; "
                         "dirichlet:ALPHA = each class split among the workers in Dir(ALPHA) "
                         "shares (small ALPHA = skewed) (default: "
                         f"{d.partition})")
    wl.add_argument("--batch-norm", choices=BATCH_NORMS,
                    help="resnet: batch-stats = normalise with each batch's statistics, no "
                         "running buffers (replicas stay identical); running = PyTorch's "
                         "running statistics, per replica, not synchronised; none = no "
                         "normalisation (default: batch-stats)")
    wl.add_argument("--examples", type=int, metavar="N",
                    help="training examples: synthetic generates N (and N/8 held out; "
                         "default 16384); file datasets use their first N (default: all)")
    wl.add_argument("--features", type=lambda v: int(v) if v.isdigit() else v,
                    metavar="F|CxHxW",
                    help="synthetic: inputs per example, or an image shape such as 1x28x28 "
                         "for cnn / resnet (default: 32)")
    wl.add_argument("--classes", type=int, metavar="C",
                    help="synthetic: number of classes (default: 10)")
    wl.add_argument("--vocab-size", type=int, metavar="V",
                    help="ag-news: embedding rows: padding, unknown and the V-2 most frequent "
                         "training tokens (default: 20000)")
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
    ef = p.add_argument_group("ef-sgd (error feedback around a compressor, "
                              "docs/algorithms/error-feedback.md)")
    ef.add_argument("--compressor", choices=COMPRESSOR_NAMES,
                    help="what the workers send: scaled-sign = |v|_1/d * sign(v) over the "
                         "model; topk / randomk = K_l = ceil(--sparsity * numel_l) entries per "
                         "tensor, largest or seeded random (scaled numel/K, unbiased); qsgd = "
                         "--bits stochastic levels; identity = fp32 (default: scaled-sign)")
    ef.add_argument("--feedback", choices=FEEDBACK_MODES,
                    help="none = send C(u) of the local momentum-SGD update u; ef = send "
                         "C(u + e), keep e = u + e - C(u + e); step-ahead = ef with the "
                         "gradient taken at x - e (default: ef)")
    ef.add_argument("--error-averaging", type=int, metavar="P",
                    help="every P steps replace the workers' residuals by their mean (an fp32 "
                         "Allreduce among the workers, logged as bytes_average and phase "
                         "average)")
    ef.add_argument("--server-feedback", action="store_true", default=None,
                    help="the server compresses its mean back with the same compressor and "
                         "its own residual, instead of broadcasting fp32")
    ck = p.add_argument_group("checkpoints (docs/checkpoints.md)")
    ck.add_argument("--checkpoint-every", type=int, metavar="N",
                    help="save every rank's state every N steps (needs --checkpoint-dir)")
    ck.add_argument("--checkpoint-dir", metavar="DIR",
                    help="where checkpoints go: DIR/step-NNNNNNNN/, one HDF5 file per rank")
    ck.add_argument("--resume", metavar="DIR",
                    help="continue from the newest complete checkpoint in DIR (or from DIR, a "
                         "step-NNNNNNNN directory): same parameters, state and data order, so "
                         "the run continues exactly as if it had not stopped")
    sa = p.add_argument_group("learning-rate schedule and adversarial workers "
                              "(hpcgrad/training/schedule.py, hpcgrad/training/attacks.py)")
    sa.add_argument("--lr-schedule", metavar="SCHEDULE",
                    help="lr of step t: constant; step:EVERY:GAMMA = lr*GAMMA^floor(t/EVERY); "
                         "cosine = from lr down to 0 over --iterations (after the warm-up); "
                         "cosine:FLOOR = down to FLOOR*lr, 0 <= FLOOR < 1 "
                         f"(default: {d.lr_schedule})")
    sa.add_argument("--warmup", type=int, metavar="N",
                    help="linear warm-up in front of the schedule: step t < N uses "
                         f"lr*(t+1)/N (default: {d.warmup})")
    sa.add_argument("--adversaries", type=int, metavar="K",
                    help="the last K worker ranks corrupt their uplink after their honest "
                         "step, 0 <= K <= workers; more than half the workers is allowed, with "
                         f"a warning (default: {d.adversaries})")
    sa.add_argument("--attack", choices=ATTACKS,
                    help="what the adversaries send: invert = the negation of their message "
                         "(every sign flipped, values negated); random = random signs, or "
                         "Gaussian values of the same norm, seeded by (seed, step, rank) "
                         f"(default: {d.attack})")
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
        description="Train a model (default: a small MLP on generated data, no download; "
                    "--model and --dataset choose others) across MPI ranks and write a "
                    "per-iteration HDF5 traffic log. Run under mpiexec -n N (N >= 2).")
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


def cmd_train(args) -> int:
    from mpi4py import MPI

    from .training import config as configuration
    from .comm.agreement import SetupError, abort_job, agree
    from .training.runtime import train

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
