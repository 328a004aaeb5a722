"""``DistributedOptimizer``: a torch optimizer whose ``step()`` runs hpcgrad's exchange.

Horovod's ``hvd.DistributedOptimizer(opt)`` averages gradients in ``step()``; this one, on
every worker, takes the gradients autograd left in ``.grad``, compresses them with the chosen
algorithm and exchanges them with the parameter server (rank 0), then updates the model as
the algorithm defines (``session.py``: ``update="algorithm"`` or ``"optimizer"``).  Call it
exactly where the torch optimizer was called: after ``backward()`` (and after gradient
clipping, and after the last micro-batch of a gradient accumulation), once per optimizer step.

On rank 0 the constructor does not return: it runs the server's loop (:func:`serve`) until
the workers finish, then exits the process with status 0 -- the same script runs on every
rank.  Use :func:`serve` instead for a rank 0 that has more to do afterwards.

A worker ends its part with :meth:`DistributedOptimizer.finish` (also run when the
interpreter exits): the server stops once every worker has finished, and it is an error,
raised on every rank, if some workers finish while others still call ``step()``.
"""

from __future__ import annotations

import atexit
import sys
import weakref

import torch

from ..comm.agreement import abort_job
from ..errors import ConfigError, HpcgradError
from .context import Context, init
from .control import DONE, STEP, Report
from .server import serve
from .session import Session

NONFINITE = ("error", "skip")
SYNC = ("check", "broadcast")
#: model -> the DistributedOptimizer wrapping it on this rank (not an attribute of the model:
#: torch.save(model) would then try to pickle the optimizer and its communicator).
_WRAPPED = weakref.WeakKeyDictionary()


class DistributedOptimizer:
    """Wrap ``optimizer`` (a ``torch.optim`` optimizer over ``model``'s parameters).

    ``context``: from :func:`hpcgrad.torch.init`; or pass the settings here as keywords
    (``algorithm="s3gd-mv", sparsity=0.01, lr=0.003, log="runs/x.h5"``, and ``config=`` a TOML
    file), which calls ``init`` for you.

    ``update``: ``"auto"`` (default: ``"optimizer"`` for the mean methods, ``"algorithm"`` for
    the others), ``"algorithm"`` (the algorithm's own rule with the settings' ``lr``,
    ``momentum``, ``weight_decay``: bit-identical to ``hpcgrad train``) or ``"optimizer"``
    (the averaged gradient goes to ``optimizer``).  ``sync``: ``"check"`` (default: every
    rank must start from the same parameters; a digest per parameter is compared) or
    ``"broadcast"`` (every rank takes rank 0's).  ``nonfinite``: ``"error"`` (default: a NaN
    or Inf gradient ends the job naming the rank and the parameter) or ``"skip"`` (the step
    is skipped on every rank: mixed precision with a loss scaler; ``GradScaler.step(opt)``
    always skips so).  ``buffers_every``: every
    this many steps, worker 1's buffers (BatchNorm statistics) are broadcast to every rank;
    0 (default) keeps buffers local to each rank.  ``evaluate(model) -> (loss, accuracy)``:
    run by the server on its replica every ``eval_every`` steps and at the end, logged.
    """

    def __init__(self, optimizer, model: torch.nn.Module, context: Context | None = None, *,
                 update: str = "auto", sync: str = "check", nonfinite: str = "error",
                 buffers_every: int = 0, evaluate=None, comm=None, config: str | None = None,
                 **settings):
        wrapped = _WRAPPED.get(model)
        if wrapped is not None and not wrapped.session.finished:
            # Checked before any collective: the server is in this wrap's step protocol and
            # would take a second wrap's setup messages for a step report.
            raise ConfigError("this model is already wrapped by a DistributedOptimizer that "
                              "has not finished: wrap it once, before the training loop (or "
                              "call finish() on the first one before wrapping it again)")
        if context is None:
            context = init(comm, config=config, **settings)
        elif settings or config:
            raise TypeError("give the settings either to init() or here, not both")
        self.context, self.optimizer, self.model = context, optimizer, model
        if context.is_server:
            serve(model, optimizer, context, evaluate=evaluate)
            sys.exit(0)

        def check():
            if nonfinite not in NONFINITE:
                raise ConfigError(f"nonfinite={nonfinite!r}: choose one of "
                                  + ", ".join(NONFINITE))
            if sync not in SYNC:
                raise ConfigError(f"sync={sync!r}: choose one of " + ", ".join(SYNC))
            if not isinstance(buffers_every, int) or buffers_every < 0:
                raise ConfigError(f"buffers_every={buffers_every!r}: must be an int >= 0")
        self.nonfinite, self.buffers_every = nonfinite, buffers_every
        self._failed = False
        self.session = Session(context, model, optimizer, update=update, sync=sync, check=check)
        _WRAPPED[model] = self
        atexit.register(self._at_exit)

    #: ``torch.amp.GradScaler.step(optimizer)`` then always calls :meth:`step` (with
    #: ``grad_scale`` and ``found_inf`` set) instead of skipping it where this worker's
    #: gradient overflowed: a skip on one worker only would pair its next step with the
    #: others' current one.  :meth:`step` unscales, and the skip is agreed by every rank.
    _step_supports_amp_scaling = True

    # What LR schedulers, GradScaler.unscale_ and checkpoints read.
    @property
    def param_groups(self):
        return self.optimizer.param_groups

    @property
    def state(self):
        return self.optimizer.state

    def state_dict(self):
        return self.optimizer.state_dict()

    def load_state_dict(self, state):
        self.optimizer.load_state_dict(state)

    @property
    def steps(self) -> int:
        """Optimizer steps exchanged so far (a resumed run starts at the checkpoint's)."""
        return self.session.steps

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the gradients; float32 parameters' ``.grad`` point into the flat gradient, so
        that backward accumulates where the exchange reads (``set_to_none`` is ignored)."""
        self.session.flat.bind_grads()

    def step(self, closure=None, *, loss=None):
        """Collective with the server and every worker: exchange this step's gradients and
        update the model.  ``loss`` (a number or a 0-d tensor), if given, is logged as this
        worker's loss.  Returns ``loss`` (or ``closure()``'s)."""
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        session = self.session
        if session.finished:
            raise HpcgradError(f"rank {self.context.rank}: step() after finish()")
        flat = session.flat
        missing = flat.collect_grads()
        # Called by GradScaler.step: gradients still scaled unless unscale_ ran (grad_scale
        # None), unscaled as unscale_ does; an overflow is the scaler's to skip, on every rank.
        by_scaler = hasattr(self, "found_inf")
        scale = getattr(self, "grad_scale", None) if by_scaler else None
        if scale is not None:
            flat.grads.mul_(scale.double().reciprocal().float().to(flat.grads.device))
        every = self.buffers_every
        report = Report(STEP, session.steps, missing, flat.first_nonfinite(),
                        "skip" if by_scaler else self.nonfinite,
                        tuple(float(g["lr"]) for g in self.optimizer.param_groups),
                        bool(every and (session.steps + 1) % every == 0))
        value = float("nan") if loss is None else float(
            loss.detach() if isinstance(loss, torch.Tensor) else loss)
        self._run(report, value)
        return loss

    def _run(self, report, loss=float("nan")) -> str:
        try:
            return self.session.run_step(report, loss)
        except BaseException:
            self._failed = True
            raise

    def finish(self) -> None:
        """Collective: this worker is done.  Returns once every worker has finished (the
        log is then complete and the replicas were checked bit-identical)."""
        if self.session.finished or self._failed:
            return
        self._run(Report(DONE, self.session.steps))
        self.session.close()
        atexit.unregister(self._at_exit)

    def _at_exit(self) -> None:
        """A worker's script ended without finish(): finish now, so that the server is not
        left waiting; if the others are still stepping, that is the error that ends the job."""
        if self.session.finished or self._failed:
            return
        try:
            self.finish()
        except BaseException as exc:  # noqa: BLE001 -- the job must end, here too
            abort_job(self.context.comm, self.context.rank, exc)
