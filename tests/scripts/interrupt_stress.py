"""Repeat start-up interrupts of ``mpiexec -n N python -m hpcgrad train`` and count hangs.

    python tests/scripts/interrupt_stress.py [--runs 50] [--ranks 5] [--seed 0] [--latest 6]

Each run is one of: SIGINT to ``mpiexec`` (as Ctrl-C), SIGINT to one rank, SIGTERM to
``mpiexec`` -- sent at a random time between 0.2 s and ``--latest`` seconds after the start, that
is, during Python's start-up, ``MPI_Init``, the settings check, ``import torch``, Numba's
compilation or the setup collectives -- or a start-up ImportError on one rank
(``HPCGRAD_TEST_FAIL_AT_START``).  A run that has not ended 30 s after the signal is a hang
(it is then killed).  Prints one line per run and a summary; exit status 1 if any run hung or
crashed (segmentation fault), else 0.  Not part of CI: 50 runs take a few minutes.
"""

from __future__ import annotations

import argparse
import collections
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: launch_signals, mpirun

from launch_signals import Launch, interrupted_cleanly, signal_at  # noqa: E402

KINDS = ("sigint-mpiexec", "sigint-rank", "sigterm-mpiexec", "import-failure")


def one_run(kind: str, ranks: int, after_s: float, rank: int, workdir: Path):
    args = ["train", "--quiet", "--iterations", "30", "--log", workdir / "run.h5"]
    if kind == "import-failure":
        started = time.monotonic()
        ended = Launch(ranks, args, env={"HPCGRAD_TEST_FAIL_AT_START": str(rank)},
                       cwd=workdir).wait(60)
        return ended, time.monotonic() - started
    sig = signal.SIGTERM if kind == "sigterm-mpiexec" else signal.SIGINT
    return signal_at(ranks, args, sig, after_s, rank=rank if kind == "sigint-rank" else None,
                     timeout=30, cwd=workdir)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--ranks", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latest", type=float, default=6.0,
                        help="latest signal time, seconds after the start")
    opts = parser.parse_args(argv)
    rng = random.Random(opts.seed)
    outcomes = collections.Counter()
    bad = 0
    for i in range(opts.runs):
        kind = KINDS[i % len(KINDS)]
        after_s = round(rng.uniform(0.2, opts.latest), 2)
        rank = rng.randrange(opts.ranks)
        with tempfile.TemporaryDirectory(prefix="hpcgrad-stress-") as tmp:
            ended, took = one_run(kind, opts.ranks, after_s, rank, Path(tmp))
        problems = interrupted_cleanly(ended)
        if kind != "import-failure" and not ended.hung and took > 10:
            problems.append(f"slow: {took:.1f} s after the signal")
        messages = sum(ended.stderr.count(m) for m in
                       ("hpcgrad: interrupted", "hpcgrad: error on rank", "hpcgrad: terminated"))
        tracebacks = ended.stderr.count("Traceback")
        bad += bool(problems)
        outcomes["hang" if ended.hung else f"exit {ended.returncode}"] += 1
        print(f"{i + 1:3d} {kind:16s} at {after_s:4.2f} s rank {rank}: "
              + ("HUNG" if ended.hung else f"exit {ended.returncode}")
              + f" after {took:4.1f} s, {messages} hpcgrad message(s), {tracebacks} traceback(s)"
              + (f"  PROBLEM: {'; '.join(problems)}" if problems else ""), flush=True)
    print(f"{opts.runs} runs: {outcomes['hang']} hung, {bad} with problems; "
          + ", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items())))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
