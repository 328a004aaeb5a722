"""What the experiment scripts share: launching one ``hpcgrad train`` under mpiexec."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path


def mpiexec_train(ranks: int, options: list[str]) -> list[str]:
    """``mpiexec -n RANKS hpcgrad train OPTIONS``, with the mpiexec and hpcgrad of this
    Python's environment (pip's MPICH, not a system MPI)."""
    bindir = Path(sys.executable).parent
    return [str(bindir / "mpiexec"), "-n", str(ranks), str(bindir / "hpcgrad"), "train",
            *options]


def launch(cmd: list[str], label: str = "$") -> int:
    """Print ``cmd``, run it with one thread per rank, and print the first line of its error
    output if it fails (a diverged run, a bad option); return its exit status."""
    print(label, " ".join(cmd), flush=True)
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
        print(f"  failed: {lines[0]}", flush=True)
    return done.returncode


def mean_std(values, scale: float = 100.0, digits: int = 2) -> str:
    """``mean ± sample standard deviation`` of ``values`` times ``scale`` (percent points by
    default); ``± n/a`` for a single value."""
    values = [scale * v for v in values]
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return f"{mean:.{digits}f} ± n/a"
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return f"{mean:.{digits}f} ± {std:.{digits}f}"
