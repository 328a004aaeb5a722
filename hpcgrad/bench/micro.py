"""Kernel micro-benchmarks against ``np.copyto`` of the fp32 input, in one process.

Every kernel is timed interleaved with the copy (one round = copy, then each
kernel once), ``repeat`` rounds (three for the slow NumPy reference paths),
medians reported, so that a change in the machine's load hits the reference
and the kernels alike.  Before each timed call (the copy's too) every cache
line of a 64 MiB scratch buffer is touched, so that every kernel reads its
input from memory, not from a cache the previous kernel warmed (at d = 25.6M,
M = 4 the messages would fit in a 32 MB L3).  In the exchange the messages
have just been received and may be warmer, so these figures are conservative.

Figures (ratios are dimensionless, so they compare across machines):

* ``pack_vs_copy`` -- time of ``np.copyto`` of d fp32 values / time of the fused
  sign pack of the same values (>= 1.5 is the target; its limit is about 2: the
  pack reads the 4·d bytes and writes only d/8).  Context: ``np.packbits(x < 0)``.
* ``vote_vs_floor`` -- time of the majority vote over M packed messages / its
  memory floor, reading M·ceil(d/8) bytes at the copy bandwidth, where the copy
  bandwidth is the bytes copied per second (4·d / copy time) (<= 3 is the
  target).  Context: the blocked kernel (counter planes in L1, used for M > 16)
  and the NumPy unpack-and-sum reference.
* ``decode_vs_copy`` -- copy time / time of the fused decode + update
  ``x <- x - lr*(±1 + wd*x)`` from the packed downlink (it reads and writes the
  4·d bytes of x like the copy, plus d/8).
* ``worker_steps`` -- each compressing algorithm's worker step (its whole encode) / copy
  time, fused and (context) through the reference path (:mod:`.worker_steps`).
* ``server`` -- each server aggregate (fp32, fp16, qsgd 4 bits, scaled-sign: decode M
  bodies and average in one pass) against its memory floor, M bodies read at the copy
  bandwidth (<= 2 is the target); context: the worker-by-worker path it replaced
  (:mod:`.server_kernels`).
"""

from __future__ import annotations

import numpy as np

from . import server_kernels
from .common import machine, median

COPY = "copy"
EVICT_BYTES = 64 * 2**20


def _packed_rows(d: int, workers: int, seed: int, header: int = 32):
    """M packed sign messages in transport-like slots (header gap, 8-byte aligned)."""
    from ..wire import round_up
    body = round_up((d + 7) // 8)
    slot = header + body
    raw = np.random.default_rng(seed).integers(0, 256, workers * slot, dtype=np.uint8)
    rows = raw.reshape(workers, slot)[:, header:]
    rows[:, (d + 7) // 8:] = 0
    if d % 8:
        rows[:, (d + 7) // 8 - 1] &= (1 << (d % 8)) - 1
    return rows


def memory_needed(d: int, workers=(4, 8), context: bool = True) -> int:
    """Bytes the micro-benchmark allocates at its peak (for the memory check)."""
    m = max(workers, default=1)
    need = 4 * d * 4 + 2 * d + (m + 4) * (d // 8 + 64) + EVICT_BYTES
    # x, y, params, momentum, fp16 copy, rows, outputs, scratch
    if context:
        need += m * d * 5  # unpack-and-sum: M·d unpacked bytes and their int32 sums
    from . import worker_steps
    need += worker_steps.BYTES_PER_PARAM * d  # one algorithm's worker state at a time
    return need + server_kernels.memory_needed(d, min(workers, default=1))


def run(d: int, workers=(4, 8), repeat: int = 9, context: bool = True, seed: int = 0) -> dict:
    """Time every kernel; returns the figures (see the module docstring)."""
    from ..kernels import cpu, generic
    from ..kernels.generic import TIE_POSITIVE, TIE_RANDOM, TIE_ZERO
    from ..wire import round_up

    cpu.warm_up()
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(d, dtype=np.float32)
    y = np.empty_like(x)
    params = rng.standard_normal(d, dtype=np.float32)
    momentum = np.zeros_like(x)
    x16 = x.astype(np.float16)
    out = np.zeros(round_up((d + 7) // 8), dtype=np.uint8)
    nz = np.zeros_like(out)
    tie_bits = rng.integers(0, 256, out.size, dtype=np.uint8)
    lr, wd = np.float32(1e-6), np.float32(1e-4)
    beta, omb = np.float32(0.9), np.float32(0.1)

    kernels = {
        COPY: lambda: np.copyto(y, x),
        "pack": lambda: cpu.sign_pack(x, out),
        "momentum_pack": lambda: cpu.momentum_sign_pack(x, momentum, beta, omb, out),
        "decode_update": lambda: cpu.apply_sign_update(params, out, lr, wd),
    }
    try:
        cpu.sign_pack(x16[:64], out)
        kernels["pack_fp16"] = lambda: cpu.sign_pack(x16, out)
    except Exception:  # noqa: BLE001 -- a Numba without float16 support: leave it out
        pass
    vote_rows = {}
    for m in workers:
        rows = vote_rows[m] = _packed_rows(d, m, seed + m)
        kernels[f"vote_{m}"] = (lambda rows=rows: cpu.majority_vote(
            rows, d, TIE_POSITIVE, tie_bits, out, nz))
        kernels[f"vote_{m}_zero"] = (lambda rows=rows: cpu.majority_vote(
            rows, d, TIE_ZERO, tie_bits, out, nz))
        kernels[f"vote_{m}_random"] = (lambda rows=rows: cpu.majority_vote(
            rows, d, TIE_RANDOM, tie_bits, out, nz))
        nwords = (d + 63) // 64
        words = rows[:, : nwords * 8].view(np.uint64)
        kernels[f"vote_{m}_blocked"] = (lambda words=words: cpu._vote_words(
            words, d, TIE_POSITIVE, out.view(np.uint64), out.view(np.uint64),
            out.view(np.uint64)))
    server = server_kernels.entries(d, workers[0], seed)
    for name, (fused, _, _) in server.items():
        kernels[f"server_{name}"] = fused
    slow = {}
    if context:
        for name, (_, unfused, _) in server.items():
            slow[f"server_{name}_unfused"] = unfused
        slow["numpy_packbits"] = lambda: np.packbits(x < 0, bitorder="little")
        slow["numpy_decode_update"] = lambda: generic.apply_sign_update(params, out, lr, wd)
        for m in workers:
            slow[f"vote_{m}_unpack_sum"] = (lambda rows=vote_rows[m]: generic.majority_vote(
                rows, d, TIE_POSITIVE, tie_bits, out, nz))

    for fn in list(kernels.values()) + list(slow.values()):
        fn()  # compile, fault pages in
    times = {name: [] for name in list(kernels) + list(slow)}
    import time
    scratch = np.zeros(EVICT_BYTES // 8)  # larger than the last-level cache

    def evict():  # every timed call starts from memory, not from a warm cache
        scratch[::8] += 1.0  # touches every 64-byte line

    for r in range(repeat):
        for name, fn in list(kernels.items()) + (list(slow.items()) if r < 3 else []):
            evict()
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    t = {name: median(v) for name, v in times.items()}
    copy = t[COPY]
    bandwidth = 4 * d / copy  # bytes copied per second
    packed = (d + 7) // 8
    result = {
        "params": d, "repeat": repeat, "seconds": t,
        "copy_bandwidth_bytes_per_s": bandwidth,
        "pack_vs_copy": copy / t["pack"],
        "momentum_pack_vs_copy": copy / t["momentum_pack"],
        "decode_vs_copy": copy / t["decode_update"],
        "vote": {},
        "machine": machine(),
    }
    if "pack_fp16" in t:
        result["pack_fp16_vs_copy"] = copy / t["pack_fp16"]
    if "numpy_packbits" in t:
        result["numpy_packbits_vs_copy"] = copy / t["numpy_packbits"]
        result["numpy_decode_update_vs_copy"] = copy / t["numpy_decode_update"]
    for m in workers:
        floor = m * packed / bandwidth
        v = {"workers": m, "floor_s": floor,
             "vote_vs_floor": t[f"vote_{m}"] / floor,
             "zero_tie_vs_floor": t[f"vote_{m}_zero"] / floor,
             "random_tie_vs_floor": t[f"vote_{m}_random"] / floor,
             "blocked_vs_floor": t[f"vote_{m}_blocked"] / floor}
        if f"vote_{m}_unpack_sum" in t:
            v["speedup_vs_unpack_sum"] = t[f"vote_{m}_unpack_sum"] / t[f"vote_{m}"]
        result["vote"][str(m)] = v
    result["server"] = server_kernels.figures(t, workers[0], bandwidth,
                                              {n: size for n, (_, _, size) in server.items()})
    first = str(workers[0])
    result["vote_workers"] = workers[0]
    result["vote_vs_floor"] = result["vote"][first]["vote_vs_floor"]
    from . import worker_steps
    result["worker_steps"] = worker_steps.run(d, repeat, context)
    return result


def report(result: dict) -> str:
    """The figures as a few aligned lines."""
    t = result["seconds"]
    ms = lambda s: f"{1e3 * s:9.3f} ms"  # noqa: E731
    lines = [f"kernels, d = {result['params']:,} (median of {result['repeat']} interleaved rounds)",
             f"  np.copyto fp32           {ms(t[COPY])}   "
             f"({result['copy_bandwidth_bytes_per_s'] / 1e9:.2f} GB/s copied)",
             f"  sign pack fp32 (fused)   {ms(t['pack'])}   {result['pack_vs_copy']:.2f}x copy"
             "  (target >= 1.5x)"]
    if "pack_fp16" in t:
        lines.append(f"  sign pack fp16 (fused)   {ms(t['pack_fp16'])}   "
                     f"{result['pack_fp16_vs_copy']:.2f}x copy")
    lines.append(f"  momentum + sign pack     {ms(t['momentum_pack'])}   "
                 f"{result['momentum_pack_vs_copy']:.2f}x copy")
    if "numpy_packbits" in t:
        lines.append(f"  np.packbits(x < 0)       {ms(t['numpy_packbits'])}   "
                     f"{result['numpy_packbits_vs_copy']:.2f}x copy  (context)")
    lines.append(f"  decode + update (fused)  {ms(t['decode_update'])}   "
                 f"{result['decode_vs_copy']:.2f}x copy")
    if "numpy_decode_update" in t:
        lines.append(f"  NumPy decode + update    {ms(t['numpy_decode_update'])}   "
                     f"{result['numpy_decode_update_vs_copy']:.2f}x copy  (context)")
    for m, v in result["vote"].items():
        lines.append(f"  vote M={m:<3s} (unrolled)    {ms(t[f'vote_{m}'])}   "
                     f"{v['vote_vs_floor']:.2f}x floor ({ms(v['floor_s']).strip()})  "
                     f"(target <= 3x); tie zero {v['zero_tie_vs_floor']:.2f}x, "
                     f"random {v['random_tie_vs_floor']:.2f}x")
        lines.append(f"  vote M={m:<3s} (blocked)     {ms(t[f'vote_{m}_blocked'])}   "
                     f"{v['blocked_vs_floor']:.2f}x floor  (kernel for M > 16)")
        if "speedup_vs_unpack_sum" in v:
            lines.append(f"  vote M={m:<3s} unpack+sum    {ms(t[f'vote_{m}_unpack_sum'])}   "
                         f"unrolled is {v['speedup_vs_unpack_sum']:.1f}x faster  (context)")
    if "worker_steps" in result:
        from . import worker_steps
        lines += worker_steps.report(result["worker_steps"])
    if "server" in result:
        lines += server_kernels.report_lines(result["server"], ms)
    return "\n".join(lines)
