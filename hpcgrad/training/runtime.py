"""The training loop every rank runs, and the setup around it.

:func:`train` builds the run, each piece as a setup step all ranks agree on
(``comm.agreement.agree``): dataset, model, device, algorithm, sampler, a resumed
checkpoint, the exchange (:mod:`hpcgrad.training.exchange`), the attack, the log.  The
loop then, per step: starts the step (``exchange.begin``: the step context, and the lr of
a schedule), computes the gradient on workers (the ``compute`` phase, between the
algorithm's ``before_gradient`` and ``after_gradient``), and runs ``exchange.step``; rank 0
records the step's log columns.  Every ``flush_every`` steps, and before a checkpoint, it
gathers losses and phase times to rank 0 for the HDF5 log; it evaluates every
``eval_every`` steps and checkpoints every ``checkpoint_every``.  The whole iteration, phase
by phase, is drawn once, in ``docs/architecture.md`` ("One iteration's data path").

Every rank holds a replica of the model; all replicas see the same downlink
and apply the same float32 arithmetic, so they stay bit-identical, which the
run checks at the end.  Per-step losses and phase times are kept locally and
gathered to rank 0 every ``flush_every`` steps for the HDF5 log.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time
import uuid
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from mpi4py import MPI

from .. import __version__, kernels
from ..comm import device, interrupts, topology, waits
from ..workloads import datasets, footprint, models, partitions
from . import attacks, checkpoint, hierarchy, logfile, sharding
from . import schedule as lr_schedule
from ..algorithms.step import Roles
from ..comm.agreement import agree
from .config import TrainConfig
from ..errors import ConfigError, HpcgradError, NonFiniteError
from .exchange import COMPUTE, PhaseClock
from .flat import FlatModel
from .tracelog import PHASES, TrafficLog
from ..wire import HEADER_SIZE


@dataclass
class RunSummary:
    log_path: str
    algorithm: str
    workers: int
    num_params: int
    iterations: int
    final_loss: float
    final_accuracy: float
    bytes_up_per_worker: int
    bytes_down: int
    compression_up: float
    compression_down: float
    seconds: float
    #: Mean over the steps of |U| / K (algorithms that log ``union_size`` and have a K).
    union_over_k: float | None = None
    #: ef-sgd --error-averaging: bytes each worker passed to the averaging Allreduce.
    bytes_average_per_worker: int | None = None
    #: --validation-fraction: the last evaluation on the validation set (None: none held out).
    final_validation_loss: float | None = None
    final_validation_accuracy: float | None = None
    #: How MPI ranks wait (rank 0's ``comm.waits.decision()``): yield or busy-poll, and why.
    mpi_waits: str | None = None
    #: --hierarchy node: the mode and the nodes (hierarchy.py); None: the flat exchange.
    hierarchy: str | None = None

    def text(self) -> str:
        mb = 1e6
        return "\n".join([
            f"hpcgrad: {self.algorithm}, {self.workers} workers, {self.num_params:,} parameters, "
            f"{self.iterations} iterations in {self.seconds:.1f} s",
            f"  final eval: loss {self.final_loss:.4f}, accuracy {self.final_accuracy:.2%}",
            *([f"  final validation: loss {self.final_validation_loss:.4f}, accuracy "
               f"{self.final_validation_accuracy:.2%}"]
              if self.final_validation_loss is not None else []),
            f"  sent per worker: {self.bytes_up_per_worker / mb:.3f} MB up, "
            f"{self.bytes_down / mb:.3f} MB down",
            f"  compression vs fp32: {self.compression_up:.1f}x up, "
            f"{self.compression_down:.1f}x down",
            *([f"  union of the workers' positions: mean |U|/K = {self.union_over_k:.3f}"]
              if self.union_over_k is not None else []),
            *([f"  error averaging: {self.bytes_average_per_worker / mb:.3f} MB per worker"]
              if self.bytes_average_per_worker else []),
            *([f"  MPI waits: {self.mpi_waits}"] if self.mpi_waits else []),
            *([f"  exchange: {self.hierarchy}"] if self.hierarchy else []),
            f"  log: {self.log_path}",
        ])


def default_log_path(config: TrainConfig, world_size: int, first_step: int = 0) -> str:
    """``runs/ALGORITHM-nWORLD-sSEED-TIME.h5``; a resumed run's ends ``-fromSTEP``, so the parts
    of one run sort together and never take each other's name."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    part = f"-from{first_step}" if first_step else ""
    return str(logfile.DEFAULT_DIR
               / f"{config.algorithm}-n{world_size}-s{config.seed}-{stamp}{part}.h5")


def _run_identity(previous: dict | None, start_step: int) -> dict:
    """The log attributes that tie the parts of one run together (docs/log-format.md): a
    fresh run gets a new ``run_id``; a resumed run keeps its checkpoint's and is one part
    further on."""
    identity = {"run_id": uuid.uuid4().hex, "part": 0, "first_step": start_step,
                "created_unix": time.time()}
    if previous is not None:
        identity["part"] = int(previous.get("part", 0)) + 1
        identity["run_id"] = str(previous.get("run_id") or identity["run_id"])
        if previous.get("log_path"):
            identity["previous_log"] = str(previous["log_path"])
    return identity


def _run_metadata(comm, config, num_params, alg, log_path, where) -> dict:
    hosts = comm.gather(socket.gethostname(), root=0)
    devices = comm.gather(where.describe(), root=0)
    roles = Roles(comm.Get_rank(), comm.Get_size(), config.servers)
    # Only a sharded run's logs carry its roles: one-server logs keep their attributes.
    sharded = {"roles": json.dumps([roles.role(r) for r in range(roles.size)])} \
        if roles.servers > 1 else {}
    return {
        **sharded,
        "algorithm": config.algorithm,
        "world_size": comm.Get_size(),
        "num_workers": roles.workers,
        "num_params": num_params,
        "iterations": config.iterations,
        "seed": config.seed,
        "config": config.to_json(),
        "uplink_codec": "|".join(c.name for c in alg.uplink_codecs()),
        "downlink_codec": "|".join(c.name for c in alg.downlink_codecs()),
        "header_bytes": HEADER_SIZE,
        "mpi_library": MPI.Get_library_version().strip().splitlines()[0],
        "mpi_version": "%d.%d" % MPI.Get_version(),
        "cuda_aware": device.cuda_aware_mpi(),
        "hostnames": json.dumps(hosts),
        "devices": json.dumps(devices),
        "hpcgrad_version": __version__,
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "log_path": str(log_path),
        "mpi_waits": waits.decision(),
        **attacks.metadata(config.adversaries, config.attack, comm.Get_size(), roles.servers),
    }


def evaluate(model, data, split: str = "test") -> tuple[float, float]:
    """Loss and accuracy on the test set, or on the validation set (``split="validation"``)."""
    x, y = (data.val_x, data.val_y) if split == "validation" else (data.test_x, data.test_y)
    with torch.no_grad():
        out = model(x)
        loss = F.cross_entropy(out, y).item()
        accuracy = (out.argmax(1) == y).double().mean().item()
    return loss, accuracy


def _broadcast_params(comm, flat, params, where) -> None:
    """Every replica takes rank 0's parameters."""
    host_params = flat.params.detach().cpu().numpy()
    comm.Bcast([host_params, MPI.FLOAT], root=0)
    where.to_device(host_params, params)


def check_world(comm, config, command: str = "hpcgrad train") -> None:
    """Collective: the world can run ``config`` (at least 2 ranks, at most the header's 16-bit
    sender field) and every rank has the same settings; ``command`` is what the hint for a
    world of one tells the user to launch."""
    size = comm.Get_size()
    if size < 2:
        ntasks = os.environ.get("SLURM_NTASKS") or os.environ.get("OMPI_COMM_WORLD_SIZE")
        hint = ""
        if ntasks and int(ntasks) > 1:
            hint = (f" (the launcher started {ntasks} tasks, but each sees an MPI world of 1: "
                    "under Slurm use srun --mpi=pmi2, or the mpiexec of the MPI mpi4py uses)")
        raise ConfigError("hpcgrad needs at least 2 MPI ranks (rank 0 is the server, ranks "
                          f"1..N-1 are workers); got a world of size {size}{hint}. "
                          f"Run e.g. mpiexec -n 5 {command}")
    if size > 2**16:
        raise ConfigError(f"a world of {size} ranks exceeds the header's 16-bit sender field")
    Roles(comm.Get_rank(), size, config.servers)  # S < N: at least one worker
    digests = comm.allgather(hashlib.sha256(config.to_json().encode()).hexdigest())
    for rank, digest in enumerate(digests):
        if digest != digests[0]:
            raise ConfigError(f"rank {rank} runs a different configuration from rank 0; every "
                              "rank must get the same options and config file")


def train(config: TrainConfig, comm=None, model=None, data=None) -> RunSummary | None:
    """Train on every rank of ``comm``; rank 0 returns the summary, others ``None``."""
    comm = comm or MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    agree(comm, lambda: check_world(comm, config), "checking the job")
    if config.hierarchy == "node":  # bad nodes are a setup error, agreed (comm/topology.py)
        agree(comm, lambda: topology.check(topology.discover(comm, config.ranks_per_node)),
              "checking the nodes")
    if data is None and model is None:  # the settings decide the sizes (the CLI checked too)
        agree(comm, lambda: footprint.check(config, size), "checking the memory")
    # Refuse a log in the way before the seconds of loading; the claim below is the lock.
    agree(comm, lambda: logfile.check_path(config.log, overwrite=config.overwrite,
                                           default=config.log is None) if rank == 0 else None,
          "checking the log path")
    roles = Roles(rank, size, config.servers)
    workers, is_server = roles.workers, roles.is_server
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    if data is None:
        data = agree(comm, lambda: datasets.load(config), "loading the dataset")
    torch.manual_seed(config.seed)
    if model is None:
        model = agree(comm, lambda: models.build(config, data), "building the model")
    local_rank = device.node_local_rank(comm)  # collective: every rank, before any branch
    where = agree(comm, lambda: device.select(config.device, local_rank, is_server),
                  "selecting the device")
    flat = FlatModel(model.to(where.torch_device))
    d = flat.count
    params, grads = where.array(flat.params), where.array(flat.grads)
    # Replicas start from rank 0's parameters, whatever the caller's model init did.
    _broadcast_params(comm, flat, params, where)
    alg = agree(comm, lambda: sharding.create(config, flat.numels, workers),
                "setting up the algorithm")
    # Worker w reads what worker w of a one-server job of M workers reads, whatever S.
    sampler = agree(comm, lambda: None if is_server else partitions.ShardSampler(
        data, roles.worker, workers, config.batch_size, config.seed,
        partition=config.partition), "sharding the data")
    start_step, totals, resumed_from, previous_run = 0, {}, None, None
    if config.resume:
        resumed_from = str(comm.bcast(agree(comm, lambda: checkpoint.find(config.resume)
                                            if rank == 0 else None, "finding the checkpoint"),
                                      root=0))
        previous_run = agree(comm, lambda: checkpoint.read_run(resumed_from)
                             if rank == 0 else None, "finding the checkpoint")
        start_step = agree(comm, lambda: checkpoint.check(resumed_from, comm, flat, alg, config),
                           "checking the checkpoint")
        totals = agree(comm, lambda: checkpoint.load(resumed_from, comm, flat, alg, sampler,
                                                     kernels.array_module(params)),
                       "loading the checkpoint")
        _broadcast_params(comm, flat, params, where)  # rank 0 read them from its file

    zeros = np.zeros if where.name == "cpu" else device.pinned_zeros
    step_exchange = hierarchy.create(comm, alg, where, params, zeros)
    step_exchange.attack = agree(comm, lambda: attacks.create(config, alg, rank, size),
                                 "setting up the adversaries")
    if rank == 0 and attacks.over_half(config.adversaries, workers):
        print(f"hpcgrad: warning: {attacks.warning(config.adversaries, workers)}",
              file=sys.stderr, flush=True)

    extra = {"resumed_from": resumed_from} if resumed_from else {}
    extra.update(getattr(step_exchange, "metadata", dict)())  # --hierarchy node's attributes
    log, run = open_log(comm, config, alg, d, where, start_step, previous_run, extra,
                        validation=getattr(data, "val_x", None) is not None)
    try:
        summary = _loop(config, comm, alg, step_exchange, flat, params, grads, sampler, data,
                        log, where, start_step, totals, run)
    except BaseException:
        if log is not None:
            log.abandon()  # the error being raised is the one to report
        raise
    if log is not None:
        log.close()
    return summary


def open_log(comm, config, alg, num_params, where, start_step=0, previous_run=None,
             attrs=None, omit=(), validation=False):
    """Collective: rank 0 claims the log path (``logfile.claim``: the file created and
    locked, refused if it exists without ``--overwrite``) and creates the log with the run's
    attributes, its identity (``run_id``, ``part``, ``first_step``; a resumed run continues
    ``previous_run``, a checkpoint's :func:`checkpoint.read_run`) and ``attrs``, less the
    attributes named in ``omit``; ``validation``: with a ``/validation`` group.  Returns
    ``(log, run)`` on rank 0 -- ``run`` is what a checkpoint records of the run -- and
    ``(None, {})`` elsewhere.  A failure on any rank is a :class:`SetupError` on all."""
    size, is_server = comm.Get_size(), comm.Get_rank() == 0
    claim = agree(comm, lambda: logfile.claim(
        config.log or default_log_path(config, size, start_step),
        overwrite=config.overwrite, default=config.log is None) if is_server else None,
        "claiming the log")
    log_path = comm.bcast(str(claim.path) if is_server else None, root=0)
    try:
        meta = {**_run_metadata(comm, config, num_params, alg, log_path, where),
                **alg.metadata(), **(attrs or {}),
                **(_run_identity(previous_run, start_step) if is_server else {})}
        for name in omit:
            meta.pop(name, None)
    except BaseException:
        if claim is not None:
            claim.release(remove=True)
        raise
    servers = int(getattr(config, "servers", 1))
    fields = {**alg.step_fields, **STEP_FIELDS, **(SHARD_FIELDS(servers) if servers > 1 else {})}
    log = agree(comm, lambda: TrafficLog(log_path, attrs=meta, num_workers=size - servers,
                                         world_size=size,
                                         record_messages=config.record_messages,
                                         step_fields=fields,
                                         claim=claim, validation=validation)
                if is_server else None, "creating the log")
    run = ({"run_id": meta["run_id"], "part": meta["part"], "log_path": log_path}
           if is_server else {})
    return log, run


def _columns(per_worker, workers: int) -> tuple:
    """A step field's columns: True one per worker, False none, a number that many."""
    if isinstance(per_worker, bool):
        return (workers,) if per_worker else ()
    return (int(per_worker),)


class StepRecords:
    """Rank 0's per-step log columns between flushes, allocated once."""

    def __init__(self, rows: int, workers: int, fields: dict):
        self.bytes_up = np.zeros((rows, workers), dtype=np.int64)
        self.bytes_down = np.zeros(rows, dtype=np.int64)
        self.extra = {name: np.zeros((rows, *_columns(per_worker, workers)), dtype=dtype)
                      for name, (per_worker, dtype) in fields.items()}
        self.total_up = 0
        self.total_down = 0
        self.total_union = 0
        self.total_average = 0

    def record(self, row: int, step_exchange, stats: dict) -> None:
        self.bytes_up[row] = step_exchange.bytes_up()
        self.bytes_down[row] = step_exchange.bytes_down()
        self.total_up += int(self.bytes_up[row].sum())
        self.total_down += int(self.bytes_down[row])
        for name, column in self.extra.items():
            column[row] = stats[name]
        if "union_size" in self.extra:
            self.total_union += int(stats["union_size"])
        if "bytes_average" in self.extra:
            self.total_average += int(stats["bytes_average"].sum())

    def add_servers(self, links) -> None:
        """``--servers S > 1``, at a flush: ``links`` (S x rows x (M + 1), every server's
        :meth:`ShardedExchange.link_bytes` of each step) into the rows' columns: a worker's
        ``bytes_up`` is what it sent to all S servers, ``bytes_down`` what every rank received
        from them, ``incast`` what each server received."""
        rows = links.shape[1]
        uplinks = links[:, :, :-1].astype(np.int64)
        self.bytes_up[:rows] = uplinks.sum(axis=0)
        self.bytes_down[:rows] = links[:, :, -1].astype(np.int64).sum(axis=0)
        self.extra["incast"][:rows] = uplinks.sum(axis=2).T
        self.total_up += int(self.bytes_up[:rows].sum())
        self.total_down += int(self.bytes_down[:rows].sum())

    def totals(self) -> dict:
        """What a checkpoint keeps so that a resumed run's summary covers the whole run."""
        return {"total_up": self.total_up, "total_down": self.total_down,
                "total_union": self.total_union, "total_average": self.total_average}


#: Per-step log columns the runtime adds for every algorithm (docs/log-format.md).
STEP_FIELDS = {"lr": (False, np.float64)}


def SHARD_FIELDS(servers: int) -> dict:  # noqa: N802 (a table, as STEP_FIELDS)
    """``--servers S > 1``: per step, the bytes each server received (its incast: M uplinks,
    headers included), one column per server (docs/log-format.md)."""
    return {"incast": (servers, np.int64)}


def progress_line(done: int, iterations: int, eval_loss: float, eval_acc: float,
                  lr: float | None, steps_timed: int, elapsed: float, examples_per_step: int,
                  up_per_worker: float, down: float, val_acc: float | None = None) -> str:
    """Rank 0's line at an evaluation: where training is, its throughput over the
    ``steps_timed`` steps run in ``elapsed`` seconds, and the bytes sent so far."""
    rate = steps_timed / elapsed if elapsed > 0 else float("inf")
    return (f"step {done:6d}/{iterations}  eval loss {eval_loss:.4f}  accuracy {eval_acc:6.2%}"
            + (f"  validation {val_acc:6.2%}" if val_acc is not None else "")
            + (f"  lr {lr:.4g}" if lr is not None else "")
            + f"  up {up_per_worker / 1e6:9.3f} MB/worker  down {down / 1e6:9.3f} MB"
            f"  {rate:7.1f} steps/s  {rate * examples_per_step:8.0f} examples/s")


def _loop(config, comm, alg, step_exchange, flat, params, grads, sampler, data, log, where,
          start_step=0, totals=None, run=None):
    rank, size = comm.Get_rank(), comm.Get_size()
    roles = Roles(rank, size, config.servers)
    workers, servers = roles.workers, roles.servers
    # is_server: computes no gradient; logging: rank 0 (server 0), who writes the log.
    is_server, logging = roles.is_server, rank == 0
    flush_rows = config.flush_every
    clock = PhaseClock(flush_rows)
    losses = np.zeros(flush_rows)
    # With S > 1 every server's link bytes ride along in the flush's Gather: its M uplink
    # lengths and its downlink length per step (rank 0 alone receives only shard 0).
    links = workers + 1 if servers > 1 else 0
    record = np.zeros((flush_rows, 1 + len(PHASES) + links))
    gathered = np.zeros((size, flush_rows, record.shape[1])) if logging else None
    fields = {**alg.step_fields, **STEP_FIELDS, **(SHARD_FIELDS(servers) if servers > 1 else {})}
    records = StepRecords(flush_rows, workers, fields) if logging else None
    schedule = lr_schedule.from_config(config)  # lr of step t: a pure function of t
    model = flat.model
    eval_loss = eval_acc = float("nan")
    validating = getattr(data, "val_x", None) is not None  # --validation-fraction
    val_loss = val_acc = float("nan") if validating else None
    first_row = start_step
    if logging and totals:  # a resumed run: its summary covers the whole run
        for name, value in totals.items():
            setattr(records, name, value)
    every = config.checkpoint_every
    started = time.perf_counter()
    quiet = config.quiet or not logging
    # SIGTERM / --preempt-signal now stop the run after a step every rank agrees on.
    vote = interrupts.StopVote(comm)
    interrupts.allow_stop()

    for step in range(start_step, config.iterations):
        row = step - first_row
        lr = schedule.lr_at(step)
        # A constant run never calls set_lr: bit-identical with runs before schedules.
        ctx = step_exchange.begin(step, None if schedule.is_constant else lr)
        clock.start(row)
        if not is_server:
            x, y = sampler.next()
            x, y = x.to(where.torch_device), y.to(where.torch_device)
            alg.before_gradient(ctx)  # step-ahead EF: the gradient at x - e
            flat.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            alg.after_gradient(ctx)
            losses[row] = loss.item()
            if not np.isfinite(losses[row]):
                raise NonFiniteError(f"worker rank {rank}: training loss is {losses[row]} "
                                     f"at step {step}")
            flat.check_grads_finite()
            clock.lap(COMPUTE)
        step_exchange.step(grads, clock)
        if links:  # every server's link bytes reach rank 0 at the flush
            record[row, 1 + len(PHASES):] = step_exchange.link_bytes()
            if logging:
                records.extra["lr"][row] = float(np.float32(lr))
        elif logging:
            records.record(row, step_exchange, {**alg.step_stats, "lr": float(np.float32(lr))})
            if step < config.record_messages:
                log.append_messages(step, *step_exchange.messages())

        last = step == config.iterations - 1
        # Collective, every step: whether a rank was asked to stop (a signal) a step ago.
        stop = vote.step(interrupts.stop_requested() is not None) and not last
        checkpoint_now = ((every and (step + 1) % every == 0)
                          or (stop and config.checkpoint_dir is not None))
        # A checkpoint flushes the log first, so the log covers every step it saved.
        if row == flush_rows - 1 or last or checkpoint_now or stop:
            rows = row + 1
            record[:, 0] = losses
            record[:, 1:1 + len(PHASES)] = clock.times
            comm.Gather(record, gathered, root=0)  # fixed shape; rows past `rows` unused
            if logging:
                g = gathered[:, :rows]
                if links:
                    records.add_servers(g[:servers, :, 1 + len(PHASES):])
                iters = np.arange(first_row, first_row + rows)
                log.append_steps(iters, records.bytes_up[:rows], records.bytes_down[:rows],
                                 g[servers:, :, 0].T,
                                 {p: g[:, :, 1 + i].T for i, p in enumerate(PHASES)},
                                 {name: c[:rows] for name, c in records.extra.items()})
            first_row = step + 1
        if logging and ((config.eval_every and (step + 1) % config.eval_every == 0) or last):
            eval_loss, eval_acc = evaluate(model, data)
            log.append_eval(step + 1, eval_loss, eval_acc)
            if validating:
                val_loss, val_acc = evaluate(model, data, "validation")
                log.append_validation(step + 1, val_loss, val_acc)
            if not quiet:
                print(progress_line(step + 1, config.iterations, eval_loss, eval_acc,
                                    None if schedule.is_constant else float(np.float32(lr)),
                                    step + 1 - start_step, time.perf_counter() - started,
                                    workers * config.batch_size, records.total_up / workers,
                                    records.total_down, val_acc), flush=True)
        saved = None
        if checkpoint_now:
            saved = checkpoint.save(config.checkpoint_dir, step + 1, comm, flat, alg, sampler,
                                    records.totals() if logging else {},
                                    config, run=run)
        if stop:  # every rank alike; train() closes the log on the way out
            vote.close()
            raise interrupts.Stopped(interrupts.stop_requested() or "a signal to another rank",
                                     step + 1, config.iterations, saved)

    vote.close()
    digest = check_replicas(comm, flat.params.detach().cpu().numpy())
    if not logging:
        return None
    log.finish(digest)
    n = config.iterations
    fp32 = 4 * flat.count * n
    up_per_worker = records.total_up / workers
    return RunSummary(
        log_path=str(log.path), algorithm=config.algorithm, workers=workers,
        num_params=flat.count, iterations=n, final_loss=eval_loss, final_accuracy=eval_acc,
        bytes_up_per_worker=round(up_per_worker), bytes_down=records.total_down,
        compression_up=fp32 / up_per_worker, compression_down=fp32 / records.total_down,
        seconds=time.perf_counter() - started,
        bytes_average_per_worker=round(records.total_average / workers),
        final_validation_loss=val_loss, final_validation_accuracy=val_acc,
        mpi_waits=waits.decision(),
        hierarchy=getattr(step_exchange, "describe", lambda: None)(),
        union_over_k=(records.total_union / n / alg.k_total
                      if "union_size" in records.extra and getattr(alg, "k_total", None)
                      else None))


def check_replicas(comm, params) -> str:
    """Collective: every rank's parameters (host array) hash alike; returns the SHA-256 that
    the log records as ``final_params_sha256``, or raises naming the ranks that differ."""
    digests = comm.allgather(hashlib.sha256(params.tobytes()).hexdigest())
    bad = [r for r, dg in enumerate(digests) if dg != digests[0]]
    if bad:
        raise HpcgradError(f"model replicas diverged: ranks {bad} differ from rank 0")
    return digests[0]
