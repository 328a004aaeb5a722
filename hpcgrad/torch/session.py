"""One rank's side of a wrapped run: the agreed setup, then one exchange per optimizer step.

Workers (:class:`~hpcgrad.torch.optimizer.DistributedOptimizer`) and the server
(:func:`~hpcgrad.torch.server.serve`) build a :class:`Session` with the same setup steps, each
agreed by all ranks (``comm.agreement.agree``) in ``hpcgrad train``'s order: the device, the
flat parameters, the check that every rank wraps the same model, the algorithm, a resumed
checkpoint, the exchange (:mod:`hpcgrad.training.exchange`: the very code ``hpcgrad train``
runs), the attack, the log.  Per optimizer step every rank then sends its report and takes
the verdict (``control.py``), and on ``go`` runs ``exchange.begin`` and ``exchange.step``:
worker_step -> Gatherv -> server_step -> Bcast -> decode -> apply, as in ``hpcgrad train``.
Losses and phase times are gathered to rank 0 for the HDF5 log every ``flush_every`` steps
(the same log, docs/log-format.md), checkpoints are written every ``checkpoint_every`` steps
(with each rank's torch optimizer state and buffers), and the stop verdict flushes the log,
checks that the replicas are bit-identical and writes the digest.

The update (``update=``):

* ``"algorithm"`` -- every rank applies the algorithm's own rule (``Algorithm.apply``) to the
  flat parameters, with the algorithm's learning rate, momentum and weight decay (the
  settings ``lr``, ``momentum``, ``weight_decay``): bit for bit what ``hpcgrad train`` does.
  The user's torch optimizer is not stepped; a change of its learning rate (an LR
  scheduler) scales the algorithm's: ``lr_t = lr * opt_lr_t / opt_lr_0``.
* ``"optimizer"`` -- for the algorithms whose downlink is the workers' mean gradient
  (:data:`MEAN_METHODS`): the decoded mean becomes every parameter's ``.grad`` and the
  user's torch optimizer steps with it, on every worker and on the server (``serve(model,
  optimizer)``), so any ``torch.optim`` optimizer and its state work as with DDP.
"""

from __future__ import annotations

import dataclasses
import io
import time
from pathlib import Path

import numpy as np
import torch
from mpi4py import MPI

from .. import algorithms, kernels
from ..comm import device
from ..comm.agreement import agree
from ..errors import ConfigError
from ..training import attacks, checkpoint, hierarchy
from ..training import schedule as lr_schedule
from ..training.exchange import COMPUTE, GATHER, PhaseClock
# Shared with hpcgrad train's loop rather than copied: the log's metadata and per-step
# columns, the replica check, the default log path and the resumed run's log rule.
from ..training.runtime import STEP_FIELDS, check_replicas, StepRecords, open_log
from ..training.tracelog import PHASES
from . import control
from .control import Report
from .params import FlatParameters

#: Algorithms whose decoded downlink is the mean (or aggregate) gradient that their own
#: update hands to momentum SGD: ``update="optimizer"`` may hand it to a torch optimizer.
MEAN_METHODS = ("fp32-ps", "fp16-ps", "qsgd", "dq-sgd", "terngrad", "topk")
#: Algorithms that apply a voted sign direction (or a compressed step) of their own:
#: always ``update="algorithm"``.
UPDATES = ("auto", "algorithm", "optimizer")


def resolve_update(update: str, algorithm: str) -> str:
    """``auto``: ``optimizer`` for the mean methods, ``algorithm`` for the others."""
    if update not in UPDATES:
        raise ConfigError(f"update={update!r}: choose one of " + ", ".join(UPDATES))
    if update == "auto":
        return "optimizer" if algorithm in MEAN_METHODS else "algorithm"
    if update == "optimizer" and algorithm not in MEAN_METHODS:
        raise ConfigError(f"update='optimizer': {algorithm} sends no mean gradient to hand to "
                          "a torch optimizer (it applies its own direction); use "
                          "update='algorithm', or one of: " + ", ".join(MEAN_METHODS))
    return update


def _check_groups(update: str, optimizer) -> str:
    """``update="algorithm"`` has one learning rate (the settings', scaled by the optimizer's
    first group): parameter groups with other learning rates would be silently ignored."""
    lrs = [float(g["lr"]) for g in optimizer.param_groups] if optimizer else []
    if update == "algorithm" and len(set(lrs)) > 1:
        raise ConfigError(f"update='algorithm' applies the algorithm's one learning rate to "
                          f"every parameter, but the optimizer's parameter groups have learning "
                          f"rates {lrs}: give every group the same lr (freeze a part with "
                          "requires_grad_(False)), or use a mean method with update='optimizer'")
    return update


@dataclasses.dataclass(frozen=True)
class _WrapInfo:
    """What each rank wraps, compared at wrap time."""
    names: tuple
    shapes: tuple
    digests: tuple
    update: str | None
    sync: str | None
    lrs: tuple
    groups: int | None


class _WrapMismatch(ConfigError):
    def __init__(self, rank: int, message: str):
        super().__init__(message)
        self.rank = rank


def _check_wrap(infos: list, me: int) -> None:
    """Every rank wraps the same parameters, with the same values (unless synchronised by
    broadcast) and the same wrapper options; the first rank that differs raises, naming itself
    and the first parameter that differs (the others pass: ``agree`` names that rank)."""
    try:
        _compare_wraps(infos)
    except _WrapMismatch as exc:
        if exc.rank == me:
            raise


def _compare_wraps(infos: list) -> None:
    ref = infos[1]
    for rank, info in enumerate(infos):
        if info.names != infos[0].names or info.shapes != infos[0].shapes:
            a = list(zip(infos[0].names, infos[0].shapes))
            b = list(zip(info.names, info.shapes))
            first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            raise _WrapMismatch(rank,
                f"rank {rank} wraps a different model from rank 0: {len(b)} parameters vs "
                f"{len(a)}" + (f"; first difference at {a[first][0] if first < len(a) else '-'}"
                               f" {list(a[first][1]) if first < len(a) else ''} vs "
                               f"{b[first][0] if first < len(b) else '-'}"
                               f" {list(b[first][1]) if first < len(b) else ''}"))
        if rank and (info.update, info.sync, info.lrs, info.groups) != \
                (ref.update, ref.sync, ref.lrs, ref.groups):
            raise _WrapMismatch(rank, f"rank {rank} wraps its optimizer with other options "
                                      "than rank 1 "
                              f"(update={info.update!r} vs {ref.update!r}, sync={info.sync!r} "
                              f"vs {ref.sync!r}, learning rates {list(info.lrs)} vs "
                              f"{list(ref.lrs)})")
    if ref.sync == "check":
        for rank, info in enumerate(infos):
            for name, a, b in zip(info.names, infos[0].digests, info.digests):
                if a != b:
                    raise _WrapMismatch(rank,
                        f"rank {rank}'s parameter {name} differs from rank 0's at wrap time: "
                        "build the model on every rank from the same seed (torch.manual_seed "
                        "before constructing it), or pass sync='broadcast' to start every "
                        "replica from rank 0's parameters")


class Session:
    """One rank's state of a wrapped run (see the module docstring)."""

    def __init__(self, context, model, optimizer=None, *, update=None, sync=None,
                 evaluate=None, check=None):
        comm, config = context.comm, context.config
        self.comm, self.config = comm, config
        rank, size = comm.Get_rank(), comm.Get_size()
        self.is_server, workers = rank == 0, size - 1
        self.model, self.optimizer, self.evaluate = model, optimizer, evaluate
        local_rank = device.node_local_rank(comm)  # collective: every rank, before any branch
        where = agree(comm, lambda: device.select(config.device, local_rank, self.is_server),
                      "selecting the device")
        self.where = where
        flat = agree(comm, lambda: FlatParameters(model.to(where.torch_device)),
                     "wrapping the model")
        self.flat = flat
        if update is not None:  # a worker
            update = agree(comm, lambda: (check() if check else None,
                                          _check_groups(resolve_update(update, config.algorithm),
                                                        optimizer))[1],
                           "wrapping the optimizer")
        else:
            agree(comm, lambda: None, "wrapping the optimizer")
        lrs = tuple(float(g["lr"]) for g in optimizer.param_groups) if optimizer else ()
        info = _WrapInfo(tuple(flat.names), tuple(flat.shapes), tuple(flat.digests()), update,
                         sync, lrs if not self.is_server else (),
                         len(optimizer.param_groups) if optimizer and not self.is_server
                         else None)
        infos = comm.allgather(info)
        agree(comm, lambda: _check_wrap(infos, rank),
              "checking that every rank wraps the same model")
        self.update, self.sync, self.lr0 = infos[1].update, infos[1].sync, infos[1].lrs
        self.groups = len(self.lr0)  # learning rates in each step's report
        agree(comm, lambda: self._check_server_optimizer(infos[1].groups),
              "checking the server's optimizer")
        self.params, self.grads = where.array(flat.params), where.array(flat.grads)
        if self.sync == "broadcast":
            self._broadcast_params()
        self.alg = alg = agree(comm, lambda: self._algorithm(workers), "setting up the algorithm")
        if self.update == "optimizer":
            # The exchange calls alg.apply(ctx, decoded) on every rank; here the decoded mean
            # goes to the torch optimizer instead (an instance attribute shadows the method).
            alg.apply = self._optimizer_step
        self.steps, totals, previous_run = 0, {}, None
        if config.resume:
            totals, previous_run = self._resume()
        zeros = np.zeros if where.name == "cpu" else device.pinned_zeros
        self.exchange = hierarchy.create(comm, alg, where, self.params, zeros)
        self.exchange.attack = agree(comm, lambda: attacks.create(config, alg, rank, size),
                                     "setting up the adversaries")
        # The workers' loops decide the number of steps: no "iterations" is requested (readers
        # then take the logged steps; hpcgrad analyze's "requested" shows those).
        extra = {"api": "hpcgrad.torch", "update": self.update}
        if config.resume:
            extra["resumed_from"] = str(config.resume)
        self.log, self.run = open_log(comm, config, alg, flat.count, where, self.steps,
                                      previous_run, extra, omit=("iterations",))
        fields = {**alg.step_fields, **STEP_FIELDS}
        rows = config.flush_every
        self.clock = PhaseClock(rows)
        self.losses = np.full(rows, np.nan)
        self.record = np.zeros((rows, 1 + len(PHASES)))
        self.gathered = np.zeros((size, rows, 1 + len(PHASES))) if self.is_server else None
        self.records = StepRecords(rows, workers, fields) if self.is_server else None
        if self.is_server:
            for name, value in totals.items():
                setattr(self.records, name, value)
        self.first_row = self.steps
        self.schedule = lr_schedule.from_config(config)
        self._scaled = False  # set_lr called once: from then on, every step
        self.finished = False
        self._evaluated = None
        self.started = time.perf_counter()
        self._mark = self.started

    # ------------------------------------------------------------------ setup

    def _check_server_optimizer(self, groups) -> None:
        if not self.is_server or self.update != "optimizer":
            return
        if self.optimizer is None:
            raise ConfigError("update='optimizer': rank 0 keeps a replica and takes the same "
                              "step, so it needs the same optimizer: serve(model, optimizer)")
        if len(self.optimizer.param_groups) != groups:
            raise ConfigError(f"the server's optimizer has {len(self.optimizer.param_groups)} "
                              f"parameter groups, the workers' {groups}")

    def _algorithm(self, workers):
        config = self.config
        if getattr(config, "feedback", None) == "step-ahead" and config.algorithm == "ef-sgd":
            raise ConfigError("feedback='step-ahead' takes the gradient at x - e, inside the "
                              "training loop; hpcgrad.torch does not own the loop: use "
                              "feedback='ef' (or hpcgrad train)")
        return algorithms.create(config, self.flat.count, workers, self.flat.numels)

    def _broadcast_params(self) -> None:
        host = self.flat.params.detach().cpu().numpy()
        self.comm.Bcast([host, MPI.FLOAT], root=0)
        self.where.to_device(host, self.params)
        self.flat.push_params()

    def _resume(self) -> dict:
        comm, config, flat, alg = self.comm, self.config, self.flat, self.alg
        found = agree(comm, lambda: checkpoint.find(config.resume) if self.is_server else None,
                      "finding the checkpoint")
        directory = Path(comm.bcast(str(found) if found else None, root=0))
        # The wrapper has no fixed number of iterations: any saved step continues.
        unbounded = dataclasses.replace(config, iterations=2**32 - 1)
        self.steps = agree(comm, lambda: checkpoint.check(directory, comm, flat, alg,
                                                          unbounded), "checking the checkpoint")
        totals = agree(comm, lambda: checkpoint.load(directory, comm, flat, alg, None,
                                                     kernels.array_module(self.params)),
                       "loading the checkpoint")
        self._broadcast_params()  # rank 0 read them from its file
        agree(comm, lambda: self._load_torch_state(directory), "loading the optimizer state")
        previous_run = agree(comm, lambda: checkpoint.read_run(directory)
                             if self.is_server else None, "finding the checkpoint")
        return totals, previous_run

    def _torch_state_file(self, directory) -> Path:
        return Path(directory) / f"torch-rank-{self.comm.Get_rank():05d}.pt"

    def _save_torch_state(self, directory) -> None:
        state = {"optimizer": self.optimizer.state_dict() if self.optimizer else None,
                 "buffers": {n: b.detach().cpu() for n, b in self.model.named_buffers()}}
        buffer = io.BytesIO()
        torch.save(state, buffer)
        checkpoint.write_sealed(self._torch_state_file(directory), buffer.getvalue())

    def _load_torch_state(self, directory) -> None:
        path = self._torch_state_file(directory)
        if not path.exists():
            raise ConfigError(f"checkpoint {str(directory)!r} has no {path.name}: it was not "
                              "written by hpcgrad.torch")
        state = torch.load(io.BytesIO(checkpoint.read_sealed(path)), map_location="cpu",
                           weights_only=True)
        if self.optimizer is not None and state["optimizer"] is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        buffers = dict(self.model.named_buffers())
        with torch.no_grad():
            for name, value in state["buffers"].items():
                buffers[name].copy_(value)

    # ------------------------------------------------------------------- steps

    def _lr(self, lrs):
        """This step's learning rate for the algorithm, or None (unchanged)."""
        t = self.steps
        if self.update == "optimizer":
            if self.is_server:
                for group, lr in zip(self.optimizer.param_groups, lrs):
                    group["lr"] = lr
            return None
        factor = lrs[0] / self.lr0[0] if self.lr0 and self.lr0[0] else 1.0
        if factor != 1.0 or not self.schedule.is_constant:
            self._scaled = True  # a constant run never calls set_lr: as hpcgrad train
        return self.schedule.lr_at(t) * factor if self._scaled else None

    def _optimizer_step(self, ctx, mean) -> None:
        self.flat.hand_grads(mean)
        self.optimizer.step()
        self.flat.pull_params()

    def run_step(self, report: Report, loss: float = float("nan")) -> str:
        """Collective: report, take the verdict, and on ``go`` run one exchange.  Returns
        the verdict's action (``go``, ``skip`` or ``stop``)."""
        row = self.steps - self.first_row
        clock = self.clock
        clock.start(row)
        if not self.is_server:
            clock.times[row, COMPUTE] = clock._last - self._mark
        verdict = control.exchange_reports(self.comm, report, self.flat.names,
                                           self.groups)
        clock.lap(GATHER)
        if verdict.action == "stop":
            self._finish()
            return "stop"
        if verdict.action == "skip":
            self._mark = time.perf_counter()
            return "skip"
        lr = self._lr(verdict.lrs)
        self.exchange.begin(self.steps, lr)
        self.exchange.step(self.grads, clock)
        self.flat.push_params()
        if self.optimizer is not None and self.update == "algorithm":
            # The algorithm stepped the optimizer's parameters: tell LR schedulers so, as
            # torch's own step wrapper does (else they warn of a scheduler step before any).
            self.optimizer._opt_called = True
        if verdict.buffers:
            self._broadcast_buffers()
        self.losses[row] = loss
        step, config = self.steps, self.config
        if self.is_server:
            logged = lr if lr is not None else (verdict.lrs[0] if self.update == "optimizer"
                                                else self.config.lr)
            self.records.record(row, self.exchange,
                                {**self.alg.step_stats, "lr": float(np.float32(logged))})
            if step < config.record_messages:
                self.log.append_messages(step, *self.exchange.messages())
        self.steps += 1
        every = config.checkpoint_every
        checkpoint_now = every and self.steps % every == 0
        if row == config.flush_every - 1 or checkpoint_now:
            self._flush(row + 1)
        if self.is_server and self.evaluate and config.eval_every \
                and self.steps % config.eval_every == 0:
            self._evaluate()
        if checkpoint_now:
            checkpoint.save(config.checkpoint_dir, self.steps, self.comm, self.flat, self.alg,
                            None, self.records.totals() if self.is_server else {}, config,
                            extra=self._save_torch_state, run=self.run)
        self._mark = time.perf_counter()
        return "go"

    def _broadcast_buffers(self) -> None:
        """Worker 1's buffers (BatchNorm statistics, ...) to every rank."""
        buffers = [b for b in self.model.buffers()]
        values = self.comm.bcast([b.detach().cpu() for b in buffers]
                                 if self.comm.Get_rank() == 1 else None, root=1)
        with torch.no_grad():
            for b, v in zip(buffers, values):
                b.copy_(v)

    def _flush(self, rows: int) -> None:
        self.record[:, 0] = self.losses
        self.record[:, 1:] = self.clock.times
        self.comm.Gather(self.record, self.gathered, root=0)  # fixed shape; rows past unused
        if self.is_server and rows:
            g, rec = self.gathered[:, :rows], self.records
            iters = np.arange(self.first_row, self.first_row + rows)
            self.log.append_steps(iters, rec.bytes_up[:rows], rec.bytes_down[:rows],
                                  g[1:, :, 0].T,
                                  {p: g[:, :, 1 + i].T for i, p in enumerate(PHASES)},
                                  {name: c[:rows] for name, c in rec.extra.items()})
        self.losses[:] = np.nan
        self.first_row = self.steps

    def _evaluate(self) -> None:
        if self._evaluated == self.steps:
            return
        self._evaluated = self.steps
        loss, accuracy = self.evaluate(self.model)
        self.log.append_eval(self.steps, float(loss), float(accuracy))

    def _finish(self) -> None:
        """The stop verdict: the last rows to the log, the replicas checked equal."""
        self._flush(self.steps - self.first_row)
        digest = check_replicas(self.comm, self.flat.params.detach().cpu().numpy())
        if self.is_server:
            if self.evaluate:
                self._evaluate()
            self.log.finish(digest)
        self.digest = digest
        self.seconds = time.perf_counter() - self.started
        self.finished = True

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
