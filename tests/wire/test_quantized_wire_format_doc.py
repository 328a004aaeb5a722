"""docs/wire-format.md §4.8 (``qsgd``) and its §6 rules are precise enough to write a codec
from: this file is that codec, written from the document alone (``struct``, plain Python
integers and NumPy; nothing from ``hpcgrad.kernels`` or ``hpcgrad.wire.codecs``).

The tests decode every message that real 5-rank ``qsgd`` and ``dq-sgd`` runs recorded,
recompute the server's mean bit for bit, re-encode the quantized downlink from the documented
coins byte for byte, and recompute the logged bytes, widths and gradient norms; and check on
random vectors that hpcgrad's kernels and this codec agree byte for byte.
"""

from __future__ import annotations

import json
import math
import struct

import h5py
import numpy as np
import pytest
from mpirun import read_each
from test_wire_format_doc import FIELDS, HEADER, HEADER_BYTES, MAGIC, DocFormatError

FP32, QSGD = 1, 7
MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


# ============================================================ the codec, from the document

def mix(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def doc_key(seed: int, step: int, rank: int) -> int:
    k = mix((seed + GOLDEN) & MASK64)
    k = mix(((k ^ step) + GOLDEN) & MASK64)
    return mix(((k ^ rank) + GOLDEN) & MASK64)


def doc_uniform(key: int, i: int) -> float:
    return (mix((key + (i + 1) * GOLDEN) & MASK64) >> 11) * 2.0 ** -53


def doc_norm(v) -> np.float32:
    acc = 0.0
    for x in np.asarray(v, dtype=np.float32).astype(np.float64):
        acc += x * x
    r64 = math.sqrt(acc)
    r = np.float32(r64)
    if float(r) < r64:
        r = np.nextafter(r, np.float32(np.inf))
    return r


def doc_body_length(segments, b: int) -> int:
    return 4 * sum(segments) if b == 0 else 4 * len(segments) + sum(
        math.ceil(b * n / 8) for n in segments)


def doc_encode_qsgd(values, segments, b: int, key: int) -> bytes:
    values = np.asarray(values, dtype=np.float32)
    s = 2 ** (b - 1) - 1
    norms, sections, start = [], [], 0
    for n in segments:
        v = values[start:start + n]
        r = doc_norm(v)
        norms.append(r)
        bits = []
        for j, x in enumerate(v.astype(np.float64)):
            level = 0
            if r > 0 and x != 0:
                t = float(s) * abs(x) / float(r)
                level = math.floor(t)
                if level >= s:
                    level = s
                elif doc_uniform(key, start + j) < t - level:
                    level += 1
            field = level | ((1 if (x < 0 and level > 0) else 0) << (b - 1))
            bits.extend((field >> k) & 1 for k in range(b))
        section = bytearray(math.ceil(len(bits) / 8))
        for j, bit in enumerate(bits):
            section[j // 8] |= bit << (j % 8)
        sections.append(bytes(section))
        start += n
    return b"".join(struct.pack("<f", r) for r in norms) + b"".join(sections)


def doc_decode_qsgd(body: bytes, d: int, flags: int, segments) -> np.ndarray:
    b, nxt = flags & 0x1F, (flags >> 8) & 0x1F
    if flags & ~0x1F1F or b == 1 or b > 16 or nxt == 1 or nxt > 16:
        raise DocFormatError("flags")
    if sum(segments) != d or len(body) != doc_body_length(segments, b):
        raise DocFormatError("length")
    if b == 0:
        return np.frombuffer(body, "<f4").astype(np.float32)
    s = np.float32(2 ** (b - 1) - 1)
    norms = struct.unpack_from(f"<{len(segments)}f", body, 0)
    pos, out, start = 4 * len(segments), np.zeros(d, np.float32), 0
    for n, r in zip(segments, norms):
        r = np.float32(r)
        if not np.isfinite(r) or r < 0 or math.copysign(1, r) < 0:
            raise DocFormatError("norm")
        nbytes = math.ceil(b * n / 8)
        stream = int.from_bytes(body[pos:pos + nbytes], "little")
        if stream >> (b * n):
            raise DocFormatError("padding bits")
        scale = np.float32(r / s)
        for j in range(n):
            field = (stream >> (b * j)) & ((1 << b) - 1)
            level, negative = field & ((1 << (b - 1)) - 1), field >> (b - 1)
            if negative and not level:
                raise DocFormatError("negative zero level")
            value = np.float32(np.float32(level) * scale)
            out[start + j] = -value if negative else value
        pos += nbytes
        start += n
    return out


def doc_decode(message: bytes, segments):
    header = dict(zip(FIELDS, HEADER.unpack_from(message, 0)))
    if header["magic"] != MAGIC or header["version"] != 1 or header["reserved"]:
        raise DocFormatError("header")
    if len(message) != HEADER_BYTES + header["body_length"]:
        raise DocFormatError("message length")
    body, d = message[HEADER_BYTES:], header["count"]
    if header["codec"] == QSGD:
        return header, doc_decode_qsgd(body, d, header["flags"], segments)
    if header["codec"] == FP32 and header["flags"] == 0 and len(body) == 4 * d:
        return header, np.frombuffer(body, "<f4").astype(np.float32)
    raise DocFormatError("codec")


def doc_mean(rows) -> np.ndarray:
    acc = rows[0].copy()
    for row in rows[1:]:
        acc = (acc + row).astype(np.float32)
    return (acc / np.float32(len(rows))).astype(np.float32)


def doc_width(s: float, lo: int, hi: int) -> int:
    b = 1
    while (1 << (b - 1)) - 1 < s:
        b += 1
    return max(lo, min(b, hi))


# ============================================================ real runs

ITERATIONS, RECORDED, RANKS = 6, 3, 5
RUNS = {"qsgd": ["--algorithm", "qsgd", "--bits", "3"],
        "dq-sgd": ["--algorithm", "dq-sgd", "--quantize-downlink", "--dq-start-bits", "3",
                   "--dq-window", "2", "--dq-rho", "0.9", "--seed", "3"],
        "dq-sgd-fp32-down": ["--algorithm", "dq-sgd", "--dq-start-bits", "3", "--seed", "3"],
        "terngrad": ["--algorithm", "terngrad"]}
#: The runs of the QSGD family's own test (terngrad has its own below).
QSGD_RUNS = ["qsgd", "dq-sgd", "dq-sgd-fp32-down"]

SETUP_TIMEOUT = 400  # the decoder tests' one 5-rank job (conftest.py), counted against a test


def _args(work, extra):
    log = work / "run.h5"
    return [*extra, "--iterations", str(ITERATIONS), "--record-messages",
            str(RECORDED), "--hidden", "24", "--log", str(log), "--quiet"]


def _read(work, proc):
    assert proc.returncode == 0, proc.stderr
    with h5py.File(work / "run.h5", "r") as f:
        return {"attrs": dict(f.attrs), **{k: f["steps"][k][...] for k in f["steps"]},
                **{f"m_{k}": f["messages"][k][...] for k in f["messages"]}}


@pytest.fixture(scope="module")
def runs(doc_runs5):
    """Every run of RUNS, from the one 5-rank job of the decoder tests (tests/wire/conftest.py),
    as futures: a run that failed fails only the tests that read it."""
    return read_each(doc_runs5, __name__, RUNS, _read)


@pytest.mark.timeout(SETUP_TIMEOUT + 60)
@pytest.mark.parametrize("name", QSGD_RUNS)
def test_recorded_messages_decode_to_the_server_mean_and_the_logged_figures(runs, name):
    run = runs[name].result()
    attrs, config = run["attrs"], json.loads(run["attrs"]["config"])
    d, segments = int(attrs["num_params"]), json.loads(attrs["segments"])
    assert sum(segments) == d
    up_bytes, down_bytes = run["m_uplink_bytes"].tobytes(), run["m_downlink_bytes"].tobytes()
    for i, step in enumerate(run["m_iteration"]):
        b = int(run["bits"][step])
        rows, norms = [], []
        for w, (offset, length) in enumerate(run["m_uplink_index"][i]):
            message = up_bytes[offset: offset + length]
            header, values = doc_decode(message, segments)
            assert (header["codec"], header["step"], header["sender"]) == (QSGD, step, w + 1)
            assert header["flags"] == b  # width in bits 0-4, no next width on an uplink
            # bytes_up = header + one fp32 norm per tensor + ceil(b d_l / 8) per tensor
            assert length == run["bytes_up"][step, w] == HEADER_BYTES + 4 * len(segments) + sum(
                math.ceil(b * n / 8) for n in segments)
            tensor_norms = struct.unpack_from(f"<{len(segments)}f", message, HEADER_BYTES)
            norms.append(math.sqrt(sum(float(r) ** 2 for r in tensor_norms)))
            rows.append(values)
        assert run["grad_norm"][step] == pytest.approx(sum(norms) / len(norms), rel=1e-12)
        mean = doc_mean(rows)
        offset, length = run["m_downlink_index"][i]
        message = down_bytes[offset: offset + length]
        header, down = doc_decode(message, segments)
        assert (header["step"], header["sender"]) == (step, 0)
        assert length == run["bytes_down"][step]
        nxt = header["flags"] >> 8
        if name == "qsgd":
            assert header["codec"] == FP32 and header["flags"] == 0
            assert down.tobytes() == mean.tobytes()  # bit for bit
            assert run["bits_down"][step] == 32 and b == 3
        elif name == "dq-sgd-fp32-down":  # qsgd at b = 0: the fp32 mean, carrying next
            assert header["codec"] == QSGD and header["flags"] & 0x1F == 0
            assert length == HEADER_BYTES + 4 * d and run["bits_down"][step] == 32
            assert down.tobytes() == mean.tobytes()  # bit for bit
            assert nxt == run["bits"][step + 1]
        else:
            assert header["codec"] == QSGD and header["flags"] & 0x1F == b
            assert run["bits_down"][step] == b
            # the server's re-quantization, from the documented coins (rank 0)
            body = doc_encode_qsgd(mean, segments, b, doc_key(config["seed"], int(step), 0))
            assert message[HEADER_BYTES:] == body
            assert nxt == run["bits"][step + 1]  # announced here, used at the next step
    if name == "dq-sgd":
        # The width rule on the logged norms: lambda calibrated at step 0 to start-bits 3.
        rho, horizon, window = config["dq_rho"], config["dq_horizon"], config["dq_window"]
        assert horizon == ITERATIONS and run["bits"][0] == 3
        g = run["grad_norm"]
        lam = (2 ** 1.5 - 1) / (g[0] * rho ** ((horizon - 1) / 2))
        for n in range(ITERATIONS - 1):
            smoothed = np.mean(g[max(0, n - window + 1): n + 1])
            s = lam * smoothed * rho ** ((horizon - 1 - (n + 1)) / 2)
            assert run["bits"][n + 1] == doc_width(s, config["min_bits"], config["max_bits"])


@pytest.mark.timeout(SETUP_TIMEOUT + 60)
def test_terngrad_messages_decode_as_two_bit_qsgd_with_the_max_scale(runs):
    """docs/algorithms/terngrad.md §2 and wire format §6: a TernGrad uplink is a ``qsgd`` body
    at b = 2 whose norm field holds the tensor's scale s_l = max |g_i| (after clipping), so
    every field decodes to 0 or +-s_l and the largest entry (taken with probability 1) is
    always sent; the downlink is the fp32 mean, bit for bit."""
    run = runs["terngrad"].result()
    attrs = run["attrs"]
    d, segments = int(attrs["num_params"]), json.loads(attrs["segments"])
    assert (attrs["uplink_codec"], attrs["downlink_codec"]) == ("qsgd", "fp32")
    assert sum(segments) == d and len(segments) > 1
    up_bytes, down_bytes = run["m_uplink_bytes"].tobytes(), run["m_downlink_bytes"].tobytes()
    offsets = np.concatenate([[0], np.cumsum(segments)])
    for i, step in enumerate(run["m_iteration"]):
        rows = []
        for w, (offset, length) in enumerate(run["m_uplink_index"][i]):
            message = up_bytes[offset: offset + length]
            header, values = doc_decode(message, segments)
            assert (header["codec"], header["flags"], header["sender"]) == (QSGD, 2, w + 1)
            assert length == run["bytes_up"][step, w] == HEADER_BYTES + doc_body_length(
                segments, 2)
            scales = struct.unpack_from(f"<{len(segments)}f", message, HEADER_BYTES)
            for l, scale in enumerate(scales):
                part = np.abs(values[offsets[l]: offsets[l + 1]])
                assert set(np.unique(part).tolist()) <= {0.0, np.float32(scale)}
                assert scale == 0 or part.max() == np.float32(scale)
            rows.append(values)
        offset, length = run["m_downlink_index"][i]
        header, down = doc_decode(down_bytes[offset: offset + length], segments)
        assert (header["codec"], header["flags"], header["sender"]) == (FP32, 0, 0)
        assert down.tobytes() == doc_mean(rows).tobytes()  # bit for bit


# ============================================================ hpcgrad == the document

from hpcgrad.wire import codecs as hp_codecs  # noqa: E402
from hpcgrad.errors import WireFormatError  # noqa: E402
from hpcgrad.kernels import quantize as hp_quantize  # noqa: E402


def _hp_encode(values, segments, b, key):
    offsets = np.concatenate([[0], np.cumsum(segments)]).astype(np.int64)
    out = np.zeros(doc_body_length(segments, b) + 16, dtype=np.uint8)
    norms = np.zeros(len(segments), dtype=np.float32)
    length = hp_codecs.encode_qsgd(np.asarray(values, np.float32), offsets, b,
                                   np.uint64(key), out, norms)
    return bytes(out[:length])


@pytest.mark.parametrize("segments", [[1], [7], [3, 5], [64, 1, 13], [100, 9]])
@pytest.mark.parametrize("b", [2, 3, 4, 5, 7, 8, 11, 16])
def test_qsgd_bytes_match_the_document(segments, b):
    rng = np.random.default_rng(b * 100 + len(segments))
    values = rng.standard_normal(sum(segments)).astype(np.float32)
    values[rng.random(values.size) < 0.2] = 0  # exact zeros, and -0.0
    values[::11] *= -0.0
    key = doc_key(5, b, len(segments))
    assert int(hp_quantize.stream_key(5, b, len(segments))) == key
    doc = doc_encode_qsgd(values, segments, b, key)
    assert _hp_encode(values, segments, b, key) == doc
    np.testing.assert_array_equal(
        hp_codecs.QSGD.decode(np.frombuffer(doc, np.uint8), values.size, b, segments),
        doc_decode_qsgd(doc, values.size, b, segments))


def test_the_documented_coins_and_worked_example():
    key = doc_key(0, 7, 2)
    assert key == 0x85895FFEE266F609 == int(hp_quantize.stream_key(0, 7, 2))
    assert [round(doc_uniform(key, i), 6) for i in range(5)] == WORKED_COINS
    body = doc_encode_qsgd(WORKED_VALUES, [3, 2], 3, key)
    assert body.hex(" ") == WORKED_BODY
    assert _hp_encode(WORKED_VALUES, [3, 2], 3, key) == body
    assert doc_decode_qsgd(body, 5, 3, [3, 2]).tolist() == WORKED_DECODED
    message = bytes.fromhex(WORKED_HEADER) + body
    header, values = hp_codecs.decode_message(message, segments=[3, 2])
    assert (header.codec, header.flags, header.step, header.sender) == (7, 3, 7, 2)
    assert values.tolist() == WORKED_DECODED


# Filled from docs/wire-format.md §4.8's worked example.
WORKED_VALUES = [0.5, -1.0, 0.0, 0.0, 2.0]
WORKED_COINS = [0.348954, 0.220055, 0.727967, 0.982707, 0.667667]
WORKED_BODY = "bd 1b 8f 3f 00 00 00 40 39 00 18"
WORKED_HEADER = "4850434701070300" "0500000000000000" "0b00000000000000" "0700000002000000"
WORKED_DECODED = [float(np.float32(1.118034) / np.float32(3)), -float(
    np.float32(3) * (np.float32(1.118034) / np.float32(3))), 0.0, 0.0, 2.0]


@pytest.mark.parametrize("mutate, reason", [
    (lambda b: b[:4] + struct.pack("<f", math.inf) + b[8:], "norm is not finite"),
    (lambda b: b[:4] + struct.pack("<f", math.nan) + b[8:], "norm is not finite"),
    (lambda b: struct.pack("<f", -1.0) + b[4:], "norm is negative"),
    (lambda b: struct.pack("<f", -0.0) + b[4:], "norm is negative"),
    (lambda b: b[:8] + bytes([b[8] | 0x20]) + b[9:], "zero level has its sign bit"),
    (lambda b: b[:-1] + bytes([b[-1] | 0x80]), "padding bits"),
    (lambda b: b + b"\x00", "does not match"),
    (lambda b: b[:-1], "does not match"),
])
def test_corrupt_qsgd_bodies_are_named_by_both(mutate, reason):
    # 2 tensors [3, 2] at b = 3: norms, then 9 bits (2 bytes) and 6 bits (1 byte).
    good = doc_encode_qsgd([0.5, 0.0, 0.0, 0.0, 2.0], [3, 2], 3, doc_key(0, 0, 1))
    assert good[8] & 0x38 == 0  # field 1 of tensor 0 (bits 3-5) is level 0, sign 0
    bad = mutate(good)
    with pytest.raises(WireFormatError, match=reason):
        hp_codecs.QSGD.decode(np.frombuffer(bad, np.uint8), 5, 3, [3, 2])
    with pytest.raises(DocFormatError):
        doc_decode_qsgd(bad, 5, 3, [3, 2])


@pytest.mark.parametrize("flags", [1, 17, 0x20, 0x0103, 0x1103, 0x8003])
def test_bad_qsgd_flags_are_refused_by_both(flags):
    body = np.zeros(doc_body_length([5], 3), np.uint8)
    with pytest.raises(WireFormatError, match="name no width"):
        hp_codecs.QSGD.decode(body, 5, flags, [5])
    with pytest.raises(DocFormatError):
        doc_decode_qsgd(bytes(body), 5, flags, [5])
