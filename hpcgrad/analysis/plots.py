"""PNG figures of one or several runs (matplotlib, Agg backend; one figure per file).

``plot_all(logs, out_dir)`` writes

* ``bytes_per_step.png``          bytes one worker sends up, and the downlink, per step;
* ``cumulative_bytes_loss.png``   held-out loss against cumulative MB sent up per worker
  (the standard plot of compression papers), the training loss as a thin line;
* ``cumulative_bytes_accuracy.png`` held-out accuracy against cumulative MB up per worker;
* ``phase_times.png``             mean ms per step in each phase, stacked, for rank 0 and the
  mean worker of every run;
* ``step_sizes.png``              every extra per-step dataset (``K``, ``nnz_up``,
  ``union_size``, ``bits``, a scheduled ``lr``...) over the steps, one panel each; only
  when a log has some (a constant ``lr`` does not count).

and returns ``(written paths, notes)``; a note says what was skipped and why.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

os.environ.setdefault("MPLBACKEND", "Agg")
import matplotlib  # noqa: E402

matplotlib.use("Agg", force=True)
import matplotlib.pyplot as plt  # noqa: E402

from .reader import RunLog  # noqa: E402

PHASE_COLORS = {"compute": "#4C72B0", "encode": "#DD8452", "gather": "#C44E52",
                "aggregate": "#8172B3", "bcast": "#55A868", "decode": "#937860",
                "update": "#DA8BC3"}
DPI = 110


def _label(log: RunLog, logs) -> str:
    names = [lg.name for lg in logs]
    label = f"{log.algorithm}, {log.num_workers} workers"
    # Several runs of the same algorithm and size: add the file name to tell them apart.
    same = [lg for lg in logs
            if lg.algorithm == log.algorithm and lg.num_workers == log.num_workers]
    if len(same) > 1 or len(set(names)) < len(names):
        label += f" ({log.name})"
    return label


def _colors(n):
    cmap = plt.get_cmap("tab10")
    return [cmap(i % 10) for i in range(n)]


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, bbox_inches="tight")  # legends outside the axes included
    plt.close(fig)
    return path


def _bytes_axis(ax, values) -> None:
    values = np.asarray([v for v in values if v > 0])
    if values.size and values.max() / values.min() > 20:
        ax.set_yscale("log")


MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


def plot_bytes_per_step(logs, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(10, 4.8))
    seen = []
    for i, (log, color) in enumerate(zip(logs, _colors(len(logs)))):
        it = log.array("iteration")
        up = log.array("bytes_up").mean(axis=1)
        down = log.array("bytes_down")
        label = _label(log, logs)
        every = max(1, len(it) // 8)
        marker = MARKERS[i % len(MARKERS)]
        ax.plot(it, up / 1e3, color=color, lw=2, drawstyle="steps-mid", marker=marker,
                markevery=(i * every // max(1, len(logs)), every), ms=6,
                label=f"{label}: up, mean {up.mean() / 1e3:,.3g} kB")
        ax.plot(it, down / 1e3, color=color, lw=1.2, ls="--", drawstyle="steps-mid",
                marker=marker, mfc="none", markevery=(i * every // max(1, len(logs)), every),
                ms=6, label=f"{label}: down, mean {down.mean() / 1e3:,.3g} kB")
        seen += [up.mean(), down.mean()]
    _bytes_axis(ax, [v / 1e3 for v in seen])
    ax.set_xlabel("step")
    ax.set_ylabel("kB per message (1 kB = 1000 bytes)")
    ax.set_title("Bytes per step: uplink of one worker (solid), downlink (dashed)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _save(fig, path)


def _cumulative_mb_at_evals(log: RunLog) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative MB up per worker after each logged step, and at each evaluation.

    Evaluations are placed by step, not by row: an evaluation after ``done`` steps goes at the
    row whose iteration is ``done - 1``, so a resumed run's log (rows from its ``first_step``)
    and a stitched run are placed right; one with no such row (a live log's /eval running
    ahead of /steps, or the evaluation that ends an earlier part) is left out."""
    up = log.array("bytes_up").astype(np.float64).mean(axis=1)
    cum = np.cumsum(up) / 1e6                      # after row i
    iteration = log.array("iteration")
    done = log.evals()["iteration"].to_numpy()
    if not log.n:
        return cum, np.full(len(done), np.nan)
    row = np.clip(np.searchsorted(iteration, done - 1), 0, log.n - 1)
    return cum, np.where(iteration[row] == done - 1, cum[row], np.nan)


def plot_cumulative(logs, path: Path, metric: str) -> Path:
    fig, ax = plt.subplots(figsize=(10, 4.8))
    for i, (log, color) in enumerate(zip(logs, _colors(len(logs)))):
        cum, at_eval = _cumulative_mb_at_evals(log)
        label = _label(log, logs)
        ev = log.evals()
        if metric == "loss":
            train = log.array("loss").mean(axis=1)
            window = max(1, len(train) // 50)
            smooth = np.convolve(train, np.ones(window) / window, mode="valid")
            ax.plot(cum[window - 1:], smooth, color=color, lw=0.8, alpha=0.45)
        ok = ~np.isnan(at_eval)
        values = ev[metric].to_numpy()[ok]
        if not len(values):
            continue
        if metric == "accuracy":
            values = values * 100
        final = f"{values[-1]:.2f}%" if metric == "accuracy" else f"{values[-1]:.3f}"
        ax.plot(at_eval[ok], values, color=color, lw=2, marker=MARKERS[i % len(MARKERS)],
                ms=5, mfc="none" if i % 2 else color,
                label=f"{label} (final {final} at {cum[-1]:,.3g} MB)")
    ax.set_xscale("log")
    ax.set_xlabel("cumulative MB sent up per worker (log scale, 1 MB = 10^6 bytes)")
    if metric == "loss":
        ax.set_ylabel("cross-entropy loss")
        ax.set_title("Held-out loss (markers) against bytes sent; thin: training loss "
                     "(workers' mean)", fontsize=10)
    else:
        ax.set_ylabel("held-out accuracy (%)")
        ax.set_title("Held-out accuracy against bytes sent")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _save(fig, path)


def _mean_phase_ms(log: RunLog) -> tuple[dict, dict]:
    server, workers = {}, {}
    for phase in log.phases:
        t = log.phase_array(phase)
        server[phase] = float(t[:, 0].mean() * 1e3)
        workers[phase] = float(t[:, 1:].mean() * 1e3) if t.shape[1] > 1 else 0.0
    return server, workers


def plot_phase_times(logs, path: Path) -> Path:
    bars, labels = [], []
    for log in logs:
        server, workers = _mean_phase_ms(log)
        short = f"{log.algorithm}\n{log.num_workers} workers"
        if len({(lg.algorithm, lg.num_workers) for lg in logs}) < len(logs):
            short += f"\n{log.name}"
        bars += [server, workers]
        labels += [f"{short}\nrank 0", f"{short}\nworker mean"]
    phases = list(dict.fromkeys(p for log in logs for p in log.phases))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(bars) + 2), 5))
    x = np.arange(len(bars))
    bottom = np.zeros(len(bars))
    for phase in phases:
        heights = np.array([b.get(phase, 0.0) for b in bars])
        ax.bar(x, heights, 0.7, bottom=bottom, label=phase,
               color=PHASE_COLORS.get(phase), edgecolor="white", linewidth=0.5)
        bottom += heights
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("mean time per step (ms)")
    ax.set_title("Time per step by phase (rank 0 = server; allreduce logs its Allreduce as gather)",
                 fontsize=10)
    ax.legend(title="phase", fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


#: Panels of step_sizes.png: datasets whose names match go on one axes (same unit).
GROUPS = (("entries (coordinates)", ("k", "nnz", "union")),
          ("bits", ("bits",)),
          ("position coding", ("coding",)))
CODING_NAMES = {0: "0 raw", 1: "1 bitmap", 2: "2 Golomb-Rice", 3: "3 base3"}


def _panels(names):
    panels = {}
    for name in names:
        key = next((title for title, prefixes in GROUPS
                    if any(name.lower().startswith(p) or p in name.lower().split("_")
                           for p in prefixes)), name)
        panels.setdefault(key, []).append(name)
    order = [t for t, _ in GROUPS if t in panels] + [k for k in panels if k not in dict(GROUPS)]
    return [(title, panels[title]) for title in order]


def _informative(log, name) -> bool:
    """Every log has an ``lr`` column; a constant one is not worth a panel."""
    if name != "lr":
        return True
    values = log.array(name)
    return bool(values.size) and bool((values != values[0]).any())


def plot_step_sizes(logs, path: Path) -> Path | None:
    names = list(dict.fromkeys(n for log in logs for n in log.extra_step_datasets()
                               if _informative(log, n)))
    if not names:
        return None
    panels = _panels(names)
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 2.3 * len(panels) + 0.8), sharex=True,
                             squeeze=False)
    colors = _colors(len(logs))
    styles = ["-", "--", ":", "-."]
    for ax, (title, members) in zip(axes[:, 0], panels):
        for k, (log, color) in enumerate(zip(logs, colors)):
            it = log.array("iteration")
            for j, (name, ls) in enumerate(zip(members, styles * 4)):
                if name not in log.extra_step_datasets():
                    continue
                if len(logs) == 1:  # one run: a colour per dataset; several: per run
                    color = _colors(len(members))[j]
                values = log.array(name).astype(np.float64)
                label = f"{_label(log, logs)}: {name}"
                if values.ndim == 2 and values.shape[1] > 1:
                    ax.fill_between(it, values.min(axis=1), values.max(axis=1), color=color,
                                    alpha=0.2, step="mid")
                    values = values.mean(axis=1)
                    label += " (workers' mean, band min-max)"
                values = values.reshape(len(it), -1)[:, 0]
                ax.plot(it, values, color=color, lw=1.4, ls=ls, drawstyle="steps-mid",
                        label=label)
        ax.set_ylabel(title if len(members) > 1 or title != members[0] else members[0])
        if title == "position coding":
            ax.set_yticks(list(CODING_NAMES), list(CODING_NAMES.values()), fontsize=8)
            ax.set_ylim(-0.5, 3.5)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    axes[-1, 0].set_xlabel("step")
    fig.suptitle("Per-step message statistics over the run (K / nnz / union size / bit width)")
    return _save(fig, path)


def plot_all(logs, out_dir) -> tuple[list[Path], list[str]]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    notes = []
    usable = []
    for log in logs:
        if log.n == 0:
            notes.append(f"{log.path}: no steps logged; left out of every figure")
        else:
            usable.append(log)
    if not usable:
        return [], notes
    written = [plot_bytes_per_step(usable, out / "bytes_per_step.png")]
    with_evals = [log for log in usable if log.num_evals]
    if with_evals:
        written.append(plot_cumulative(with_evals, out / "cumulative_bytes_loss.png", "loss"))
        written.append(plot_cumulative(with_evals, out / "cumulative_bytes_accuracy.png",
                                       "accuracy"))
    else:
        notes.append("no run has an evaluation yet: cumulative_bytes_*.png skipped")
    for log in usable:
        if log not in with_evals:
            notes.append(f"{log.path}: no evaluation logged; not in cumulative_bytes_*.png")
    written.append(plot_phase_times(usable, out / "phase_times.png"))
    sizes = plot_step_sizes(usable, out / "step_sizes.png")
    if sizes is None:
        notes.append("step_sizes.png skipped: no log has per-step K / nnz / union size / bit "
                     "width datasets (format-version-1 algorithms send fixed-size messages)")
    else:
        written.append(sizes)
    return written, notes
