"""Issue 21's tables and figures for the two vote methods (signum-mv, s3gd-mv), read from the
logs of the ``votes-*`` groups of ``experiments/ablations.py`` (docs/experiments.md, "The vote
methods with 3 seeds").

    python experiments/votes.py                      # Markdown tables, PNGs in docs/experiments/
    python experiments/votes.py --runs DIR --figures DIR --seeds 0 1

The runs themselves are ``ablations.py run``, one MPI job per world size (a group's ``ranks``
is M + 1; ``mpiexec -n N python -m mpi4py experiments/ablations.py run --group ...``):

    N = 2: votes-workers-m1           N = 8: votes-adversaries
    N = 3: votes-workers-m2           N = 9: votes-workers-m8 votes-k-rule-m8
    N = 5: votes-workers-m4 votes-k-rule-m4
    N = 16: votes-workers-m15 votes-k-rule-m15 votes-digits-m15

Every number follows ablations.py's rule: for each method (and M, and adversary count) the
learning rate is the one of its grid whose final *validation* accuracy, averaged over the
seeds, is highest; the table reports the *test* loss and accuracy at that lr as mean +- sample
standard deviation over the seeds.  The test set chooses nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import ablations as ab
from common import mean_std

FIGURES = Path("docs/experiments")


def read(path: Path) -> dict | None:
    """The final test and validation figures of one complete log, and its traffic."""
    import h5py
    import numpy as np

    if not ab.complete(path):
        return None
    with h5py.File(path, "r") as f:
        workers = int(f.attrs["num_workers"])
        steps = f["steps"]
        out = {"test": float(f["eval"]["accuracy"][-1]), "loss": float(f["eval"]["loss"][-1]),
               "validation": float(f["validation"]["accuracy"][-1]),
               "mb_up": float(steps["bytes_up"][...].sum()) / workers / 1e6,
               "mb_down": float(steps["bytes_down"][...].sum()) / 1e6,
               "d": int(f.attrs["num_params"]), "workers": workers}
        if "nnz_up" in steps:
            out["k"] = float(np.mean(steps["nnz_up"][...]))
            out["union"] = float(np.mean(steps["union_size"][...]))
            # Body bits per sent sign (positions coded, the 32-byte header left out).
            body = steps["bytes_up"][...] - int(f.attrs["header_bytes"])
            out["bits_per_entry"] = 8 * float(body.sum()) / float(steps["nnz_up"][...].sum())
    return out


def chosen(group, method, seeds, root: Path):
    """(lr, rows) at the lr of ``method``'s grid with the best mean validation accuracy over
    ``seeds``; None if no run of it is complete."""
    best = None
    for lr in method.lrs:
        rows = [read(ab.log_of(group, f"{method.key}-lr{lr}-s{s}", root)) for s in seeds]
        rows = [r for r in rows if r is not None]
        if not rows:
            continue
        val = sum(r["validation"] for r in rows) / len(rows)
        if best is None or val > best[0]:
            best = (val, lr, rows)
    return None if best is None else best[1:]


def mean(rows, key) -> float:
    return sum(r[key] for r in rows) / len(rows)


def seeds_note(rows, seeds) -> str:
    return "" if len(rows) == len(seeds) else f" ({len(rows)} seeds)"


def lr_cell(lr, method) -> str:
    return f"{lr} ({', '.join(map(str, method.lrs))})"


# ---- 1. error against M ---------------------------------------------------------------------


def workers_table(args, root: Path) -> dict:
    """Final test loss and accuracy against M, and each sign method's gap to fp32 at that M."""
    print("\n#### Error against the number of workers M (embedded task, IID, batch 32 per "
          "worker, 200 iterations)\n")
    print("| M | method | lr (chosen of) | test loss (mean ± std) | test acc % (mean ± std) | "
          "minus fp32: loss / acc points | MB up / worker |")
    print("|---:|---|---|---|---|---|---|")
    curves = {}
    for m in ab.VOTE_WORKERS:
        group = ab.BY_GROUP[f"votes-workers-m{m}"]
        base = None
        for method in group.methods:
            got = chosen(group, method, args.seeds, root)
            if got is None:
                print(f"| {m} | {method.label} | not run | | | | |")
                continue
            lr, rows = got
            if method.key == "fp32":
                base = rows
                gap = ""
            elif base is None:
                gap = "no fp32"
            else:
                gap = (f"{mean(rows, 'loss') - mean(base, 'loss'):+.3f} / "
                       f"{100 * (mean(rows, 'test') - mean(base, 'test')):+.2f}")
            curves.setdefault(method.label, []).append((m, rows))
            print(f"| {m} | {method.label} | {lr_cell(lr, method)} | "
                  f"{mean_std([r['loss'] for r in rows], 1.0, 3)} | "
                  f"{mean_std([r['test'] for r in rows])}{seeds_note(rows, args.seeds)} | "
                  f"{gap} | {mean(rows, 'mb_up'):.3f} |")
    return curves


def plot_workers(curves: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for label, points in curves.items():
        ms = [m for m, _ in points]
        for ax, key, scale in ((axes[0], "loss", 1.0), (axes[1], "test", 100.0)):
            values = [np.array([scale * r[key] for r in rows]) for _, rows in points]
            ax.errorbar(ms, [v.mean() for v in values],
                        yerr=[v.std(ddof=1) if len(v) > 1 else 0 for v in values],
                        marker="o", capsize=3, label=label.replace("`", ""))
    for ax, what in zip(axes, ("final test loss", "final test accuracy %")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(ab.VOTE_WORKERS), [str(m) for m in ab.VOTE_WORKERS])
        ax.set_xlabel("workers M (batch 32 each)")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("embedded task, 200 iterations, lr chosen on validation, mean ± std of 3 seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---- 2. adversaries -------------------------------------------------------------------------


def adversaries_table(args, root: Path) -> dict:
    group = ab.BY_GROUP["votes-adversaries"]
    by_key = {m.key: m for m in group.methods}
    print(f"\n#### Adversaries: 0..3 of M = {ab.ADVERSARY_WORKERS} workers (embedded task, IID, "
          "200 iterations)\n")
    counts = (0, *ab.ADVERSARY_COUNTS)
    print("| method | attack | lr | "
          + " | ".join(f"{n} adversaries: test acc %" for n in counts)
          + " | minus clean at 1 / 2 / 3 (points) |")
    print("|---|---|---|" + "---|" * len(counts) + "---|")
    curves = {}
    for base, attacks in ((ab.SIGNUM, ("invert", "random")), (ab.S3GD, ("invert", "random")),
                          (ab.FP32_EMB, ("invert",))):
        clean = by_key[base.key]
        for attack in attacks:
            cells, accs = [], []
            for n in counts:
                method = clean if n == 0 else by_key[f"{base.key}-a{n}-{attack}"]
                got = chosen(group, method, args.seeds, root)
                if got is None:
                    cells.append("not run")
                    accs.append(None)
                    continue
                _, rows = got
                cells.append(mean_std([r["test"] for r in rows]) + seeds_note(rows, args.seeds))
                accs.append(rows)
            drop = " / ".join(
                f"{100 * (mean(rows, 'test') - mean(accs[0], 'test')):+.2f}"
                if accs[0] and rows else "-" for rows in accs[1:])
            curves[f"{base.label}, {attack}"] = list(zip(counts, accs))
            print(f"| {base.label} | {attack} | {clean.lrs[0]} | {' | '.join(cells)} | "
                  f"{drop} |")
    return curves


def plot_adversaries(curves: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in curves.items():
        points = [(n, np.array([100 * r["test"] for r in rows])) for n, rows in points if rows]
        ax.errorbar([n for n, _ in points], [v.mean() for _, v in points],
                    yerr=[v.std(ddof=1) if len(v) > 1 else 0 for _, v in points],
                    marker="o", capsize=3, label=label,
                    linestyle="-" if "invert" in label else "--")
    ax.axvline(ab.ADVERSARY_WORKERS / 2, color="grey", linewidth=0.8)
    ax.set_xlabel(f"adversarial workers (of M = {ab.ADVERSARY_WORKERS}); grey: M/2")
    ax.set_ylabel("final test accuracy %")
    ax.set_xticks((0, *ab.ADVERSARY_COUNTS))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---- 3. the K rule, 4. digits at M = 15 ------------------------------------------------------


def k_rule_table(args, root: Path) -> None:
    print("\n#### S3GD-MV: K = d/M (`--k-per-worker auto`) against a fixed 1% (embedded task, "
          "IID, 200 iterations)\n")
    print("| M | K rule | lr (chosen of) | test acc % (mean ± std) | K / d | mean \\|U\\| / d | "
          "uplink body bits / entry | MB up / worker | MB down |")
    print("|---:|---|---|---|---:|---:|---:|---:|---:|")
    for m in ab.K_RULE_WORKERS:
        group = ab.BY_GROUP[f"votes-k-rule-m{m}"]
        for method in group.methods:
            got = chosen(group, method, args.seeds, root)
            rule = "d/M" if method.key == "s3gd-auto" else "1%"
            if got is None:
                print(f"| {m} | {rule} | not run | | | | | | |")
                continue
            lr, rows = got
            d = rows[0]["d"]
            print(f"| {m} | {rule} | {lr_cell(lr, method)} | "
                  f"{mean_std([r['test'] for r in rows])}{seeds_note(rows, args.seeds)} | "
                  f"{mean(rows, 'k') / d:.4f} | {mean(rows, 'union') / d:.4f} | "
                  f"{mean(rows, 'bits_per_entry'):.2f} | "
                  f"{mean(rows, 'mb_up'):.3f} | {mean(rows, 'mb_down'):.3f} |")


def digits_table(args, root: Path) -> None:
    group = ab.BY_GROUP["votes-digits-m15"]
    print("\n#### Real handwritten digits, M = 15 workers (16 ranks), 200 iterations\n")
    print("| method | lr (chosen of) | validation acc % | test acc % (mean ± std) | "
          "test loss | MB up / worker |")
    print("|---|---|---|---|---|---:|")
    for method in group.methods:
        got = chosen(group, method, args.seeds, root)
        if got is None:
            print(f"| {method.label} | not run | | | | |")
            continue
        lr, rows = got
        print(f"| {method.label} | {lr_cell(lr, method)} | "
              f"{mean_std([r['validation'] for r in rows])} | "
              f"{mean_std([r['test'] for r in rows])}{seeds_note(rows, args.seeds)} | "
              f"{mean_std([r['loss'] for r in rows], 1.0, 3)} | {mean(rows, 'mb_up'):.3f} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--runs", default=str(ab.RUNS_DIR), help="where the logs are")
    parser.add_argument("--figures", default=str(FIGURES), help="where the PNGs go")
    args = parser.parse_args(argv)
    root, figures = Path(args.runs), Path(args.figures)
    figures.mkdir(parents=True, exist_ok=True)
    curves = workers_table(args, root)
    if curves:
        plot_workers(curves, figures / "votes-workers.png")
    curves = adversaries_table(args, root)
    if any(rows for points in curves.values() for _, rows in points):
        plot_adversaries(curves, figures / "votes-adversaries.png")
    k_rule_table(args, root)
    digits_table(args, root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
