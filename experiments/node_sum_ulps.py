"""How far an fp32 mean summed per node first lands from the flat mean (docs/hierarchy.md,
"Means are forwarded, not summed on the node").

    python experiments/node_sum_ulps.py [--params D] [--seed S]

One step's fp32 mean of M gradients of d coordinates (Gaussian times log-normal magnitudes),
added in worker order as the flat server does, against node sums of m workers (each in worker
order) added in node order; both divided by M in float32.  Prints, per (M, m), the share of
coordinates that differ and the median, 99th percentile and largest distance in ULPs (units
in the last place of float32: the distance between the two values' positions on the float32
line).
"""

from __future__ import annotations

import argparse

import numpy as np

CASES = ((8, 4), (16, 4), (32, 8))


def ordered(x: np.ndarray) -> np.ndarray:
    """float32 -> int64 positions that increase with the value (so differences count ULPs)."""
    bits = x.view(np.int32).astype(np.int64)
    return np.where(bits < 0, -(bits & 0x7FFFFFFF), bits)


def means(grads: np.ndarray, per_node: int) -> tuple[np.ndarray, np.ndarray]:
    m_total = np.float32(grads.shape[0])
    flat = grads[0].copy()
    for g in grads[1:]:
        flat += g
    nodes = []
    for start in range(0, grads.shape[0], per_node):
        node = grads[start].copy()
        for g in grads[start + 1: start + per_node]:
            node += g
        nodes.append(node)
    summed = nodes[0]
    for node in nodes[1:]:
        summed += node
    return flat / m_total, summed / m_total


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    print("| M, m | coordinates that differ | median | 99th percentile | largest |")
    print("|---|---|---|---|---|")
    for workers, per_node in CASES:
        grads = (rng.standard_normal((workers, args.params), dtype=np.float32)
                 * rng.lognormal(0.0, 1.0, (workers, args.params)).astype(np.float32))
        flat, node = means(grads, per_node)
        ulps = np.abs(ordered(flat) - ordered(node))
        print(f"| {workers}, {per_node} | {100 * np.mean(ulps > 0):.1f}% | "
              f"{int(np.median(ulps))} ULP | {int(np.percentile(ulps, 99))} ULP | "
              f"{int(ulps.max()):,} ULP |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
