"""Issue 10 evidence: the seed papers' claims on the embedded task (docs/experiments/history.md).

    python experiments/paper_claims.py --list              # the runs, with their indices
    python experiments/paper_claims.py                     # every run, one after the other
    python experiments/paper_claims.py --task 3            # run 3 only ($SLURM_ARRAY_TASK_ID)
    python experiments/paper_claims.py --only 'iid-*'      # the runs whose name matches
    python experiments/paper_claims.py --table-only        # tables and figures from the logs

RUNS below is a list of named runs, each a list of ``hpcgrad train`` options and a number of
ranks; every run adds ``--iterations 600 --eval-every 25 --seed 0 --quiet`` and logs to
``runs/issue10/NAME.h5`` (``--seed S`` runs them with another seed, logging to ``NAME-sS.h5``).
The claims (issue 10, part 6):

1. Signum-MV within about 1.5 accuracy points of fp32 SGD (4 workers, IID).
2. S3GD-MV at least as accurate as signSGD-MV at a quarter of its uplink bytes or less, IID and
   non-IID (``classes:2``, ``dirichlet:0.3``); Signum (momentum 0.9) shown too.
3. Majority vote with 2 of 7 workers inverting stays within about 2 points of the clean run,
   while the fp32 mean degrades (also ``--attack random``; and the fp32 mean at lr 0.1, its
   default, clean and inverted).

The learning rates of claims 2 and 3 (``LR``) were chosen from the IID learning-rate sweep (the
``iid-*`` runs, the first group) by held-out accuracy (the final one and the mean of the last 4
evaluations pick the same lrs), once, and used unchanged on the non-IID partitions and with 7
workers.  There is no separate validation set: the same rule for every algorithm.

Running: by default each run is ``mpiexec -n RANKS hpcgrad train ...`` with the mpiexec next to
this Python, one after the other (a failed run is reported and the others go on).  ``--task N``
runs run N only, so the script is a Slurm job array (``slurm/paper_claims.sbatch``): there srun
starts the ranks and each one runs this script with ``--launch none``, which replaces itself by
``python -m mpi4py -m hpcgrad train ...`` (it is one rank of the run).  ``--ranks-of N`` prints
the ranks run N needs (for ``srun -n``).  ``--iterations``, ``--ranks``, ``--runs`` and
``--figures`` override the settings for a quick try (the tests use them).

``--table-only`` runs nothing: it reads the HDF5 logs, prints Markdown tables (every run, then
one per claim) and writes ``FIGURES/paper_claims-*.png``: held-out accuracy against iterations
and against the cumulative MB sent up per worker.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import common

COMMON = ["--eval-every", "25", "--quiet"]
ITERATIONS = 600

# Learning rates chosen from the IID sweep below (see the module docstring).
LR = {"fp32": 0.01, "signsgd": 0.001, "signum": 0.0003, "s3gd": 0.01}

METHODS = {  # short name -> (label, hpcgrad train options without --lr)
    "fp32": ("fp32 SGD (fp32-ps)", ["--algorithm", "fp32-ps"]),
    "signsgd": ("signSGD-MV", ["--algorithm", "signum-mv", "--momentum", "0"]),
    "signum": ("Signum-MV", ["--algorithm", "signum-mv", "--momentum", "0.9"]),
    "s3gd": ("S3GD-MV 1%", ["--algorithm", "s3gd-mv", "--sparsity", "0.01"]),
}
PARTITIONS = {"iid": "iid", "classes2": "classes:2", "dir0.3": "dirichlet:0.3"}
SWEEP = {  # the IID learning-rate sweep, 4 workers
    "fp32": [0.1, 0.03, 0.01, 0.003],
    "signsgd": [0.0001, 0.0003, 0.001, 0.003],
    "signum": [0.0001, 0.0003, 0.001],
    "s3gd": [0.003, 0.01, 0.03],
}
ATTACKS = {"clean": [], "invert": ["--adversaries", "2", "--attack", "invert"],
           "random": ["--adversaries", "2", "--attack", "random"]}


@dataclass(frozen=True)
class Run:
    name: str
    ranks: int
    options: tuple[str, ...]


def _runs() -> list[Run]:
    runs = []
    for method, lrs in SWEEP.items():
        for lr in lrs:
            runs.append(Run(f"iid-{method}-lr{lr}", 5,
                            (*METHODS[method][1], "--lr", str(lr), "--partition", "iid")))
    for tag, partition in PARTITIONS.items():
        if tag == "iid":
            continue
        for method in METHODS:
            runs.append(Run(f"{tag}-{method}-lr{LR[method]}", 5,
                            (*METHODS[method][1], "--lr", str(LR[method]),
                             "--partition", partition)))
    for method in ("signum", "fp32"):
        for attack, extra in ATTACKS.items():
            runs.append(Run(f"n8-{method}-{attack}", 8,
                            (*METHODS[method][1], "--lr", str(LR[method]), *extra)))
    # the fp32 mean at its default lr, where inverting (a step of 3/7) costs less
    for attack in ("clean", "invert"):
        runs.append(Run(f"n8-fp32-lr0.1-{attack}", 8,
                        (*METHODS["fp32"][1], "--lr", "0.1", *ATTACKS[attack])))
    return runs


RUNS = _runs()
BY_NAME = {run.name: run for run in RUNS}
ADVERSARY_ROWS = [("n8-signum", "signum", LR["signum"]), ("n8-fp32", "fp32", LR["fp32"]),
                  ("n8-fp32-lr0.1", "fp32", 0.1)]


def chosen(tag: str, method: str) -> str:
    """The run of `method` with its chosen lr on partition `tag` (4 workers)."""
    return f"{tag}-{method}-lr{LR[method]}"


# ---- running ------------------------------------------------------------------------------


def train_options(run: Run, args) -> list[str]:
    iterations = args.iterations if args.iterations is not None else ITERATIONS
    return ["train", *run.options, "--iterations", str(iterations), "--seed", str(args.seed),
            *COMMON, "--log", str(log_path(run, args)), "--overwrite"]


def ranks(run: Run, args) -> int:
    return args.ranks if args.ranks is not None else run.ranks


def log_path(run: Run, args) -> Path:
    return Path(args.runs) / f"{run.name}{seed_suffix(args)}.h5"


def seed_suffix(args) -> str:
    return f"-s{args.seed}" if args.seed else ""


def run_one(index: int, args) -> int:
    run = RUNS[index]
    log_path(run, args).parent.mkdir(parents=True, exist_ok=True)
    options = train_options(run, args)
    if args.launch == "none":  # this process is one rank of a job srun (or another) started
        started = os.environ.get("SLURM_STEP_NUM_TASKS")
        if started is not None and int(started) != ranks(run, args):
            print(f"paper_claims: error: run {index} ({run.name}) needs {ranks(run, args)} "
                  f"ranks, but this step has {started} tasks (srun -n "
                  f"$(python {sys.argv[0]} --ranks-of {index}))", file=sys.stderr)
            return 2
        sys.stdout.flush()
        os.execv(sys.executable, [sys.executable, "-m", "mpi4py", "-m", "hpcgrad", *options])
    return common.launch(common.mpiexec_train(ranks(run, args), options[1:]), f"[{index}] $")


# ---- reading the logs ---------------------------------------------------------------------


@dataclass
class Result:
    run: Run
    algorithm: str
    partition: str
    workers: int
    lr: float
    momentum: float
    adversaries: int
    attack: str
    eval_iteration: object  # numpy arrays
    eval_accuracy: object
    eval_mb_up: object  # cumulative MB up per worker at each evaluation
    mb_up: float
    mb_down: float
    final_accuracy: float
    last4_accuracy: float
    final_loss: float
    complete: bool


def read(run: Run, args) -> Result | None:
    import h5py
    import numpy as np
    path = log_path(run, args)
    if not path.exists():
        return None
    try:
        with h5py.File(path, "r") as f:
            config = json.loads(f.attrs["config"])
            up = f["steps/bytes_up"][...]
            down = f["steps/bytes_down"][...]
            it = f["eval/iteration"][...]
            acc = f["eval/accuracy"][...]
            loss = f["eval/loss"][...]
            cum_up = np.concatenate([[0], np.cumsum(up.mean(1))]) / 1e6
            return Result(
                run=run, algorithm=str(f.attrs["algorithm"]), partition=config["partition"],
                workers=int(f.attrs["num_workers"]), lr=float(config["lr"]),
                momentum=float(config["momentum"]),
                adversaries=len(json.loads(f.attrs["adversaries"])),
                attack=str(f.attrs["attack"]), eval_iteration=it, eval_accuracy=acc,
                eval_mb_up=cum_up[np.minimum(it, len(up))],
                mb_up=float(up.sum(0).mean() / 1e6), mb_down=float(down.sum() / 1e6),
                final_accuracy=float(acc[-1]) if len(acc) else float("nan"),
                last4_accuracy=float(acc[-4:].mean()) if len(acc) else float("nan"),
                final_loss=float(loss[-1]) if len(loss) else float("nan"),
                complete=len(down) >= int(f.attrs["iterations"]) and len(acc) > 0)
    except (OSError, KeyError):  # a job aborted mid-write leaves its log flagged open
        return None


def pct(x: float) -> str:
    return f"{100 * x:.2f}"


def print_tables(results: dict[str, Result | None]) -> None:
    print("### Every run\n")
    print("| # | run | algorithm | partition | workers | lr | momentum | adversaries "
          "| MB up / worker | MB down | final accuracy % | mean of last 4 evals % "
          "| final loss |")
    print("|---:|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    for index, run in enumerate(RUNS):
        r = results[run.name]
        if r is None:
            print(f"| {index} | {run.name} | (no log) |||||||||||")
            continue
        adv = f"{r.adversaries} {r.attack}" if r.adversaries else "0"
        status = "" if r.complete else " (stopped early)"
        print(f"| {index} | {run.name}{status} | {r.algorithm} | {r.partition} | {r.workers} "
              f"| {r.lr:g} | {r.momentum:g} | {adv} | {r.mb_up:.3f} | {r.mb_down:.3f} "
              f"| {pct(r.final_accuracy)} | {pct(r.last4_accuracy)} | {r.final_loss:.4f} |")

    def get(name):
        r = results.get(name)
        return r if r is not None and r.complete else None

    def points(r, base) -> str:
        """Accuracy of ``r`` minus ``base``, final / mean of the last 4 evaluations."""
        if base is None:
            return ""
        return (f"{100 * (r.final_accuracy - base.final_accuracy):+.2f} / "
                f"{100 * (r.last4_accuracy - base.last4_accuracy):+.2f}")

    print("\n### Claim 1: Signum-MV against fp32 SGD (4 workers, IID, chosen lrs)\n")
    print("| run | MB up / worker | final accuracy % | mean of last 4 % | Signum-MV minus fp32, "
          "final / last 4 (points) |")
    print("|---|---:|---:|---:|---:|")
    base = get(chosen("iid", "fp32"))
    for method in ("fp32", "signum"):
        r = get(chosen("iid", method))
        if r is None:
            print(f"| {chosen('iid', method)} | missing |||")
            continue
        delta = points(r, base) if method != "fp32" else ""
        print(f"| {r.run.name} | {r.mb_up:.3f} | {pct(r.final_accuracy)} "
              f"| {pct(r.last4_accuracy)} | {delta} |")

    print("\n### Claim 2: S3GD-MV against signSGD-MV, IID and non-IID (4 workers)\n")
    print("| partition | run | MB up / worker | uplink / signSGD-MV | final accuracy % "
          "| mean of last 4 % | minus signSGD-MV, final / last 4 (points) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for tag, partition in PARTITIONS.items():
        base = get(chosen(tag, "signsgd"))
        for method in ("signsgd", "signum", "s3gd", "fp32"):
            r = get(chosen(tag, method))
            if r is None:
                print(f"| {partition} | {chosen(tag, method)} | missing |||||")
                continue
            ratio = f"{r.mb_up / base.mb_up:.3f}" if base is not None else ""
            delta = points(r, base) if method != "signsgd" else ""
            print(f"| {partition} | {r.run.name} | {r.mb_up:.3f} | {ratio} "
                  f"| {pct(r.final_accuracy)} | {pct(r.last4_accuracy)} | {delta} |")

    print("\n### Claim 3: 2 of 7 workers adversarial (8 ranks, IID)\n")
    print("| algorithm | lr | clean: final / last 4 % | invert: final / last 4 % "
          "| invert minus clean (points) | random: final / last 4 % "
          "| random minus clean (points) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for prefix, method, lr in ADVERSARY_ROWS:
        cells = [METHODS[method][0], f"{lr:g}"]
        clean = get(f"{prefix}-clean")
        for attack in ATTACKS:
            r = get(f"{prefix}-{attack}")
            if r is None:
                cells.append("missing" if f"{prefix}-{attack}" in BY_NAME else "not run")
                if attack != "clean":
                    cells.append("")
                continue
            cells.append(f"{pct(r.final_accuracy)} / {pct(r.last4_accuracy)}")
            if attack != "clean":
                cells.append(f"{100 * (r.final_accuracy - clean.final_accuracy):+.2f} / "
                             f"{100 * (r.last4_accuracy - clean.last4_accuracy):+.2f}"
                             if clean is not None else "")
        print("| " + " | ".join(cells) + " |")


# ---- figures ------------------------------------------------------------------------------


FIGURES = {  # file stem -> rows of (panel title, [(run name, label)])
    "paper_claims-lr-sweep": [
        (f"{METHODS[m][0]}, IID, 4 workers: lr sweep",
         [(f"iid-{m}-lr{lr}", f"lr {lr}" + (" (chosen)" if lr == LR[m] else "")) for lr in lrs])
        for m, lrs in SWEEP.items()
    ],
    "paper_claims-partitions": [
        (f"--partition {partition}, 4 workers",
         [(chosen(tag, m), f"{METHODS[m][0]}, lr {LR[m]}") for m in METHODS])
        for tag, partition in PARTITIONS.items()
    ],
    "paper_claims-adversaries": [
        (f"{METHODS[m][0]}, lr {lr:g}, 7 workers, 2 adversaries",
         [(f"{prefix}-{attack}", attack if attack == "clean" else f"2 x {attack}")
          for attack in ATTACKS if f"{prefix}-{attack}" in BY_NAME])
        for prefix, m, lr in ADVERSARY_ROWS
    ],
}


def plot(results: dict[str, Result | None], figures: Path, suffix: str = "") -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter
    written = []
    figures.mkdir(parents=True, exist_ok=True)
    for stem, rows in FIGURES.items():
        fig, axes = plt.subplots(len(rows), 2, figsize=(11, 3.6 * len(rows)), squeeze=False)
        drawn = 0
        for (title, curves), (ax_it, ax_mb) in zip(rows, axes):
            for name, label in curves:
                r = results.get(name)
                if r is None or not len(r.eval_iteration):
                    continue
                ax_it.plot(r.eval_iteration, 100 * r.eval_accuracy, label=label)
                ax_mb.plot(r.eval_mb_up, 100 * r.eval_accuracy, label=label)
                drawn += 1
            ax_it.set_title(title, fontsize=10)
            ax_it.set_xlabel("iteration")
            ax_mb.set_title(title, fontsize=10)
            ax_mb.set_xlabel("cumulative MB sent up per worker (log scale)")
            ax_mb.set_xscale("log")
            ax_mb.xaxis.set_minor_formatter(NullFormatter())
            for ax in (ax_it, ax_mb):
                ax.set_ylabel("held-out accuracy %")
                ax.grid(alpha=0.3)
            ax_it.legend(fontsize=8, loc="lower right")
        if drawn:
            fig.tight_layout()
            path = figures / f"{stem}{suffix}.png"
            fig.savefig(path, dpi=100)
            written.append(path)
        plt.close(fig)
    return written


# ---- command line -------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    task_default = os.environ.get("SLURM_ARRAY_TASK_ID")
    p.add_argument("--list", action="store_true", help="print the runs with their indices")
    p.add_argument("--task", type=int, default=int(task_default) if task_default else None,
                   help="run only run N (default: $SLURM_ARRAY_TASK_ID when set)")
    p.add_argument("--only", nargs="+", metavar="PATTERN",
                   help="run only the runs whose name matches one of these (fnmatch) patterns")
    p.add_argument("--ranks-of", type=int, metavar="N", help="print the ranks run N needs")
    p.add_argument("--table-only", action="store_true",
                   help="run nothing: tables and figures from the logs")
    p.add_argument("--launch", choices=["mpiexec", "none"], default="mpiexec",
                   help="mpiexec: start each run with the mpiexec next to this Python; none: "
                        "this process is one rank of a run started by srun (with --task)")
    p.add_argument("--iterations", type=int, help=f"override the iterations ({ITERATIONS})")
    p.add_argument("--ranks", type=int, help="override every run's ranks")
    p.add_argument("--seed", type=int, default=0,
                   help="--seed of every run (default 0); another seed adds -sSEED to the log "
                        "and figure names")
    p.add_argument("--runs", default="runs/issue10", help="log directory (runs/issue10)")
    p.add_argument("--figures", default="docs/experiments",
                   help="figure directory (docs/experiments)")
    args = p.parse_args(argv)

    if args.list:
        for index, run in enumerate(RUNS):
            print(f"{index:3d}  {run.name:26s} -n {run.ranks}  {' '.join(run.options)}")
        print(f"{len(RUNS)} runs: tasks 0-{len(RUNS) - 1}")
        return 0
    if args.ranks_of is not None:
        if not 0 <= args.ranks_of < len(RUNS):
            p.error(f"--ranks-of {args.ranks_of}: there are {len(RUNS)} runs (0-{len(RUNS) - 1})")
        print(ranks(RUNS[args.ranks_of], args))
        return 0
    if not args.table_only:
        if args.task is not None:
            if not 0 <= args.task < len(RUNS):
                p.error(f"--task {args.task}: there are {len(RUNS)} runs "
                        f"(tasks 0-{len(RUNS) - 1}); make the Slurm --array match")
            return run_one(args.task, args)
        if args.launch == "none":
            p.error("--launch none runs one rank of one run: give --task")
        failed = 0
        for index, run in enumerate(RUNS):
            if args.only and not any(fnmatch.fnmatch(run.name, pat) for pat in args.only):
                continue
            failed += run_one(index, args) != 0
        if failed:
            print(f"{failed} run(s) failed", flush=True)
    results = {run.name: read(run, args) for run in RUNS}
    print_tables(results)
    for path in plot(results, Path(args.figures), seed_suffix(args)):
        print(f"\nfigure: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
