"""Reports on the groups of experiments/ablations.py beyond their accuracy tables: DQ-SGD's
bits-to-accuracy curves, time per iteration and time to accuracy (measured here and projected to
a 10 Gb/s cluster), and top-K's union sizes.  Every report reads the logs of the learning rate
that ``ablations.chosen`` picks on the validation split, so it shows the runs the accuracy
table reports.  ``experiments/regenerate.py`` calls them; each returns Markdown.

Timing, per run, over the steps after the first ``SKIP`` (start-up):

* **measured ms / step**: the median over steps of the server's time in all phases of the step
  (it takes part in every collective, so its step is the job's step);
* **compute ms / step**: the median over steps of the workers' mean ``compute + encode + decode
  + update`` plus the server's ``aggregate``: the work that does not depend on the network;
* **projected ms / step**: compute plus the alpha-beta model's parameter-server exchange
  (``hpcgrad.analysis.projection.step_time``, the model of ``hpcgrad analyze project``) for the
  run's mean logged message sizes, plus, with ``--error-averaging P``, one Allreduce of ``4d``
  bytes among the workers every ``P`` steps;
* **time to X %**: the first evaluation step at which the run's test accuracy reaches ``X``,
  times its ms / step (measured, or projected).
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from ablations import BY_GROUP, chosen
from common import mean_std

SKIP = 5
BANDWIDTH = "10Gb/s"
LATENCY = "10us"


# ---- one log ---------------------------------------------------------------------------------


def series(path: Path) -> dict:
    """What the reports need from one complete log."""
    import h5py
    import numpy as np

    with h5py.File(path, "r") as f:
        steps = f["steps"]
        phases = json.loads(f.attrs["phases"])
        t = {p: steps[f"time_{p}"][...] for p in phases}
        up = steps["bytes_up"][...].astype(float)
        down = steps["bytes_down"][...].astype(float)
        out = {
            "eval_steps": f["eval"]["iteration"][...],  # steps done
            "eval_accuracy": f["eval"]["accuracy"][...],
            "test_loss": float(f["eval"]["loss"][-1]),
            "validation_loss": float(f["validation"]["loss"][-1]),
            "mb_average": (float(steps["bytes_average"][...].sum(axis=0).mean()) / 1e6
                           if "bytes_average" in steps else 0.0),
            "cum_mb_up": np.cumsum(up.mean(axis=1)) / 1e6,
            "up": float(up.mean()), "down": float(down.mean()),
            "mb_down": float(down.sum()) / 1e6,
            "workers": int(f.attrs["num_workers"]), "d": int(f.attrs["num_params"]),
            "averaging": int(f.attrs.get("error_averaging", 0) or 0),
            "union_over_k": (steps["union_size"][...] / float(f.attrs["k"])
                             if "union_size" in steps and "k" in f.attrs else None),
        }
    local = sum(t[p][:, 1:] for p in ("compute", "encode", "decode", "update") if p in t)
    server = sum(t[p][:, 0] for p in phases)
    aggregate = t["aggregate"][:, 0] if "aggregate" in t else 0.0
    out["step_s"] = float(np.median(server[SKIP:]))
    out["compute_s"] = float(np.median((local.mean(axis=1) + aggregate)[SKIP:]))
    return out


def projected_step_s(run: dict, compute_s: float | None = None) -> float:
    """Compute (the run's own, or ``compute_s``) plus the modelled exchange on a ``BANDWIDTH``
    network (see the docstring)."""
    from hpcgrad.analysis import projection

    model = projection.CostModel(alpha=projection.parse_latency(LATENCY),
                                 beta=1.0 / projection.parse_bandwidth(BANDWIDTH))
    ranks = run["workers"] + 1
    comm = projection.step_time("ps", ranks, run["up"], run["down"], model)["total"]
    if run["averaging"]:
        comm += projection.allreduce_time(run["workers"], 4.0 * run["d"], model) \
            / run["averaging"]
    return (run["compute_s"] if compute_s is None else compute_s) + comm


def steps_to(run: dict, accuracy: float) -> int | None:
    """The first evaluated step count at which the test accuracy reached ``accuracy``."""
    for step, acc in zip(run["eval_steps"], run["eval_accuracy"]):
        if acc >= accuracy:
            return int(step)
    return None


# ---- the methods of a group at their chosen learning rate -----------------------------------


def chosen_series(group_name: str, seeds, root: Path) -> list:
    """``(method, lr, [series of each seed])`` for every method of the group that has logs."""
    group = BY_GROUP[group_name]
    out = []
    for method in group.methods:
        best = chosen(group, method, group.partitions[0], seeds, root)
        if best is not None:
            lr, logs, _ = best
            out.append((method, lr, [series(log) for log in logs]))
    return out


def _ms(values) -> str:
    return mean_std(values, scale=1000.0, digits=1)


def _time_to(runs: list, accuracy: float, per_step: str, common: float = 0.0) -> str:
    """Seconds to ``accuracy``, mean ± std over the seeds that reached it; ``per_step``:
    ``measured``, ``projected`` or ``common`` (projected with ``common`` seconds of compute)."""
    times = []
    for run in runs:
        n = steps_to(run, accuracy)
        if n is not None:
            times.append(n * (run["step_s"] if per_step == "measured" else projected_step_s(
                run, common if per_step == "common" else None)))
    if not times:
        return "not reached"
    missed = "" if len(times) == len(runs) else f" ({len(times)} of {len(runs)} seeds)"
    return mean_std(times, scale=1.0, digits=2 if per_step == "measured" else 3) + missed


def target_of(methods: list) -> float:
    """The accuracy the time-to-accuracy columns ask for: 95% of the final test accuracy of
    fp32 SGD (the method keyed ``fp32``) averaged over its seeds, rounded down to a point."""
    import math

    for method, _, runs in methods:
        if method.key == "fp32":
            final = sum(r["eval_accuracy"][-1] for r in runs) / len(runs)
            return math.floor(95.0 * final) / 100.0
    raise LookupError("no fp32 SGD runs (method fp32) for this group: no accuracy target")


def timing(group_name: str, seeds, root: Path) -> str:
    """Time per iteration and time to accuracy, measured here and projected."""
    methods = chosen_series(group_name, seeds, root)
    if not methods:
        return f"(no complete runs of group {group_name})"
    reference = BY_GROUP[group_name].extra.get("fp32_from")
    if reference:   # fp32 SGD at the same settings, run in another group
        methods = [m for m in chosen_series(reference, seeds, root) if m[0].key == "fp32"] \
            + methods
    try:
        target = target_of(methods)
    except LookupError as exc:
        return f"({exc.args[0]})"
    import numpy as np

    common = float(np.median([r["compute_s"] for _, _, runs in methods for r in runs]))
    t = f"{100 * target:.0f}%"
    lines = [textwrap.fill(
                f"Medians over steps {SKIP}-end, mean ± std over the seeds at the chosen lr; "
                f"target {t} test accuracy (95% of fp32 SGD's final); projection: {BANDWIDTH}, "
                f"latency {LATENCY}, parameter server; common compute {1000 * common:.2f} ms / "
                "step (the median of every run's).", 100), "",
             "| method | lr | measured ms / step | compute ms / step | projected comm ms / step "
             f"| projected ms / step | steps to {t} | s to {t}, measured | s to {t}, projected "
             f"| s to {t}, projected, common compute |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for method, lr, runs in methods:
        steps = [n for r in runs if (n := steps_to(r, target)) is not None]
        steps_text = (mean_std(steps, scale=1.0, digits=0) if steps else "not reached")
        if steps and len(steps) < len(runs):
            steps_text += f" ({len(steps)} of {len(runs)})"
        lines.append(
            f"| {method.label} | {lr} | {_ms([r['step_s'] for r in runs])} | "
            f"{_ms([r['compute_s'] for r in runs])} | "
            f"{mean_std([projected_step_s(r) - r['compute_s'] for r in runs], 1000.0, 3)} | "
            f"{_ms([projected_step_s(r) for r in runs])} | {steps_text} | "
            f"{_time_to(runs, target, 'measured')} | {_time_to(runs, target, 'projected')} | "
            f"{_time_to(runs, target, 'common', common)} |")
    return "\n".join(lines)


def losses(group_name: str, seeds, root: Path) -> str:
    """Final test and validation loss, and the error-averaging traffic, at the chosen lr."""
    lines = ["| method | lr | test loss (mean ± std) | validation loss | MB averaging / worker |",
             "|---|---|---:|---:|---:|"]
    for method, lr, runs in chosen_series(group_name, seeds, root):
        lines.append(f"| {method.label} | {lr} | "
                     f"{mean_std([r['test_loss'] for r in runs], 1.0, 4)} | "
                     f"{mean_std([r['validation_loss'] for r in runs], 1.0, 4)} | "
                     f"{sum(r['mb_average'] for r in runs) / len(runs):.3f} |")
    return "\n".join(lines)


def selection(group_name: str, seeds, root: Path) -> str:
    """Top-K's union: |U|/K, the downlink, the uplink, per selection rule."""
    lines = ["Mean over steps and seeds at the chosen lr (± std over the seeds); MB per run.", "",
             "| method | lr | mean \\|U\\|/K | MB up / worker | MB down | down / up |",
             "|---|---|---:|---:|---:|---:|"]
    for method, lr, runs in chosen_series(group_name, seeds, root):
        mb_up = sum(r["cum_mb_up"][-1] for r in runs) / len(runs)
        mb_down = sum(r["mb_down"] for r in runs) / len(runs)
        union = ("" if runs[0]["union_over_k"] is None else
                 mean_std([float(r["union_over_k"].mean()) for r in runs], 1.0, 3))
        lines.append(f"| {method.label} | {lr} | {union} | {mb_up:.3f} | {mb_down:.3f} | "
                     f"{mb_down / mb_up:.2f} |")
    return "\n".join(lines)


# ---- DQ-SGD: accuracy against cumulative uplink bytes ----------------------------------------


def bits_curve(group_names: list, seeds, root: Path, png: Path) -> str:
    """Test accuracy (mean over seeds, band: ± std) against cumulative uplink MB per worker at
    each evaluation, every method of the groups at its chosen lr; writes ``png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(10, 4.5))
    rows = []
    for name in group_names:
        for method, lr, runs in chosen_series(name, seeds, root):
            steps = runs[0]["eval_steps"]
            acc = 100 * np.array([r["eval_accuracy"] for r in runs])
            mb = np.mean([r["cum_mb_up"][steps - 1] for r in runs], axis=0)
            style = "-" if method.settings["algorithm"] == "dq-sgd" else "--"
            line, = ax.plot(mb, acc.mean(axis=0), style, marker=".",
                            label=f"{method.label}, lr {lr}")
            if len(runs) > 1:
                std = acc.std(axis=0, ddof=1)
                ax.fill_between(mb, acc.mean(axis=0) - std, acc.mean(axis=0) + std,
                                alpha=0.15, color=line.get_color())
            rows.append((method.label, lr, mb, acc.mean(axis=0)))
    ax.set_xlabel("cumulative uplink MB per worker")
    ax.set_ylabel("test accuracy % (mean of seeds, band ± std)")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=50)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    # the same curves as a table: MB needed to first reach each accuracy level (mean curve)
    levels = (70, 72, 74)
    lines = ["| method | lr | " + " | ".join(f"MB up to {v}%" for v in levels) + " |",
             "|---|---|" + "---:|" * len(levels)]
    for label, lr, mb, acc in rows:
        cells = []
        for v in levels:
            hit = np.nonzero(acc >= v)[0]
            cells.append(f"{mb[hit[0]]:.3f}" if len(hit) else "not reached")
        lines.append(f"| {label} | {lr} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
