"""Issue 5 evidence: DQ-SGD against fixed-width QSGD on the embedded task.

Superseded: this script produced the single-seed, test-set-tuned tables now in
docs/experiments/history.md ("QSGD vs DQ-SGD (issue 5), superseded").  The current evidence is
experiments/ablations.py's groups dq-sgd and dq-ramp, run by experiments/regenerate.py, which
does not use this script.

    python experiments/qsgd_vs_dqsgd.py [--iterations 500] [--seed 0] [--lr 0.1 0.05 0.02]
                                        [--only NAME ...] [--table-only]
    python experiments/qsgd_vs_dqsgd.py --seeds 0 1 2 --lr 0.01 --only qsgd-4 dq-sgd-eps16

Runs every configuration below at every learning rate with ``mpiexec -n 5 hpcgrad train`` (the
mpiexec next to this Python), one after the other, logs to ``runs/issue5/NAME-lrLR.h5``, then
prints a Markdown table read from the HDF5 logs: MB up and down per worker, bits per coordinate
of the uplinks, the widths used, final accuracy and loss.  A run that diverges (NaN loss: the job
stops) is listed as such.  ``--table-only`` re-reads existing logs.  ``--seeds S ...`` runs every
seed and adds a table of final accuracy as mean ± sample std over the seeds per run and lr.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

from common import mean_std

RUNS = {
    "fp32-ps": ["--algorithm", "fp32-ps"],
    "qsgd-2": ["--algorithm", "qsgd", "--bits", "2"],
    "qsgd-3": ["--algorithm", "qsgd", "--bits", "3"],
    "qsgd-4": ["--algorithm", "qsgd", "--bits", "4"],
    "qsgd-5": ["--algorithm", "qsgd", "--bits", "5"],
    "qsgd-6": ["--algorithm", "qsgd", "--bits", "6"],
    "qsgd-8": ["--algorithm", "qsgd", "--bits", "8"],
    "dq-sgd": ["--algorithm", "dq-sgd"],
    "dq-sgd-start3": ["--algorithm", "dq-sgd", "--dq-start-bits", "3"],
    "dq-sgd-start3-w10": ["--algorithm", "dq-sgd", "--dq-start-bits", "3", "--dq-window", "10"],
    "dq-sgd-start2-rho0.99": ["--algorithm", "dq-sgd", "--dq-start-bits", "2",
                              "--dq-rho", "0.99"],
    "dq-sgd-start3-rho0.99": ["--algorithm", "dq-sgd", "--dq-start-bits", "3",
                              "--dq-rho", "0.99"],
    "dq-sgd-start3-rho0.995": ["--algorithm", "dq-sgd", "--dq-start-bits", "3",
                               "--dq-rho", "0.995"],
    "dq-sgd-start3-rho1": ["--algorithm", "dq-sgd", "--dq-start-bits", "3", "--dq-rho", "1"],
    "dq-sgd-eps4": ["--algorithm", "dq-sgd", "--dq-start-bits", "3", "--dq-error-target", "4"],
    "dq-sgd-eps16": ["--algorithm", "dq-sgd", "--dq-start-bits", "3",
                     "--dq-error-target", "16"],
    "qsgd-4-qdown": ["--algorithm", "qsgd", "--bits", "4", "--quantize-downlink"],
    "dq-sgd-start2-rho0.99-qdown": ["--algorithm", "dq-sgd", "--dq-start-bits", "2",
                                    "--dq-rho", "0.99", "--quantize-downlink"],
}


def command(name, lr, iterations, seed, out):
    mpiexec = Path(sys.executable).parent / "mpiexec"
    return [str(mpiexec), "-n", "5", sys.executable, "-m", "mpi4py", "-m", "hpcgrad", "train",
            *RUNS[name], "--lr", str(lr), "--iterations", str(iterations), "--seed", str(seed),
            "--eval-every", "100", "--quiet", "--overwrite",
            "--log", str(out / f"{stem(name, lr, seed)}.h5")]


def stem(name, lr, seed):
    return f"{name}-lr{lr}" + (f"-s{seed}" if seed else "")


def row(path: Path, iterations: int) -> str:
    with h5py.File(path, "r", swmr=True) as f:
        if f["steps/bytes_up"].shape[0] < iterations:
            return f"| {path.stem} | | | | | | diverged at step {f['steps/bytes_up'].shape[0]} | |"
        steps, ev = f["steps"], f["eval"]
        n, m = steps["bytes_up"].shape
        d = int(f.attrs["num_params"])
        cfg = json.loads(f.attrs["config"])
        up = steps["bytes_up"][:].sum(axis=0).mean()  # per worker
        down = steps["bytes_down"][:].sum()
        bits = steps["bits"][:] if "bits" in steps else np.full(n, 32)
        widths = ", ".join(f"{b}:{c}" for b, c in zip(*np.unique(bits, return_counts=True)))
        bits_per_coord = 8 * up / (n * d)
        return (f"| {path.stem} | {cfg['lr']} | {up / 1e6:.3f} | {down / 1e6:.3f} | "
                f"{bits_per_coord:.2f} | {bits.mean():.2f} ({widths}) | "
                f"{100 * ev['accuracy'][-1]:.2f} | {ev['loss'][-1]:.4f} |")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--iterations", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="run every seed; adds mean ± std over them")
    p.add_argument("--out", default="runs/issue5")
    p.add_argument("--lr", type=float, nargs="+", default=[0.1, 0.05, 0.02])
    p.add_argument("--only", nargs="*", default=None)
    p.add_argument("--table-only", action="store_true")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = args.only or list(RUNS)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    seeds = args.seeds or [args.seed]
    if not args.table_only:
        for seed in seeds:
            for name in names:
                for lr in args.lr:
                    cmd = command(name, lr, args.iterations, seed, out)
                    print("$ mpiexec -n 5 hpcgrad", " ".join(cmd[8:]), flush=True)
                    subprocess.run(cmd, env=env)
    print("| run | lr | MB up / worker | MB down | uplink bits / coordinate (incl. header, "
          "norms) | mean width b (width:steps) | final accuracy % | final loss |")
    print("|---|---|---|---|---|---|---|---|")
    for seed in seeds:
        for name in names:
            for lr in args.lr:
                path = out / f"{stem(name, lr, seed)}.h5"
                if path.exists():
                    print(row(path, args.iterations))
    if args.seeds:
        print(f"\n| run | lr | MB up / worker (mean) | final accuracy %, mean ± std over "
              f"{len(seeds)} seeds |")
        print("|---|---|---|---|")
        for name in names:
            for lr in args.lr:
                done = [final(out / f"{stem(name, lr, s)}.h5", args.iterations) for s in seeds]
                done = [d for d in done if d is not None]
                if done:
                    print(f"| {name} | {lr} | {np.mean([d[0] for d in done]) / 1e6:.3f} | "
                          f"{mean_std([d[1] for d in done])}"
                          + ("" if len(done) == len(seeds) else f" ({len(done)} seeds)") + " |")
    return 0


def final(path: Path, iterations: int):
    """(uplink bytes per worker, final accuracy) of a finished run, or None."""
    if not path.exists():
        return None
    with h5py.File(path, "r", swmr=True) as f:
        if f["steps/bytes_up"].shape[0] < iterations:
            return None
        return float(f["steps/bytes_up"][:].sum(axis=0).mean()), float(f["eval/accuracy"][-1])


if __name__ == "__main__":
    sys.exit(main())
