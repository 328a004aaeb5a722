"""The server's aggregate kernels for ``bench micro``: each fused decode-and-average
(``hpcgrad/kernels/fused_server.py``) against its memory floor and, for context, the
worker-by-worker path it replaced.

The **memory floor** of an aggregate is reading the M received bodies once at the copy
bandwidth of the same run (bytes copied per second by ``np.copyto``): ``M * body bytes /
bandwidth``; the target is <= 2x.  The bodies sit in transport-like slots (one row per
worker, 8-byte aligned), built by the codecs' own kernels from Gaussian gradients.
"""

from __future__ import annotations

import numpy as np

#: name -> (label, body bytes per coordinate)
ENTRIES = {"fp32": ("fp32-ps mean", 4.0), "fp16": ("fp16-ps mean", 2.0),
           "qsgd4": ("qsgd mean, 4 bits", 0.5), "scaled_sign": ("scaled-sign mean", 0.125)}


def memory_needed(d: int, workers: int) -> int:
    """Bytes :func:`entries` allocates: the bodies of every entry and two outputs."""
    return int(workers * d * sum(b for _, b in ENTRIES.values()) + 3 * 4 * d)


def _rows(workers: int, nbytes: int) -> np.ndarray:
    from ..wire import round_up
    return np.zeros((workers, round_up(nbytes) + 8), dtype=np.uint8)


def entries(d: int, workers: int, seed: int = 0):
    """``{name: (fused, unfused, body_bytes)}``: two callables each computing the mean of
    ``workers`` bodies into an output of d floats, and one body's size."""
    from ..kernels import cpu, fused_server, quantize

    rng = np.random.default_rng(seed)
    m, f32 = workers, np.float32(workers)
    out = np.zeros(d, dtype=np.float32)
    grads = [rng.standard_normal(d, dtype=np.float32) for _ in range(2)]

    fp32 = _rows(m, 4 * d)
    fp16 = _rows(m, 2 * d)
    for w in range(m):
        fp32[w, : 4 * d].view(np.float32)[...] = grads[w % 2]
        fp16[w, : 2 * d].view(np.float16)[...] = grads[w % 2]
    f32rows, f16rows = fp32[:, : 4 * d].view(np.float32), fp16[:, : 2 * d].view(np.uint16)

    def dense_unfused(values):
        np.copyto(out, values[0])
        for row in values[1:]:
            np.add(out, row, out=out)
        np.divide(out, f32, out=out)

    offsets = np.array([0, d], dtype=np.int64)
    bits, nbytes = 4, quantize.body_length([d], 4)
    qrows = _rows(m, nbytes)
    for w in range(m):
        quantize.quantize_pack(grads[w % 2], offsets, bits, quantize.stream_key(seed, 0, w + 1),
                               qrows[w, :4].view(np.float32), qrows[w, 4:])
    sections = np.array([0, nbytes - 4], dtype=np.int64)

    def qsgd_unfused():
        for w in range(m):
            quantize.dequantize(qrows[w, :4].view(np.float32), qrows[w, 4:], offsets, bits, out,
                                w > 0)
        np.divide(out, f32, out=out)

    words = (d + 63) // 64
    srows = _rows(m, 8 * words)
    srows[:, : 8 * words] = rng.integers(0, 256, (m, 8 * words), dtype=np.uint8)
    if d % 64:
        srows[:, 8 * words - 8: 8 * words].view(np.uint64)[:, 0] &= \
            np.uint64((1 << (d % 64)) - 1)
    lrs = -np.abs(rng.standard_normal(m)).astype(np.float32)

    def sign_unfused():
        out[...] = 0
        for w in range(m):
            cpu.apply_sign_update(out, srows[w], lrs[w], np.float32(0))
        np.divide(out, f32, out=out)

    return {
        "fp32": (lambda: fused_server.fp32_mean(f32rows, out, f32),
                 lambda: dense_unfused(f32rows), 4 * d),
        "fp16": (lambda: fused_server.fp16_mean(f16rows, out, f32),
                 lambda: dense_unfused(f16rows.view(np.float16)), 2 * d),
        "qsgd4": (lambda: fused_server.qsgd_mean(qrows[:, :4].view(np.float32), qrows[:, 4:],
                                                 offsets, sections, bits, out, f32),
                  qsgd_unfused, nbytes),
        "scaled_sign": (lambda: fused_server.sign_mean(srows.view(np.uint64), lrs, out, f32),
                        sign_unfused, 8 * words + 4),
    }


def figures(t: dict, workers: int, bandwidth: float, sizes: dict) -> dict:
    """Per entry: its time, floor, ratio to the floor and, where timed, the unfused time."""
    result = {}
    for name, size in sizes.items():
        floor = workers * size / bandwidth
        r = {"label": ENTRIES[name][0], "workers": workers, "seconds": t[f"server_{name}"],
             "floor_s": floor, "vs_floor": t[f"server_{name}"] / floor}
        if f"server_{name}_unfused" in t:
            r["unfused_s"] = t[f"server_{name}_unfused"]
            r["speedup_vs_unfused"] = r["unfused_s"] / r["seconds"]
        result[name] = r
    return result


def report_lines(result: dict, ms) -> list:
    lines = []
    for r in result.values():
        line = (f"  {r['label'] + ' M=' + str(r['workers']):24s} {ms(r['seconds'])}   "
                f"{r['vs_floor']:.2f}x floor ({ms(r['floor_s']).strip()})  (target <= 2x)")
        if "unfused_s" in r:
            line += (f"; worker by worker {ms(r['unfused_s']).strip()}, "
                     f"{r['speedup_vs_unfused']:.1f}x slower")
        lines.append(line)
    return lines
