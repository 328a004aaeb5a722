"""``serve()``: rank 0's whole part in a wrapped run, in one call.

The server holds a replica of the model (same parameters, same update, so every replica
stays bit-identical, checked at the end), aggregates the workers' uplinks each step and
broadcasts the downlink, writes the HDF5 traffic log, and takes part in checkpoints.  It runs
until every worker has finished (``control.py``: the stop protocol).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from .context import Context, init
from .control import SERVER, Report
from .session import Session


@dataclass
class ServeSummary:
    steps: int
    workers: int
    log_path: str
    params_sha256: str
    bytes_up_per_worker: int
    bytes_down: int
    seconds: float

    def text(self) -> str:
        return (f"hpcgrad: {self.steps} steps, {self.workers} workers in {self.seconds:.1f} s; "
                f"sent per worker {self.bytes_up_per_worker / 1e6:.3f} MB up, "
                f"{self.bytes_down / 1e6:.3f} MB down; log: {self.log_path}")


def serve(model, optimizer=None, context: Context | None = None, *, evaluate=None, comm=None,
          config: str | None = None, **settings) -> ServeSummary:
    """Rank 0: run the server's loop until every worker has finished.

    ``model``: the same model the workers wrap (same parameters, in the same order;
    ``sync="check"`` compares them).  ``optimizer``: the same torch optimizer, needed with
    ``update="optimizer"`` (the server's replica takes the same step).  ``evaluate(model) ->
    (loss, accuracy)``, if given, runs every ``eval_every`` steps and at the end, logged in
    ``/eval``.  Settings as :func:`hpcgrad.torch.init` (or a ``context`` from it)."""
    if context is None:
        context = init(comm, config=config, **settings)
    if not context.is_server:
        raise RuntimeError(f"serve() runs on rank 0 only; rank {context.rank} is a worker")
    session = Session(context, model, optimizer, evaluate=evaluate)
    try:
        while session.run_step(Report(SERVER, session.steps)) != "stop":
            pass
    finally:
        session.close()
    rec, workers = session.records, context.num_workers
    summary = ServeSummary(session.steps, workers, str(session.log.path), session.digest,
                           round(rec.total_up / workers), rec.total_down, session.seconds)
    if not context.config.quiet:
        print(summary.text(), file=sys.stdout, flush=True)
    return summary
