"""``hpcgrad bench peers``: hpcgrad's algorithms side by side with PyTorch DDP.

Run under ``mpiexec -n N``.  Every run trains the same model (the settings' workload, built
by :func:`hpcgrad.workloads.models.build` after ``torch.manual_seed(seed)``) on the same
data, each worker reading the same shard in the same order
(:class:`~hpcgrad.workloads.partitions.ShardSampler` of worker ``w`` of ``M = N - 1``), for
the same number of steps with the same batch size:

* **hpcgrad**: :func:`hpcgrad.training.runtime.train` on all N ranks, exactly as
  ``hpcgrad train`` runs (rank 0 the server, ranks 1..M the workers; each algorithm with its
  own default lr and momentum).  Per-step times come from the run's HDF5 log (the phase
  timers): compute; communication = encode + gather + aggregate + bcast + decode; optimizer
  = update.  Bytes are what the log records per worker.
* **DDP**: ``torch.nn.parallel.DistributedDataParallel`` on the M worker ranks only -- the
  same M gradient sources as hpcgrad, so the same data and the same global batch; rank 0
  sleeps in a non-spinning barrier meanwhile (``common.idle_barrier``), leaving the cores to
  them.  The process group is built from the MPI world: gloo on CPU (NCCL with
  ``--device cuda``), a TCP store on worker 1's host at a port it picked and broadcast
  through MPI (``--device cuda``: a GPU per worker on each node, as NCCL requires).
  Variants: no hook (fp32 all-reduce), ``fp16_compress_hook`` and ``powerSGD_hook``
  (``--powersgd-rank``, error feedback and warm start as PyTorch's defaults, compressing
  from step 2, one bucket for the whole model).  The optimizer is ``torch.optim.SGD`` with
  ``allreduce``'s lr and momentum.  DDP overlaps its bucketed all-reduces with the backward
  pass, so its compute and communication cannot be told apart inside a step: before the run
  every worker times the forward and backward of a local copy of the model (no DDP) on its
  first batch; "communication" is the DDP step's forward + backward minus that, i.e. the
  exposed part.  Bytes per worker are what a ring all-reduce sends, 2(M-1)/M times the
  reduced payload (gloo's and NCCL's large-message algorithm); PowerSGD's payload is its P
  and Q factors plus the uncompressed tensors, by the hook's own rule.

Times per step are medians over the steps after the first (``--warmup`` untimed steps are
skipped too); "wall" is the whole loop divided by the steps, log flushes and all.  The
table's ratio is each run's median time per step over DDP fp32's, measured in the same job.
Final loss and accuracy are on the held-out set, as ``hpcgrad train`` evaluates them.
"""

from __future__ import annotations

import copy
import os
import shutil
import socket
import sys
import tempfile
import time

import numpy as np

from .common import BenchError, idle_barrier, machine, machine_line, median, write_json

DEFAULT_ALGORITHMS = ("allreduce", "fp32-ps", "signum-mv", "s3gd-mv")
DDP_VARIANTS = ("fp32", "fp16", "powersgd")
#: The run the table's ratios are taken against.
BASELINE = "ddp-fp32"
#: hpcgrad's log phases grouped the way DDP's time is split.
COMMUNICATION = ("encode", "gather", "aggregate", "bcast", "decode")


def _config(args, algorithm: str, log: str | None = None):
    from ..training.config import TrainConfig
    return TrainConfig(algorithm=algorithm, iterations=args.iterations, hidden=args.hidden,
                       features=args.features, examples=args.examples,
                       batch_size=args.batch_size, seed=args.seed, device=args.device,
                       eval_every=0, quiet=True, log=log,
                       flush_every=args.flush_every).resolved()


# ---------------------------------------------------------------- hpcgrad ---------------------

def run_hpcgrad(comm, args, algorithm: str, tmp: str) -> dict | None:
    """Collective: one ``train()`` run; rank 0 returns its figures."""
    import h5py

    from ..training.runtime import train
    from ..training.tracelog import PHASES
    log = os.path.join(tmp, f"{algorithm}.h5")
    config = _config(args, algorithm, log)
    comm.Barrier()
    summary = train(config, comm)
    if comm.Get_rank() != 0:
        return None
    with h5py.File(log, "r") as f:
        times = {p: f[f"steps/time_{p}"][...] for p in PHASES}  # steps x ranks
    workers = slice(1, None)
    per_step = sum(times[p][:, workers] for p in PHASES)        # steps x workers
    slowest = per_step.argmax(axis=1)                           # the step's slowest worker
    rows = np.arange(per_step.shape[0])
    keep = rows[min(args.warmup, len(rows) - 1):]

    def split(names):
        return 1e3 * median(sum(times[p][:, workers] for p in names)[rows, slowest][keep])

    n = config.iterations
    return {"kind": "hpcgrad", "algorithm": algorithm, "lr": config.lr,
            "momentum": config.momentum,
            "ms_per_step": 1e3 * median(per_step[rows, slowest][keep]),
            "wall_ms_per_step": 1e3 * summary.seconds / n,
            "compute_ms": split(("compute",)), "communication_ms": split(COMMUNICATION),
            "optimizer_ms": split(("update",)),
            "server_ms": 1e3 * median(sum(times[p][:, 0] for p in PHASES)[keep]),
            "bytes_sent_per_worker": summary.bytes_up_per_worker / n,
            "bytes_received_per_worker": summary.bytes_down / n,
            "final_loss": summary.final_loss, "final_accuracy": summary.final_accuracy,
            "num_params": summary.num_params}


# ---------------------------------------------------------------- DDP -------------------------

def _ring_bytes(payload_bytes: float, workers: int) -> float:
    """Bytes each rank sends in a ring all-reduce of ``payload_bytes``."""
    return 2 * (workers - 1) / workers * payload_bytes


def powersgd_payload(model, rank: int, min_compression_rate: float = 2.0) -> int:
    """Bytes PowerSGD all-reduces per step: for each matrix it compresses (the hook's own
    ``_should_compress``), P and Q in fp32; every other tensor whole (1-D ones always)."""
    from torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook import _should_compress
    total = 0
    for p in model.parameters():
        if p.dim() <= 1:
            total += p.numel()
            continue
        matrix = p.view(p.shape[0], -1)
        compress, uncompressed, compressed = _should_compress(
            matrix.shape[0], matrix.shape[1], rank, min_compression_rate)
        total += compressed if compress else uncompressed
    return 4 * total


def _process_group(comm, workers_comm, backend: str):
    """``torch.distributed`` over the M workers: a TCP store on worker 1 (its host, a port
    it found free), the address passed through MPI."""
    import torch.distributed as dist
    if workers_comm.Get_rank() == 0:
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        address = (os.environ.get("HPCGRAD_PEERS_HOST") or socket.gethostname(), port)
    else:
        address = None
    host, port = workers_comm.bcast(address, root=0)
    dist.init_process_group(backend, init_method=f"tcp://{host}:{port}",
                            rank=workers_comm.Get_rank(), world_size=workers_comm.Get_size())


def _ddp_train(args, variant: str, workers_comm, lr: float, momentum: float) -> dict:
    """One DDP run on this worker; worker 1's dict carries the evaluation."""
    import torch
    import torch.nn.functional as F
    from mpi4py import MPI
    from torch.nn.parallel import DistributedDataParallel as DDP

    from ..training.runtime import evaluate
    from ..workloads import datasets, models, partitions
    config = _config(args, "allreduce")
    w, workers = workers_comm.Get_rank(), workers_comm.Get_size()
    cuda = config.device == "cuda"
    where = torch.device("cpu")
    if cuda:  # NCCL refuses two ranks on one GPU: a GPU per worker on each node
        local = workers_comm.Split_type(MPI.COMM_TYPE_SHARED)
        index, gpus = local.Get_rank(), torch.cuda.device_count()
        local.Free()
        if index >= gpus:
            raise BenchError(f"--device cuda: DDP over NCCL needs a GPU per worker; worker {w} "
                             f"is number {index + 1} on its node, which has {gpus} GPU(s)")
        where = torch.device(f"cuda:{index}")
    data = datasets.load(config)
    torch.manual_seed(config.seed)
    model = models.build(config, data).to(where)
    sampler = partitions.ShardSampler(data, w, workers, config.batch_size, config.seed,
                                      partition=config.partition)

    def sync():
        if cuda:
            torch.cuda.synchronize(where)

    # Compute alone: a local copy's forward + backward on the first batch (not trained).
    local = copy.deepcopy(model)
    probe = partitions.ShardSampler(data, w, workers, config.batch_size, config.seed,
                                    partition=config.partition)
    x0, y0 = (t.to(where) for t in probe.next())
    compute = []
    for _ in range(3):
        sync()
        start = time.perf_counter()
        local.zero_grad(set_to_none=False)
        F.cross_entropy(local(x0), y0).backward()
        sync()
        compute.append(time.perf_counter() - start)
    del local

    # PowerSGD chains its all-reduces in future callbacks; with several buckets gloo then
    # receives them in a different order on different ranks (a size mismatch that kills the
    # job), so PowerSGD gets one bucket for the whole model.
    cap = ({"bucket_cap_mb": 4 * sum(p.numel() for p in model.parameters()) / 2**20 + 1}
           if variant == "powersgd" else {})
    ddp = DDP(model, device_ids=[where.index] if cuda else None, **cap)
    payload = 4 * sum(p.numel() for p in model.parameters())
    if variant == "fp16":
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
        ddp.register_comm_hook(None, default_hooks.fp16_compress_hook)
        payload //= 2
    elif variant == "powersgd":
        from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as powersgd
        state = powersgd.PowerSGDState(process_group=None,
                                       matrix_approximation_rank=args.powersgd_rank,
                                       start_powerSGD_iter=2)
        ddp.register_comm_hook(state, powersgd.powerSGD_hook)
        payload = powersgd_payload(model, args.powersgd_rank)
    opt = torch.optim.SGD(ddp.parameters(), lr=lr, momentum=momentum,
                          weight_decay=config.weight_decay)
    steps = np.zeros((config.iterations, 3))  # forward+backward, optimizer, both
    workers_comm.Barrier()
    started = time.perf_counter()
    for step in range(config.iterations):
        x, y = (t.to(where) for t in sampler.next())
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=False)
        loss = F.cross_entropy(ddp(x), y)
        loss.backward()  # returns once DDP's all-reduces are done
        sync()
        t1 = time.perf_counter()
        opt.step()
        sync()
        t2 = time.perf_counter()
        steps[step] = (t1 - t0, t2 - t1, t2 - t0)
        if not np.isfinite(loss.item()):
            raise BenchError(f"DDP {variant}: loss {loss.item()} on worker {w} at step {step}")
    wall = time.perf_counter() - started
    # The step time of a synchronous job is its slowest worker's.
    workers_comm.Allreduce(MPI.IN_PLACE, steps, op=MPI.MAX)
    keep = slice(min(args.warmup, config.iterations - 1), None)
    out = {"kind": "ddp", "algorithm": f"ddp-{variant}", "lr": lr, "momentum": momentum,
           "ms_per_step": 1e3 * median(steps[keep, 2]),
           "wall_ms_per_step": 1e3 * wall / config.iterations,
           "compute_ms": 1e3 * median(compute),
           "optimizer_ms": 1e3 * median(steps[keep, 1]),
           "bytes_sent_per_worker": _ring_bytes(payload, workers),
           "bytes_received_per_worker": _ring_bytes(payload, workers),
           "num_params": sum(p.numel() for p in model.parameters())}
    out["communication_ms"] = max(0.0, 1e3 * median(steps[keep, 0]) - out["compute_ms"])
    if w == 0:
        out["final_loss"], out["final_accuracy"] = evaluate(ddp.module, data)
    return out


def run_ddp(comm, workers_comm, args, variant: str, lr: float, momentum: float) -> dict | None:
    """Collective over ``comm``: DDP on ranks 1..N-1 while rank 0 waits without spinning;
    rank 0 returns worker 1's figures.  An error on a worker takes the job down (the
    caller's policy), so rank 0 never waits for a result that cannot come."""
    if comm.Get_rank() == 0:
        idle_barrier(comm)
        return comm.recv(source=1, tag=20)
    out = _ddp_train(args, variant, workers_comm, lr, momentum)
    idle_barrier(comm)
    if comm.Get_rank() == 1:
        comm.send(out, dest=0, tag=20)
    return None


# ---------------------------------------------------------------- the command -----------------

def run(comm, args, algorithms, variants, tmp: str) -> dict | None:
    """Collective: every DDP variant, then every hpcgrad algorithm; rank 0 returns the
    figures with the ratios to DDP fp32 (when it ran)."""
    from mpi4py import MPI
    rank = comm.Get_rank()
    base = _config(args, "allreduce")
    results = {}
    workers_comm = comm.Split(MPI.UNDEFINED if rank == 0 else 0, rank)
    if variants:
        if rank != 0:
            _process_group(comm, workers_comm, "nccl" if base.device == "cuda" else "gloo")
        for variant in variants:
            results[f"ddp-{variant}"] = run_ddp(comm, workers_comm, args, variant,
                                                base.lr, base.momentum)
        if rank != 0:
            import torch.distributed as dist
            dist.destroy_process_group()
    if workers_comm != MPI.COMM_NULL:
        workers_comm.Free()
    for name in algorithms:
        results[name] = run_hpcgrad(comm, args, name, tmp)
    if rank != 0:
        return None
    ref = results.get(BASELINE)
    for r in results.values():
        r["ratio_to_ddp_fp32"] = (r["ms_per_step"] / ref["ms_per_step"]) if ref else None
    return {"world_size": comm.Get_size(), "workers": comm.Get_size() - 1,
            "num_params": next(iter(results.values()))["num_params"],
            "model": base.model, "hidden": base.hidden, "features": base.features,
            "batch_size": base.batch_size, "iterations": base.iterations, "seed": base.seed,
            "device": base.device, "warmup": args.warmup, "runs": results,
            "ddp_processes": comm.Get_size() - 1, "machine": machine()}


def report(out: dict) -> str:
    lines = [f"hpcgrad bench peers: {out['world_size']} ranks ({out['workers']} workers; DDP on "
             f"the {out['ddp_processes']} worker ranks), {out['model']} "
             f"{out['num_params']:,} parameters, batch {out['batch_size']} per worker, "
             f"{out['iterations']} steps, {out['device']}",
             f"machine: {machine_line(out['machine'])}",
             f"{'run':14s}{'ms/step':>9s}{'x DDP':>7s}{'compute':>9s}{'comm':>8s}{'optim':>8s}"
             f"{'wall ms':>9s}{'MB sent/worker':>16s}{'loss':>8s}{'acc':>8s}"]
    for name, r in out["runs"].items():
        ratio = r.get("ratio_to_ddp_fp32")
        lines.append(
            f"{name:14s}{r['ms_per_step']:9.1f}{(f'{ratio:7.2f}' if ratio else '      -')}"
            f"{r['compute_ms']:9.1f}{r['communication_ms']:8.1f}{r['optimizer_ms']:8.1f}"
            f"{r['wall_ms_per_step']:9.1f}{r['bytes_sent_per_worker'] / 1e6:16.3f}"
            f"{r['final_loss']:8.4f}{r['final_accuracy']:8.2%}")
    lines.append("ms/step: median over steps of the slowest worker's step; comm: hpcgrad's "
                 "encode..decode phases, DDP's exposed all-reduce time (forward+backward minus "
                 "a local model's); wall: the whole loop / steps")
    return "\n".join(lines)


def main(args) -> int:
    from mpi4py import MPI

    from ..comm.agreement import SetupError, agree
    from ..algorithms import REGISTRY
    from ..workloads import footprint
    from .exchange import selected
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()

    def check():
        if size < 3:
            raise BenchError(f"needs at least 3 MPI ranks (a server and two workers; DDP runs "
                             f"on the workers); got a world of size {size}. Run e.g. "
                             "mpiexec -n 5 hpcgrad bench peers")
        if args.iterations < 2 or args.warmup < 0 or args.warmup >= args.iterations:
            raise BenchError("--iterations must be >= 2 and --warmup in [0, --iterations)")
        if args.powersgd_rank < 1:
            raise BenchError("--powersgd-rank must be >= 1")
        names = [] if args.no_hpcgrad else list(args.algorithm or [
            name for name in DEFAULT_ALGORITHMS  # by default, those that run on the device
            if args.device in REGISTRY[name].devices])
        if names:
            selected(names)  # checks they are registered
        variants = [] if args.no_ddp else list(args.ddp or DDP_VARIANTS)
        for v in variants:
            if v not in DDP_VARIANTS:
                raise BenchError(f"--ddp must be one of {', '.join(DDP_VARIANTS)}, got {v!r}")
        for name in names or ["allreduce"]:  # `hpcgrad train`'s checks, memory included,
            footprint.check(_config(args, name), size)  # before DDP allocates anything
        if args.device == "cuda":
            import torch
            if not torch.cuda.is_available():
                raise BenchError("--device cuda: torch sees no CUDA device on this node")
        return names, variants

    tmp = None
    try:
        names, variants = agree(comm, check, "checking the options")
        tmp = comm.bcast(tempfile.mkdtemp(prefix="hpcgrad-peers-") if rank == 0 else None)
        out = run(comm, args, names, variants, tmp)
    except SetupError as exc:
        if rank == 0:
            print(f"hpcgrad bench peers: error: {exc}", file=sys.stderr, flush=True)
        return 2
    finally:
        if rank == 0 and tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    if rank == 0:
        print(report(out), flush=True)
        if args.json:
            write_json(args.json, out)
            print(f"wrote {args.json}", flush=True)
    return 0
