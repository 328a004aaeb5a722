"""Issue 4 evidence: top-K with error feedback, gradient selection rules.

Superseded: this script produced the single-seed tables now in docs/experiments/history.md
("Top-K with error feedback: gradient selection (issue 4), superseded").  The current evidence
is experiments/ablations.py's group topk-n4, run by experiments/regenerate.py, which does not
use this script.

    python experiments/topk_selection.py [--ranks 5] [--iterations 400] [--seed 0]
                                         [--sparsity 0.01] [--lr LR] [--table-only]

Runs every rule below, IID and non-IID (``--partition classes:2``), with
``mpiexec -n RANKS hpcgrad train --algorithm topk`` (the mpiexec next to this Python), one after
the other, logs to ``runs/issue4/RULE-PARTITION-nRANKS-sSEED.h5``, then prints a Markdown table
read from the HDF5 logs: mean and max |U|/K over the steps, MB up and down per worker, final
accuracy.  A run that diverges (NaN loss: the job stops) is listed as such.  ``--lr`` (default:
topk's, 0.1) goes into every command and the log names.  ``--table-only`` re-reads existing
logs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import h5py
from common import launch, mpiexec_train

RULES = {
    "local": ["--topk-selection", "local"],
    "union-boost": ["--topk-selection", "union-boost"],
    "aggregate-hint": ["--topk-selection", "aggregate-hint"],
    "shared-random": ["--topk-selection", "shared-random"],
    "leader": ["--topk-selection", "leader"],
}
PARTITIONS = {"iid": "iid", "non-iid": "classes:2"}


def log_path(rule, partition, args) -> Path:
    lr = f"-lr{args.lr}" if args.lr is not None else ""
    return Path("runs/issue4") / f"{rule}-{partition}-n{args.ranks}-s{args.seed}{lr}.h5"


def command(rule, partition, args) -> list[str]:
    return mpiexec_train(args.ranks, [
            "--algorithm", "topk", "--sparsity", str(args.sparsity), *RULES[rule],
            "--partition", PARTITIONS[partition], "--iterations", str(args.iterations),
            "--seed", str(args.seed), "--eval-every", "100", "--quiet",
            *(["--lr", str(args.lr)] if args.lr is not None else []),
            "--overwrite", "--log", str(log_path(rule, partition, args))])


def row(path: Path):
    try:
        return _row(path)
    except OSError:  # a job aborted mid-write leaves its log flagged open
        return None


def _row(path: Path):
    with h5py.File(path, "r") as f:
        if not len(f["eval/accuracy"]) or f["steps/bytes_down"].shape[0] < f.attrs["iterations"]:
            return None  # stopped before the end (diverged)
        k = int(f.attrs["k"])
        union = f["steps/union_size"][...] / k
        up = f["steps/bytes_up"][...].sum(0).mean() / 1e6
        down = f["steps/bytes_down"][...].sum() / 1e6
        acc = float(f["eval/accuracy"][-1])
        workers = int(f.attrs["num_workers"])
    return workers, k, union.mean(), union.max(), up, down, acc


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", type=int, default=5)
    p.add_argument("--iterations", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sparsity", type=float, default=0.01)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--table-only", action="store_true")
    args = p.parse_args()
    Path("runs/issue4").mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        for partition in PARTITIONS:
            for rule in RULES:
                launch(command(rule, partition, args))
    print("| partition | rule | workers | K | mean |U|/K | max |U|/K | MB up / worker "
          "| MB down | final accuracy |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for partition in PARTITIONS:
        for rule in RULES:
            path = log_path(rule, partition, args)
            if not path.exists():
                print(f"| {partition} | {rule} | (no log) |||||||")
                continue
            got = row(path)
            if got is None:
                print(f"| {partition} | `{rule}` | | | | | | | diverged (NaN loss) |")
                continue
            w, k, mean, top, up, down, acc = got
            print(f"| {partition} | `{rule}` | {w} | {k} | {mean:.3f} | {top:.3f} | {up:.3f} "
                  f"| {down:.3f} | {acc:.2%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
