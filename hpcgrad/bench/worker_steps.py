"""Each compressing algorithm's worker step against ``np.copyto`` of its gradient (issue 19).

Part of ``hpcgrad bench micro``.  For every label of :data:`LABELS` (the settings ``bench
exchange`` runs under the same labels, :data:`SETTINGS`; one tensor of d coordinates,
M = 4 workers), one process builds the algorithm as training does and times, round after
round, ``np.copyto`` of the d-float gradient, then the worker step through the fused
kernels (``fused = True``, the default), then -- for context, in the first three rounds --
the same step through the reference path (``fused = False``: the NumPy passes the fused
kernels replace, the same bytes).  Before every timed call each cache line of a 64 MiB
scratch buffer is touched (as in :mod:`.micro`), so every call reads from memory.  Medians;
``vs_copy`` = step time / copy time of the same rounds (target: <= 3 at d = 25.6M).

The worker step is the whole of the worker's encode: residual, selection or quantization,
the body written and declared in the uplink buffer (``MessageBuffer.begin`` included).
"""

from __future__ import annotations

import time

import numpy as np

from .common import median

#: label -> what the line says it is (labels of ``bench exchange``'s table).
LABELS = {
    "s3gd-mv": "residual + top-1% + forget, sparse-sign",
    "topk": "residual + top-1% values",
    "qsgd": "norm, 4-bit levels + coins + pack",
    "dq-sgd": "as qsgd, at its start width",
    "ef-sgd": "momentum + residual + scaled sign",
    "ef-sgd-topk": "momentum + residual + top-1%",
    "fp16-ps": "fp16 rounding",
}
#: Settings besides the algorithm's defaults (``bench exchange``'s VARIANTS of the labels).
SETTINGS = {"ef-sgd-topk": {"algorithm": "ef-sgd", "compressor": "topk", "sparsity": 0.01}}
WORKERS = 4
CONTEXT_ROUNDS = 3
EVICT_BYTES = 64 * 2**20  # larger than the last-level cache, as in .micro

#: Bytes per coordinate one algorithm holds at most while measured (ef-sgd: gradient,
#: residual, momentum, update, decoded, uplink; plus the copy's target).
BYTES_PER_PARAM = 4 * 8


def _step(label: str, d: int):
    """(fused step, reference step) closures for ``label``'s worker 1."""
    from ..algorithms import REGISTRY
    from ..algorithms.step import StepContext
    from ..training.config import TrainConfig
    from ..wire import Header, MessageBuffer

    settings = dict(SETTINGS.get(label, {}))
    algorithm = settings.pop("algorithm", label)
    cfg = TrainConfig(algorithm=algorithm, iterations=10, quiet=True, **settings).resolved()
    alg = REGISTRY[cfg.algorithm](cfg, d, WORKERS)
    codecs = alg.uplink_codecs()
    msg = MessageBuffer(Header(alg.uplink.id, d, max(c.max_body_length(d) for c in codecs),
                               0, 1), variable=alg.variable_length)
    grad = np.random.default_rng(1).standard_normal(d, dtype=np.float32)
    ctx = StepContext(1, WORKERS, alg.shard, None, "cpu", cfg.lr, 0)
    steps = [0]

    def step(fused: bool):
        alg.fused = fused
        ctx.step = steps[0]
        msg.begin(steps[0])
        alg.worker_step(ctx, grad, msg)
        steps[0] += 1

    return grad, (lambda: step(True)), (lambda: step(False))


def _time_label(label: str, d: int, repeat: int, context: bool, scratch) -> dict:
    """One label's figures; its arrays are freed on return, before the next label's."""
    grad, fused, reference = _step(label, d)
    target = np.empty_like(grad)
    calls = {"copy": lambda: np.copyto(target, grad), "fused": fused}
    if context:
        calls["reference"] = reference
    for fn in calls.values():
        fn()  # compile, fault pages in
    times = {name: [] for name in calls}
    for r in range(repeat):
        for name, fn in calls.items():
            if name == "reference" and r >= CONTEXT_ROUNDS:
                continue
            scratch[::8] += 1.0  # every call starts from memory, not a warm cache
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    t = {name: median(v) for name, v in times.items()}
    entry = {"seconds": t, "vs_copy": t["fused"] / t["copy"]}
    if context:
        entry["reference_vs_copy"] = t["reference"] / t["copy"]
        entry["speedup"] = t["reference"] / t["fused"]
    return entry


def run(d: int, repeat: int = 9, context: bool = True, labels=None) -> dict:
    """Time every label's worker step (see the module docstring); returns the figures."""
    scratch = np.zeros(EVICT_BYTES // 8)
    return {label: _time_label(label, d, repeat, context, scratch)
            for label in labels or LABELS}


def report(result: dict) -> list[str]:
    """One line per label."""
    lines = ["worker steps (encode), fused vs np.copyto of the gradient (target <= 3x copy):"]
    for label, e in result.items():
        t = e["seconds"]
        line = (f"  {label:12s} {1e3 * t['fused']:9.3f} ms  {e['vs_copy']:5.2f}x copy "
                f"({1e3 * t['copy']:.3f} ms)")
        if "reference" in t:
            line += (f"; reference {1e3 * t['reference']:.3f} ms = "
                     f"{e['reference_vs_copy']:.2f}x copy, fused {e['speedup']:.1f}x faster")
        lines.append(f"{line}  [{LABELS.get(label, '')}]")
    return lines
