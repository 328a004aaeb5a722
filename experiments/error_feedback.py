"""Issue 6 evidence: no feedback, EF, step-ahead EF and step-ahead EF with error averaging,
with scaled sign and with top-K.

Superseded: this script produced the single-seed tables and the figures
error_feedback-n5/n9.png now in docs/experiments/history.md ("Error feedback ... (issue 6),
superseded").  The current evidence is experiments/ablations.py's groups ef-n4 and ef-n8, run
by experiments/regenerate.py, which does not use this script.

    python experiments/error_feedback.py [--ranks 5] [--iterations 600] [--seed 0]
                                         [--lr 0.1] [--momentum 0.9] [--sparsity 0.01]
                                         [--averaging 20] [--table-only]

Runs ``mpiexec -n RANKS hpcgrad train --algorithm ef-sgd --compressor C --feedback F`` for each
compressor and mode below, one after the other (the mpiexec next to this Python), logs to
``runs/issue6/C-MODE-nRANKS-sSEED.h5``, then prints a Markdown table read from the logs (final
held-out accuracy and loss, MB up and down per worker, MB of error averaging per worker) and
writes ``docs/experiments/error_feedback-nRANKS.png``: held-out loss against iterations, one panel per
compressor.  A run that diverges (NaN loss: the job stops) is listed as such.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import h5py
from common import launch, mpiexec_train

COMPRESSORS = {"scaled-sign": [], "topk": ["--sparsity", "{sparsity}"]}
MODES = {
    "none": ["--feedback", "none"],
    "ef": ["--feedback", "ef"],
    "step-ahead": ["--feedback", "step-ahead"],
    "step-ahead+averaging": ["--feedback", "step-ahead", "--error-averaging", "{averaging}"],
}


def figure_path(args) -> Path:
    return Path("docs/experiments") / f"error_feedback-n{args.ranks}.png"


def log_path(compressor, mode, args) -> Path:
    return Path("runs/issue6") / f"{compressor}-{mode}-n{args.ranks}-s{args.seed}.h5"


def command(compressor, mode, args) -> list[str]:
    fill = {"sparsity": args.sparsity, "averaging": args.averaging}
    extra = [a.format(**fill) for a in COMPRESSORS[compressor] + MODES[mode]]
    return mpiexec_train(args.ranks, [
            "--algorithm", "ef-sgd", "--compressor", compressor, *extra,
            "--lr", str(args.lr), "--momentum", str(args.momentum),
            "--iterations", str(args.iterations), "--seed", str(args.seed),
            "--eval-every", "25", "--quiet", "--overwrite",
            "--log", str(log_path(compressor, mode, args))])


def read(path: Path):
    """(iterations, eval losses, final accuracy, MB up, MB down, MB averaging) or None."""
    try:
        with h5py.File(path, "r") as f:
            if f["steps/bytes_down"].shape[0] < f.attrs["iterations"]:
                return None  # stopped before the end (diverged)
            ev = f["eval"]
            steps = f["steps"]
            return (ev["iteration"][...], ev["loss"][...], float(ev["accuracy"][-1]),
                    steps["bytes_up"][...].sum(0).mean() / 1e6,
                    steps["bytes_down"][...].sum() / 1e6,
                    steps["bytes_average"][...].sum(0).mean() / 1e6)
    except OSError:  # a job aborted mid-write leaves its log flagged open
        return None


def plot(args) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(COMPRESSORS), figsize=(11, 4), sharey=True)
    for ax, compressor in zip(axes, COMPRESSORS):
        for mode in MODES:
            got = read(log_path(compressor, mode, args))
            if got is not None:
                ax.plot(got[0], got[1], label=mode)
        ax.set_title(f"ef-sgd --compressor {compressor}")
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("held-out loss")
    axes[0].legend(title="--feedback")
    fig.suptitle(f"{args.ranks - 1} workers, lr {args.lr}, momentum {args.momentum}, "
                 f"seed {args.seed}")
    fig.tight_layout()
    figure_path(args).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure_path(args), dpi=110)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", type=int, default=5)
    p.add_argument("--iterations", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--sparsity", type=float, default=0.01)
    p.add_argument("--averaging", type=int, default=20)
    p.add_argument("--table-only", action="store_true")
    args = p.parse_args()
    Path("runs/issue6").mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        for compressor in COMPRESSORS:
            for mode in MODES:
                launch(command(compressor, mode, args))
    print("| compressor | feedback | final accuracy | final loss | MB up / worker | MB down "
          "| MB averaging / worker |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for compressor in COMPRESSORS:
        for mode in MODES:
            got = read(log_path(compressor, mode, args))
            if got is None:
                print(f"| {compressor} | {mode} | diverged or missing | | | | |")
                continue
            _, losses, acc, up, down, avg = got
            print(f"| {compressor} | {mode} | {acc:.2%} | {losses[-1]:.4f} | {up:.3f} "
                  f"| {down:.3f} | {avg:.3f} |")
    plot(args)
    print(f"figure: {figure_path(args)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
