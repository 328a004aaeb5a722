"""``hpcgrad bench sparse``: S3GD-MV's codec and selection, in one process.

For each d and density: uplink bits per entry against the entropy bound
log2 C(d, K)/K (+ 1 sign bit; target: within 0.2 bits); encode and decode
throughput of the position coder against ``np.copyto`` of the same fp32
array measured in the same run; and exact / threshold top-K against
``numpy.argpartition`` and ``torch.topk`` on the same input.
"""

from __future__ import annotations

import math

import numpy as np

from .common import check_fits, machine, machine_line, median, time_calls

TARGET_EXCESS_BITS = 0.2


def entropy_bits(d: int, k: int) -> float:
    """log2 C(d, k)."""
    return (math.lgamma(d + 1) - math.lgamma(k + 1) - math.lgamma(d - k + 1)) / math.log(2)


def measure(d: int, density: float, repeat: int, seed: int = 0) -> dict:
    import torch

    from ..wire import codecs
    from ..kernels.sparse import positions as bitstream
    from ..compression.selection import TopK

    k = max(1, int(round(density * d)))
    rng = np.random.default_rng(seed)
    values = rng.standard_normal(d, dtype=np.float32)
    copy = np.empty_like(values)
    t_copy = median(time_calls(lambda: np.copyto(copy, values), repeat))

    positions = np.zeros(k, dtype=np.int64)
    negative = np.zeros(k, dtype=np.uint8)
    exact = TopK(0, d, k, "exact")
    t_exact = median(time_calls(lambda: exact.select(values, positions, negative, 0), repeat))
    n = exact.select(values, positions, negative, 0)
    cap = int(k * 1.1) + 1
    pos_t, neg_t = np.zeros(cap, dtype=np.int64), np.zeros(cap, dtype=np.uint8)
    fast = TopK(0, d, k, "threshold")
    t_threshold = median(time_calls(lambda: fast.select(values, pos_t, neg_t, 0), repeat))
    n_fast = fast.select(values, pos_t, neg_t, 0)
    recall = len(np.intersect1d(pos_t[:n_fast], positions[:n])) / n
    magnitudes = np.abs(values)
    t_argpartition = median(time_calls(lambda: np.argpartition(magnitudes, d - k), repeat))
    tensor = torch.from_numpy(values)
    t_topk = median(time_calls(lambda: torch.topk(tensor.abs(), k, sorted=False), repeat))

    body = np.zeros(codecs.SPARSE_SIGN.max_body_length(d) + 8, dtype=np.uint8)

    def encode():
        body[:] = 0
        return codecs.encode_sparse_ternary(positions, negative, n, d, body)

    codec_id, flags, length = encode()
    t_encode = median(time_calls(encode, repeat))
    # the zeroing is part of the encoder's cost in the runtime too (only the last length)
    out_pos, out_neg = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.uint8)
    view = body[:length]
    t_decode = median(time_calls(
        lambda: codecs.SPARSE_SIGN.decode_into(view, d, flags, out_pos, out_neg), repeat))
    assert (out_pos == positions[:n]).all()
    bound = entropy_bits(d, n) / n
    bits = 8 * length / n
    return {
        "params": d, "density": density, "k": n,
        "coding": bitstream.CODING_NAMES[flags & 0xFF], "rice_k": flags >> 8,
        "bits_per_entry": bits, "entropy_bits_per_entry": bound + 1,
        "excess_bits": bits - bound - 1, "meets_target": bits <= bound + 1 + TARGET_EXCESS_BITS,
        "raw32_bits_per_entry": 33.0,
        "copy_s": t_copy, "encode_s": t_encode, "decode_s": t_decode,
        "encode_vs_copy": t_copy / t_encode, "decode_vs_copy": t_copy / t_decode,
        "exact_s": t_exact, "threshold_s": t_threshold, "argpartition_s": t_argpartition,
        "torch_topk_s": t_topk, "threshold_k": n_fast, "threshold_recall": recall,
        "threshold_passes": fast.passes,
        "exact_vs_argpartition": t_argpartition / t_exact,
        "threshold_vs_argpartition": t_argpartition / t_threshold,
        "threshold_vs_torch_topk": t_topk / t_threshold,
    }


def run(sizes, densities, repeat: int) -> dict:
    from .common import available_memory
    for d in sizes:
        # values, copy, |values|, argpartition's int64 result, torch's abs, body
        check_fits(d * (4 * 4 + 8 + 1), available_memory(), f"bench sparse at d = {d:,}",
                   "choose a smaller --params")
    rows = [measure(d, density, repeat) for d in sizes for density in densities]
    return {"machine": machine(), "results": rows}


def report(figures: dict) -> str:
    lines = [f"machine: {machine_line(figures['machine'])}",
             "speed ratios > 1 mean faster than the baseline named in the column",
             f"{'d':>11} {'density':>7} {'K':>8} {'coding':>8} {'bits/entry':>10} "
             f"{'bound+1':>8} {'excess':>7} {'enc/copy':>8} {'dec/copy':>8} "
             f"{'exact/argp':>10} {'thr/argp':>8} {'thr/topk':>8} {'recall':>6}"]
    for r in figures["results"]:
        lines.append(
            f"{r['params']:>11,} {r['density']:>7.2%} {r['k']:>8,} {r['coding']:>8} "
            f"{r['bits_per_entry']:>10.3f} {r['entropy_bits_per_entry']:>8.3f} "
            f"{r['excess_bits']:>+7.3f} {r['encode_vs_copy']:>8.2f} {r['decode_vs_copy']:>8.2f} "
            f"{r['exact_vs_argpartition']:>10.2f} {r['threshold_vs_argpartition']:>8.2f} "
            f"{r['threshold_vs_torch_topk']:>8.2f} {r['threshold_recall']:>6.3f}")
    met = all(r["meets_target"] for r in figures["results"])
    lines.append(f"uplink bits per entry within {TARGET_EXCESS_BITS} of log2 C(d,K)/K + 1: "
                 f"{'yes' if met else 'NO'} at every size")
    return "\n".join(lines)
