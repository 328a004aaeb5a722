"""Per-run figures (``hpcgrad analyze summary``) and ratios between runs (``compare``).

Every figure comes from the per-step datasets (message sizes may vary step to step):

* ``MB up/worker``   sum over steps of ``bytes_up``, mean over workers, / 1e6;
* ``MB down/worker`` sum over steps of ``bytes_down`` (every worker receives the downlink);
* ``bits/param up``  8 * mean bytes one worker sends per step / d (``down`` likewise);
* ``x vs fp32 up``   4 d * steps / bytes one worker sent (``down`` likewise);
* ``servers``        S of ``--servers S`` (1 for one server and older logs);
* ``MB to rank 0``   what rank 0 received over the run (its incast): every uplink with one
  server, its shard's uplinks with S > 1, / 1e6;
* ``<phase> ms``     mean over steps and over the ranks that run the phase (ranks whose time in
  it is not all zero), milliseconds;
* ``comm ms``        measured communication per step as ``projection.comm_times`` reads it;
* final loss / accuracy: the last ``/eval`` row.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from . import projection
from .reader import RunLog

NA = "n/a"


def _phase_ms(log: RunLog, phase: str) -> float:
    t = log.phase_array(phase)
    active = np.any(t != 0.0, axis=0)
    if phase == "encode" and log.algorithm == "allreduce":
        active[0] = False  # rank 0's encode is timer overhead only (docs/log-format.md)
    if not active.any():
        return math.nan
    return float(t[:, active].mean() * 1e3)


def summarize(log: RunLog, timing: str = projection.DEFAULT_TIMING) -> dict:
    """One run's figures as an ordered dict (keys are the table's columns)."""
    log.require_steps()
    n, d, m = log.n, log.num_params, log.num_workers
    up = log.array("bytes_up").astype(np.float64)       # (n, M)
    down = log.array("bytes_down").astype(np.float64)   # (n,)
    up_per_worker = up.sum(axis=0).mean() if m else math.nan   # bytes over the run
    down_total = down.sum()
    ev = log.evals()
    row = {
        "run": log.name,
        "algorithm": log.algorithm,
        "topology": log.topology,
        "workers": m,
        "servers": log.servers,
        "params": d,
        "steps": n,
        "requested": log.iterations_requested,
        "MB up/worker": up_per_worker / 1e6,
        "MB down/worker": down_total / 1e6,
        "bits/param up": 8 * up_per_worker / n / d,
        "bits/param down": 8 * down_total / n / d,
        "x vs fp32 up": 4 * d * n / up_per_worker if up_per_worker else math.inf,
        "x vs fp32 down": 4 * d * n / down_total if down_total else math.inf,
        "MB to rank 0": float(log.rank0_received().astype(np.float64).sum()) / 1e6,
    }
    for phase in log.phases:
        row[f"{phase} ms"] = _phase_ms(log, phase)
    row["comm ms"] = projection.mean_comm_time(log, timing) * 1e3
    row["final loss"] = float(ev["loss"].iloc[-1]) if len(ev) else math.nan
    row["final accuracy"] = float(ev["accuracy"].iloc[-1]) if len(ev) else math.nan
    row["eval at"] = int(ev["iteration"].iloc[-1]) if len(ev) else math.nan
    for name in log.extra_step_datasets():
        values = log.array(name)
        if values.size and np.issubdtype(values.dtype, np.number):
            row[f"mean {name}"] = float(values.mean())
    return row


def summary_table(logs, timing: str = projection.DEFAULT_TIMING) -> pd.DataFrame:
    """One row per run."""
    return pd.DataFrame([summarize(log, timing) for log in logs])


#: Columns compared as ratios (the rest are labels shown as they are).
LABELS = ("run", "algorithm", "topology", "workers", "servers", "params", "steps", "requested",
          "eval at")


def compare_table(logs, timing: str = projection.DEFAULT_TIMING) -> tuple[pd.DataFrame, list]:
    """The summary's figures of every run divided by the first run's.

    Returns the table (one row per run, ratio columns as floats or the string ``"n/a"``) and
    notes explaining every ``n/a``: a phase one of the two runs does not have (e.g. ``bcast``
    of ``allreduce``), a dataset only one run logs, no evaluation, a zero in the first run.
    """
    table = summary_table(logs, timing)
    base = table.iloc[0]
    notes = []
    out = table[[c for c in LABELS if c in table.columns]].copy()
    def who(j):
        return f"{table.at[j, 'run']} ({table.at[j, 'algorithm']})"

    for col in table.columns:
        if col in LABELS or col == "topology":
            continue
        b = base.get(col)
        lacking = [j for j in range(len(table)) if _missing(table.at[j, col])]
        if _missing(b):
            out[col] = NA
            notes.append(f"{col}: the reference run {who(0)} has none (not applicable or not "
                         "logged): no ratios")
            continue
        if lacking:
            notes.append(f"{col}: not applicable to {', '.join(who(j) for j in lacking)}")
        if b == 0:
            out[col] = NA
            notes.append(f"{col}: zero in the reference run: no ratios")
            continue
        out[col] = [NA if j in lacking else float(table.at[j, col]) / float(b)
                    for j in range(len(table))]
    if table["algorithm"].nunique() > 1:
        notes.insert(0, "runs of different algorithms: ratios of phases and message sizes "
                        "compare different protocols (allreduce logs its Allreduce as gather)")
    return out, notes


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


# ---------------------------------------------------------------------- text output


def _fmt(value) -> str:
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NA
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    v = float(value)
    if math.isinf(v):
        return "inf"
    if v != 0 and (abs(v) >= 1e6 or abs(v) < 1e-3):
        return f"{v:.3e}"
    if abs(v) >= 100:
        return f"{v:,.1f}"
    return f"{v:.4g}"


def format_table(table: pd.DataFrame, transpose: bool = True) -> str:
    """Text for a terminal: one column per run (``transpose``) or one row per run."""
    text = table.copy().astype(object)
    for col in text.columns:
        text[col] = [_fmt(v) for v in table[col]]
    if transpose:
        text = text.set_index("run").T
        text.index.name = None
        text.columns.name = None
        return text.to_string()
    return text.to_string(index=False)
