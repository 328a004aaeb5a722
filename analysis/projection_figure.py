#!/usr/bin/env python
"""The projected topologies of docs/analysis.md: a table and a figure, from the model alone.

    python analysis/projection_figure.py [--output docs/analysis/projection_topologies.png]

Prints the Markdown table (signum-mv and s3gd-mv at d = 25.6M, M = 8, 64, 256, 1024 workers on
8 per node, inter-node 100 Gb/s and 10 Gb/s, intra-node 200 GB/s) and writes the PNG: predicted
exchange time per step against workers (8 ... 1024) for every topology.  Nothing here is
measured: the numbers are hpcgrad.analysis.projection's equations (the same as
`hpcgrad analyze project --recommend`).
"""

from __future__ import annotations

import argparse
import math
import os
import sys

from hpcgrad.analysis import projection as P

D = 25_600_000
PER_NODE = 8
TABLE_WORKERS = (8, 64, 256, 1024)
CURVE_WORKERS = (8, 16, 32, 64, 128, 256, 512, 1024)
INTRA = P.CostModel(alpha=2e-6, beta=1 / 200e9)             # NVLink-ish: 200 GB/s, 2 us
NETWORKS = {"100 Gb/s": P.CostModel(alpha=5e-6, beta=1 / 12.5e9),
            "10 Gb/s": P.CostModel(alpha=5e-6, beta=1 / 1.25e9)}
ALGORITHMS = ("signum-mv", "s3gd-mv")
SERVERS = (2, 4, 8)
STYLE = {"flat": ("#C44E52", "-"), "sharded S=2": ("#DD8452", "--"),
         "sharded S=4": ("#DD8452", "-."), "sharded S=8": ("#DD8452", "-"),
         "serverless": ("#4C72B0", "-"), "hierarchical forwarding": ("#55A868", "--"),
         "hierarchical combining": ("#55A868", "-"), "fp32 allreduce": ("#777777", ":")}


def cases(algorithm: str, inter: P.CostModel, workers) -> list[dict]:
    net = P.Network(INTRA, inter)
    out = []
    for m in workers:
        n = math.ceil(m / PER_NODE)
        layouts = P.candidate_layouts(m, n, SERVERS, algorithm == "signum-mv", D)
        r = P.recommend(layouts, lambda w: P.algorithm_bytes(algorithm, D, w)[0],
                        lambda w: P.algorithm_bytes(algorithm, D, w)[1], net, reference=4.0 * D)
        r.update(workers=m, nodes=n)
        out.append(r)
    return out


def table() -> str:
    names = list(STYLE)
    lines = ["| algorithm | inter-node | M (nodes) | " + " | ".join(names) + " | fastest |",
             "|---|---|---|" + "---:|" * len(names) + "---|"]
    for algorithm in ALGORITHMS:
        for label, inter in NETWORKS.items():
            for r in cases(algorithm, inter, TABLE_WORKERS):
                ms = {row["topology"]: row["seconds"] * 1e3 for row in r["rows"]}
                cells = [f"{ms[n]:.3g}" if n in ms else "–" for n in names]
                best = r["best"] + (f" ({r['margin']:.2f}x)" if r["margin"] else "")
                lines.append(f"| {algorithm} | {label} | {r['workers']} ({r['nodes']}) | "
                             + " | ".join(cells) + f" | {best} |")
    return "\n".join(lines)


def figure(path: str) -> None:
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5), sharex=True)
    for i, algorithm in enumerate(ALGORITHMS):
        for j, (label, inter) in enumerate(NETWORKS.items()):
            ax = axes[i][j]
            series = {}
            for r in cases(algorithm, inter, CURVE_WORKERS):
                for row in r["rows"]:
                    series.setdefault(row["topology"], []).append((r["workers"],
                                                                   row["seconds"] * 1e3))
            for name, points in series.items():
                color, ls = STYLE[name]
                xs, ys = zip(*points)
                ax.plot(xs, ys, color=color, ls=ls, lw=2 if ls == "-" else 1.5, marker="o",
                        ms=3, label=name)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{algorithm}, d = 25.6M, inter-node {label}", fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
            if j == 0:
                ax.set_ylabel("predicted exchange ms per step")
            if i == 1:
                ax.set_xlabel(f"workers ({PER_NODE} per node, intra-node 200 GB/s)")
    axes[0][1].legend(fontsize=8, loc="upper left")
    fig.suptitle("Projected (alpha-beta model, not measured): step exchange time by topology",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", default="docs/analysis/projection_topologies.png")
    args = ap.parse_args(argv)
    print(table())
    figure(args.output)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
