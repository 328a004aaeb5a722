"""The experiments of docs/experiments.md as groups of runs: several seeds, learning rates
chosen on a validation split (issue 21).  ``experiments/regenerate.py`` runs every group and
writes every table; this script runs and tables one group at a time.

    python experiments/ablations.py --list                         # groups and their runs
    mpiexec -n 5 python -m mpi4py experiments/ablations.py run     # every 5-rank group, one job
    mpiexec -n 5 python -m mpi4py experiments/ablations.py run --group digits --seeds 0 1 2
    mpiexec -n 5 python -m mpi4py experiments/ablations.py run --only 'classes2-*'
    python experiments/ablations.py table                          # Markdown tables from logs

``run`` trains every run of the chosen groups one after the other *inside one MPI job*
(``hpcgrad.training.runtime.train`` on ``MPI.COMM_WORLD``, as the tests do): the ranks start,
import torch and load Numba once instead of once per run, which on a small shared machine is
most of a short run's time.  Under Slurm the same line runs as ``srun -n 5 python -m mpi4py
experiments/ablations.py run --group G`` (one group per array task: ``--group`` takes the
``$SLURM_ARRAY_TASK_ID``-th name of ``--list`` too, as a number).  A group's ``ranks`` is its
world size, M workers + 1: without ``--group`` a job runs only the groups of its own size, so
the vote groups (M = 1..15) need one job per size (``experiments/votes.py`` lists them).
Logs go to ``runs/issue21/GROUP/NAME-lrLR-sSEED.h5``; a run whose log is complete is not run
again (``--force`` reruns it).

Every run holds out ``--validation-fraction`` of its training set.  ``table`` picks, for each
method (and partition), the learning rate whose final *validation* accuracy, averaged over the
seeds, is highest, and reports the *test* accuracy at that learning rate as mean +- sample
standard deviation over the seeds, with the uplink MB per worker.  The test set never chooses.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import mean_std

RUNS_DIR = Path("runs/issue21")


@dataclass(frozen=True)
class Method:
    """One row of a table: a label, its ``TrainConfig`` settings and the lrs tried."""
    key: str
    label: str
    settings: dict
    lrs: tuple


@dataclass
class Group:
    name: str
    what: str
    common: dict
    methods: list
    iterations: int
    partitions: tuple = ("iid",)
    ranks: int = 5
    extra: dict = field(default_factory=dict)
    #: evaluate every this many steps; None: 4 evaluations per run
    eval_every: int | None = None


SIGNSGD = Method("signsgd", "signSGD-MV (momentum 0)",
                 {"algorithm": "signum-mv", "momentum": 0.0}, (0.0003, 0.001))
S3GD = Method("s3gd", "S3GD-MV 1%, residual on",
              {"algorithm": "s3gd-mv", "sparsity": 0.01, "residual": 1.0}, (0.003, 0.01))
S3GD_OFF = Method("s3gd-nores", "S3GD-MV 1%, residual off (`--residual 0`)",
                  {"algorithm": "s3gd-mv", "sparsity": 0.01, "residual": 0.0}, (0.003, 0.01))

# ---- issue 21, part 2: the methods of groups dq-ramp, ef-n4, ef-n8, topk-n4, topk-n8 ----------

DQ_EPS16_RAMP = Method("dq-eps16-r99", "DQ-SGD, error target EPS = 16, ρ 0.99 (ramps)",
                       {"algorithm": "dq-sgd", "dq_start_bits": 2, "dq_error_target": 16.0,
                        "dq_rho": 0.99}, (0.02, 0.01))
DQ_EPS48_RAMP = Method("dq-eps48-r99", "DQ-SGD, error target EPS = 48, ρ 0.99 (ramps)",
                       {"algorithm": "dq-sgd", "dq_start_bits": 2, "dq_error_target": 48.0,
                        "dq_rho": 0.99}, (0.02, 0.01))
# fp32's grid is one step below the compressed methods': at 300-600 steps on this task fp32
# SGD is best near 0.01 (issue 10's sweep), scaled sign and top-K near 0.1 (issues 4 and 6)
FP32 = Method("fp32", "fp32 SGD (fp32-ps)", {"algorithm": "fp32-ps"}, (0.03, 0.01))
EF_METHODS = [
    FP32,
    Method("none", "scaled sign, no feedback",
           {"algorithm": "ef-sgd", "feedback": "none"}, (0.1, 0.03)),
    Method("ef", "scaled sign, EF", {"algorithm": "ef-sgd", "feedback": "ef"}, (0.1, 0.03)),
    Method("ef-avg", "scaled sign, EF + averaging every 20",
           {"algorithm": "ef-sgd", "feedback": "ef", "error_averaging": 20}, (0.1, 0.03)),
    Method("saef", "scaled sign, step-ahead EF",
           {"algorithm": "ef-sgd", "feedback": "step-ahead"}, (0.1, 0.03)),
    Method("saef-avg", "scaled sign, step-ahead EF + averaging every 20",
           {"algorithm": "ef-sgd", "feedback": "step-ahead", "error_averaging": 20},
           (0.1, 0.03)),
]
TOPK_METHODS = [
    Method("local", "top-K 1%, `local` (plain top-K)",
           {"algorithm": "topk", "sparsity": 0.01, "topk_selection": "local"}, (0.1, 0.03)),
    Method("union-boost", "top-K 1%, `union-boost` (our reading of Wang et al.)",
           {"algorithm": "topk", "sparsity": 0.01, "topk_selection": "union-boost"},
           (0.1, 0.03)),
    Method("shared-random", "top-K 1%, `shared-random` (our invention)",
           {"algorithm": "topk", "sparsity": 0.01, "topk_selection": "shared-random"},
           (0.1, 0.03)),
    Method("leader", "top-K 1%, `leader` (our invention)",
           {"algorithm": "topk", "sparsity": 0.01, "topk_selection": "leader"}, (0.1, 0.03)),
]

GROUPS = [
    Group("s3gd-residual",
          "S3GD-MV with and without its residual against signSGD-MV, embedded task, IID and "
          "classes:2, 4 workers",
          {"validation_fraction": 0.1}, [SIGNSGD, S3GD, S3GD_OFF], iterations=300,
          partitions=("iid", "classes:2")),
    Group("digits",
          "the headline methods on scikit-learn's real handwritten digits, 4 workers, mlp 128",
          {"dataset": "digits", "validation_fraction": 0.2}, [
              Method("fp32", "fp32 SGD (fp32-ps)", {"algorithm": "fp32-ps"}, (0.1, 0.03)),
              SIGNSGD,
              Method("signum", "Signum-MV (momentum 0.9)",
                     {"algorithm": "signum-mv", "momentum": 0.9}, (0.0003, 0.001)),
              S3GD, S3GD_OFF,
              Method("qsgd-2", "QSGD 2 bits", {"algorithm": "qsgd", "bits": 2}, (0.03, 0.01)),
              Method("qsgd-4", "QSGD 4 bits", {"algorithm": "qsgd", "bits": 4}, (0.1, 0.03)),
              Method("qsgd-8", "QSGD 8 bits", {"algorithm": "qsgd", "bits": 8}, (0.1, 0.03)),
              Method("dq-cal", "DQ-SGD, calibrated λ (start 3 bits, ρ 0.99)",
                     {"algorithm": "dq-sgd", "dq_start_bits": 3, "dq_rho": 0.99},
                     (0.1, 0.03)),
              Method("dq-eps", "DQ-SGD, error target EPS = 16 (start 3 bits, ρ 0.999)",
                     {"algorithm": "dq-sgd", "dq_start_bits": 3, "dq_error_target": 16.0},
                     (0.1, 0.03)),
              Method("ef-none", "scaled sign, no feedback",
                     {"algorithm": "ef-sgd", "feedback": "none"}, (0.1, 0.03)),
              Method("ef", "scaled sign, EF",
                     {"algorithm": "ef-sgd", "feedback": "ef"}, (0.1, 0.03)),
              Method("saef", "scaled sign, step-ahead EF",
                     {"algorithm": "ef-sgd", "feedback": "step-ahead"}, (0.1, 0.03)),
          ], iterations=200),
    Group("dq-sgd",
          "DQ-SGD's error-target and calibrated rules against fixed-width QSGD, embedded task, "
          "4 workers",
          {"validation_fraction": 0.1}, [
              Method("qsgd-2", "QSGD 2 bits", {"algorithm": "qsgd", "bits": 2}, (0.01, 0.005)),
              Method("qsgd-3", "QSGD 3 bits", {"algorithm": "qsgd", "bits": 3}, (0.01, 0.005)),
              Method("qsgd-4", "QSGD 4 bits", {"algorithm": "qsgd", "bits": 4}, (0.02, 0.01)),
              Method("qsgd-8", "QSGD 8 bits", {"algorithm": "qsgd", "bits": 8}, (0.02, 0.01)),
              Method("dq-cal", "DQ-SGD, calibrated λ (start 2 bits, ρ 0.99)",
                     {"algorithm": "dq-sgd", "dq_start_bits": 2, "dq_rho": 0.99},
                     (0.02, 0.01)),
              Method("dq-eps16", "DQ-SGD, error target EPS = 16 (ρ 0.999)",
                     {"algorithm": "dq-sgd", "dq_start_bits": 3, "dq_error_target": 16.0},
                     (0.02, 0.01)),
              Method("dq-eps48", "DQ-SGD, error target EPS = 48 (ρ 0.999)",
                     {"algorithm": "dq-sgd", "dq_start_bits": 3, "dq_error_target": 48.0},
                     (0.02, 0.01)),
          ], iterations=300, eval_every=25),
    # ---- issue 21, part 2: DQ-SGD ramping, error feedback in full, top-K selection rules ----
    Group("dq-ramp",
          "DQ-SGD's error-target rule with ρ 0.99, so that the damping ρ^(T-1-n) spans a factor "
          "of 20 and the width ramps up over the run, embedded task, 4 workers",
          {"validation_fraction": 0.1}, [DQ_EPS16_RAMP, DQ_EPS48_RAMP], iterations=300,
          eval_every=25),
    Group("ef-n4",
          "scaled sign with no feedback, EF, step-ahead EF and each with error averaging "
          "every 20 steps, against fp32 SGD, embedded task, 4 workers",
          {"validation_fraction": 0.1}, EF_METHODS, iterations=300, ranks=5, eval_every=25),
    Group("ef-n8",
          "the same at 8 workers, against fp32 SGD at 8 workers",
          {"validation_fraction": 0.1}, EF_METHODS, iterations=300, ranks=9, eval_every=25),
    # fp32 SGD at these settings is ef-n4's (the same runs): reports.timing reads it there
    Group("topk-n4",
          "top-K 1% with error feedback under the selection rules local, union-boost, "
          "shared-random and leader, embedded task, 4 workers",
          {"validation_fraction": 0.1}, TOPK_METHODS, iterations=300, ranks=5, eval_every=25,
          extra={"fp32_from": "ef-n4"}),
    Group("topk-n8",
          "the same at 8 workers, where the union can reach 8 K",
          {"validation_fraction": 0.1}, TOPK_METHODS, iterations=300, ranks=9, eval_every=25,
          extra={"fp32_from": "ef-n8"}),
]

# ---- the vote methods (issue 21, items 1-4; experiments/votes.py draws their tables) --------

FP32_EMB = Method("fp32", "fp32 SGD (fp32-ps)", {"algorithm": "fp32-ps"}, (0.1, 0.03))
SIGNUM = Method("signum", "Signum-MV (momentum 0.9)",
                {"algorithm": "signum-mv", "momentum": 0.9}, (0.0003, 0.001))
#: With an even M a vote can tie; ``--tie positive`` (the default) breaks every tie towards +1;
#: at even M the study adds ``--tie zero`` (a tied coordinate does not move).
SIGNSGD_TIE0 = Method("signsgd-tie0", "signSGD-MV (momentum 0), `--tie zero`",
                      {"algorithm": "signum-mv", "momentum": 0.0, "tie": "zero"},
                      (0.0003, 0.001))
S3GD_AUTO = Method("s3gd-auto", "S3GD-MV, K = d/M (`--k-per-worker auto`), residual on",
                   {"algorithm": "s3gd-mv", "k_per_worker": "auto", "residual": 1.0},
                   (0.003, 0.01))
#: M of the worker-count study (error against M, and the K rule): 2..16 ranks.
VOTE_WORKERS = (1, 2, 4, 8, 15)
K_RULE_WORKERS = (4, 8, 15)
#: The adversary study: 7 workers, 0..3 of them corrupting (3 is just under M/2).  One lr per
#: method, the one chosen on validation by the clean 8-worker runs (votes-workers-m8 for
#: Signum-MV and fp32, votes-k-rule-m8 for S3GD-MV 1%): an attack does not retune the lr.
ADVERSARY_WORKERS = 7
ADVERSARY_COUNTS = (1, 2, 3)
ADVERSARY_LR = {"signum": 0.001, "s3gd": 0.01, "fp32": 0.03}


def at_lr(method: Method, lr: float) -> Method:
    """``method`` at one learning rate, chosen on validation in another group."""
    return Method(method.key, method.label, method.settings, (lr,))


def attacked(method: Method, count: int, attack: str) -> Method:
    """``method`` at its ``ADVERSARY_LR`` with the last ``count`` workers sending ``attack``ed
    uplinks (``count`` 0: the clean run)."""
    lrs = (ADVERSARY_LR[method.key],)
    if not count:
        return at_lr(method, lrs[0])
    return Method(f"{method.key}-a{count}-{attack}", f"{method.label}, {count} {attack}",
                  {**method.settings, "adversaries": count, "attack": attack}, lrs)


GROUPS += [
    *(Group(f"votes-workers-m{m}",
            f"error against the number of workers: signSGD-MV, Signum-MV and fp32 SGD at M = "
            f"{m}, embedded task, IID, batch 32 per worker", {"validation_fraction": 0.1},
            [FP32_EMB, SIGNSGD, SIGNUM, *([SIGNSGD_TIE0] if m % 2 == 0 else [])],
            iterations=200, ranks=m + 1)
      for m in VOTE_WORKERS),
    *(Group(f"votes-k-rule-m{m}",
            f"S3GD-MV's K = d/M rule against a fixed 1% at M = {m}, embedded task, IID",
            {"validation_fraction": 0.1}, [S3GD, S3GD_AUTO], iterations=200, ranks=m + 1)
      for m in K_RULE_WORKERS),
    Group("votes-adversaries",
          f"Signum-MV and S3GD-MV with 0..3 of {ADVERSARY_WORKERS} workers inverting or sending "
          "random signs (fp32 SGD: inverting), embedded task, IID", {"validation_fraction": 0.1},
          [attacked(m, n, a) for m, attacks in ((SIGNUM, ("invert", "random")),
                                                (S3GD, ("invert", "random")),
                                                (FP32_EMB, ("invert",)))
           for n in (0, *ADVERSARY_COUNTS) for a in (attacks if n else ("",))],
          iterations=200, ranks=ADVERSARY_WORKERS + 1),
    Group("votes-digits-m15",
          "the vote methods on real handwritten digits with 15 workers (the S3GD-MV paper's "
          "count), mlp 128",
          {"dataset": "digits", "validation_fraction": 0.2}, [
              Method("fp32", "fp32 SGD (fp32-ps)", {"algorithm": "fp32-ps"}, (0.1, 0.03)),
              SIGNSGD, SIGNUM, S3GD, S3GD_OFF,
          ], iterations=200, ranks=16),
]
GROUPS += [
    Group("s3gd-dirichlet",
          "S3GD-MV with and without its residual against signSGD-MV on Dirichlet(0.3) label "
          "skew, embedded task, 4 workers (issue 10's third partition, there with one seed)",
          {"validation_fraction": 0.1}, [SIGNSGD, S3GD, S3GD_OFF], iterations=300,
          partitions=("dirichlet:0.3",)),
]
BY_GROUP = {g.name: g for g in GROUPS}


def runs_of(group: Group, seeds) -> list:
    """(name, settings) of every run of ``group``."""
    out = []
    for partition in group.partitions:
        for method in group.methods:
            for lr in method.lrs:
                for seed in seeds:
                    name = f"{tag_of(partition)}{method.key}-lr{lr}-s{seed}"
                    settings = {**group.common, **method.settings, "lr": lr, "seed": seed,
                                "partition": partition, "iterations": group.iterations,
                                "eval_every": eval_every(group, group.iterations),
                                "quiet": True}
                    out.append((name, settings))
    return out


def eval_every(group: Group, iterations: int) -> int:
    return group.eval_every or max(iterations // 4, 1)


def log_of(group: Group, name: str, root: Path) -> Path:
    return root / group.name / f"{name}.h5"


def diverged_marker(log: Path) -> Path:
    """Beside a run's log: written by the rank whose training loss became NaN or infinite."""
    return log.with_suffix(".diverged")


def diverged(log: Path) -> bool:
    return diverged_marker(log).exists()


def done(log: Path) -> bool:
    """Nothing left to run: the log is complete, or the run diverged (rerunning it would
    diverge again: the runs are deterministic)."""
    return complete(log) or diverged(log)


def complete(path: Path) -> bool:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return bool(f["final_params_sha256"][()])
    except (OSError, KeyError):
        return False


# ---- running (every rank) -------------------------------------------------------------------


def run(args) -> int:
    from mpi4py import MPI

    from hpcgrad.errors import NonFiniteError
    from hpcgrad.training import runtime
    from hpcgrad.training.config import TrainConfig

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    root = Path(args.runs)
    for group in chosen_groups(args):
        if group.ranks != comm.Get_size():
            # A group's M is its world: without --group only the groups of this world size
            # run (one job per size); a group named at another size is refused, since its logs
            # would enter the group's tables as if they were its (--iterations: a quick try).
            if not args.group:
                continue
            if not args.iterations:
                if rank == 0:
                    print(f"ablations.py: error: group {group.name} needs {group.ranks} ranks "
                          f"(mpiexec -n {group.ranks}); this job has {comm.Get_size()}",
                          file=sys.stderr, flush=True)
                return 2
        started = time.perf_counter()
        todo = runs_of(group, args.seeds)
        ran = 0
        for i, (name, settings) in enumerate(todo):
            log = log_of(group, name, root)
            if args.only and not any(fnmatch.fnmatch(name, p) for p in args.only):
                continue
            if args.iterations:
                settings = {**settings, "iterations": args.iterations,
                            "eval_every": min(eval_every(group, args.iterations),
                                              args.iterations)}
            skip = comm.bcast(not args.force and done(log) if rank == 0 else None, root=0)
            if skip:
                continue
            if rank == 0:
                log.parent.mkdir(parents=True, exist_ok=True)
                diverged_marker(log).unlink(missing_ok=True)
            comm.Barrier()
            config = TrainConfig(**settings, log=str(log), overwrite=True).resolved()
            try:
                summary = runtime.train(config, comm)
            except NonFiniteError as exc:
                # Only the rank that saw the NaN knows; it aborts the job (python -m mpi4py),
                # and the marker lets the next job of this group (regenerate.py starts one)
                # skip this run and go on with the rest.
                diverged_marker(log).write_text(f"{exc}\n")
                raise
            ran += 1
            if rank == 0:
                print(f"[{group.name} {i + 1}/{len(todo)}] {name}: test "
                      f"{summary.final_accuracy:.2%}, validation "
                      f"{summary.final_validation_accuracy:.2%}, {summary.seconds:.1f} s",
                      flush=True)
        if rank == 0:
            print(f"group {group.name}: ran {ran} of its {len(todo)} runs in "
                  f"{time.perf_counter() - started:.0f} s (wall, this job)", flush=True)
    return 0


def group_named(name: str) -> Group:
    """A group by name, or by its index in GROUPS (what a Slurm array task has)."""
    if name.isdigit() and int(name) < len(GROUPS):
        return GROUPS[int(name)]
    if name in BY_GROUP:
        return BY_GROUP[name]
    raise LookupError(f"no group {name!r}: the groups are 0-{len(GROUPS) - 1} or "
                      f"{', '.join(BY_GROUP)}")


def chosen_groups(args) -> list:
    if not args.group:
        return GROUPS
    return [group_named(g) for g in args.group]


# ---- tables (one process) -------------------------------------------------------------------


def read(path: Path) -> dict | None:
    """The figures a table row needs from one complete log, or None.  ``wall`` is the run's
    training time: from its ``created_unix`` (just before the file was created) to the file's
    last modification (its close)."""
    import h5py
    import numpy as np

    if not complete(path):
        return None
    with h5py.File(path, "r") as f:
        workers = int(f.attrs["num_workers"])
        out = {"test": float(f["eval"]["accuracy"][-1]),
               "validation": float(f["validation"]["accuracy"][-1]),
               "mb_up": float(f["steps"]["bytes_up"][...].sum()) / workers / 1e6,
               "wall": max(path.stat().st_mtime - float(f.attrs["created_unix"]), 0.0)}
        if "bits" in f["steps"]:
            out["bits"] = float(np.mean(f["steps"]["bits"][...]))
    return out


def tag_of(partition: str) -> str:
    return "" if partition == "iid" else partition.replace(":", "") + "-"


def chosen(group: Group, method: Method, partition: str, seeds, root: Path):
    """``(lr, logs, rows)`` of ``method``'s learning rate with the highest final validation
    accuracy averaged over the seeds whose logs are complete; None if none is."""
    best = None
    for lr in method.lrs:
        logs = [log_of(group, f"{tag_of(partition)}{method.key}-lr{lr}-s{s}", root)
                for s in seeds]
        if any(map(diverged, logs)):
            continue   # an lr that diverged on some seed is not a candidate
        pairs = [(log, row) for log in logs if (row := read(log)) is not None]
        if not pairs:
            continue
        val = sum(row["validation"] for _, row in pairs) / len(pairs)
        if best is None or val > best[0]:
            best = (val, lr, [log for log, _ in pairs], [row for _, row in pairs])
    return None if best is None else best[1:]


def diverged_lrs(group: Group, method: Method, partition: str, seeds, root: Path) -> list:
    """``LR (seeds S...)`` for each lr of ``method`` that diverged on some seed."""
    out = []
    for lr in method.lrs:
        bad = [str(s) for s in seeds if diverged(
            log_of(group, f"{tag_of(partition)}{method.key}-lr{lr}-s{s}", root))]
        if bad:
            out.append(f"{lr} (seed{'s' if len(bad) > 1 else ''} {' '.join(bad)})")
    return out


def wall_seconds(group: Group, seeds, root: Path) -> tuple[int, float]:
    """(complete runs, the sum of their training wall times in seconds)."""
    rows = [read(log_of(group, name, root)) for name, _ in runs_of(group, seeds)]
    rows = [r for r in rows if r is not None]
    return len(rows), sum(r["wall"] for r in rows)


def group_table(group: Group, seeds, root: Path) -> str:
    """The group's Markdown table: lr chosen on validation, test accuracy mean ± std."""
    done, wall = wall_seconds(group, seeds, root)
    total = len(runs_of(group, seeds))
    failed = sum(diverged(log_of(group, name, root)) for name, _ in runs_of(group, seeds))
    failed = f", {failed} diverged" if failed else ""
    lines = [textwrap.fill(
                f"{len(seeds)} seeds ({', '.join(map(str, seeds))}), {group.ranks - 1} workers, "
                f"{group.iterations} iterations; lr chosen on the mean final validation "
                f"accuracy; test accuracy at that lr. {done} of {total} runs complete{failed}, "
                f"**{wall:.0f} s** of training (wall, the runs' logs summed).", 100), "",
             "| method | partition | lr (chosen of) | validation acc % | test acc % "
             "(mean ± std) | MB up / worker | mean bits |",
             "|---|---|---|---|---|---|---|"]
    for partition in group.partitions:
        for method in group.methods:
            best = chosen(group, method, partition, seeds, root)
            failed = diverged_lrs(group, method, partition, seeds, root)
            note = f"; diverged at {', '.join(failed)}" if failed else ""
            if best is None:
                cell = f"diverged at {', '.join(failed)}" if failed else "not run"
                lines.append(f"| {method.label} | {partition} | {cell} | | | | |")
                continue
            lr, _, rows = best
            bits = (f"{sum(r['bits'] for r in rows) / len(rows):.2f}"
                    if "bits" in rows[0] else "")
            lrs = ", ".join(map(str, method.lrs))
            missing = "" if len(rows) == len(seeds) else f" ({len(rows)} seeds)"
            lines.append(f"| {method.label} | {partition} | {lr} ({lrs}{note}) | "
                         f"{mean_std([r['validation'] for r in rows])} | "
                         f"{mean_std([r['test'] for r in rows])}{missing} | "
                         f"{sum(r['mb_up'] for r in rows) / len(rows):.3f} | {bits} |")
    return "\n".join(lines)


def table(args) -> int:
    root = Path(args.runs)
    for group in chosen_groups(args):
        print(f"\n#### {group.name}: {group.what}\n")
        print(group_table(group, args.seeds, root))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", choices=("run", "table"), default="table")
    parser.add_argument("--group", nargs="*", help="group names (or indices); default all")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--iterations", type=int,
                        help="override (a quick try: then any world size is accepted)")
    parser.add_argument("--runs", default=str(RUNS_DIR), help="where the logs go")
    parser.add_argument("--force", action="store_true", help="rerun complete runs too")
    parser.add_argument("--only", nargs="*", metavar="GLOB",
                        help="run only the runs whose name matches (e.g. 'fp32-*-s0')")
    parser.add_argument("--list", action="store_true", help="print the groups and runs")
    parser.add_argument("--ranks-of", metavar="GROUP",
                        help="print the MPI ranks GROUP (a name or index) runs on, and exit")
    args = parser.parse_args(argv)
    if args.ranks_of is not None:
        try:
            print(group_named(args.ranks_of).ranks)
        except LookupError as exc:
            print(f"ablations.py: error: {exc.args[0]}", file=sys.stderr)
            return 2
        return 0
    if args.list:
        for i, group in enumerate(GROUPS):
            todo = runs_of(group, args.seeds)
            print(f"{i} {group.name}: {group.what} ({len(todo)} runs)")
            for name, settings in todo:
                print(f"    {name}: {json.dumps(settings)}")
        return 0
    return run(args) if args.command == "run" else table(args)


if __name__ == "__main__":
    sys.exit(main())
