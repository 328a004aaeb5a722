"""docs/wire-format.md is precise enough to write a decoder from: this file is that decoder.

``doc_encode`` / ``doc_decode`` below were written from the document alone (``struct`` and
NumPy; nothing from ``hpcgrad.wire``, ``hpcgrad.wire.codecs`` or ``hpcgrad.kernels``).  The tests

* decode every message a real 5-rank run recorded in its log (signum-mv with the default tie
  rule, ``--tie zero`` and ``--tie random``, fp32-ps, ef-sgd scaled-sign), check each header,
  recompute the server's downlink from the decoded uplinks (majority vote with the documented
  coins, or the fp32 mean bit for bit) and the logged byte counts;
* check, on random vectors, that hpcgrad's codecs and this decoder agree byte for byte, and
  that corrupted messages are rejected by both, hpcgrad naming the problem.

Not marked ``mpi``: the training tests launch ``mpiexec`` themselves from the serial suite.
"""

from __future__ import annotations

import re
import math
import struct
from pathlib import Path

import h5py
import numpy as np
import pytest
from mpirun import read_each
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp


DOC = Path(__file__).resolve().parents[2] / "docs" / "wire-format.md"


# =========================================================================== the decoder
# Everything in this section follows docs/wire-format.md only.

class DocFormatError(ValueError):
    """The independent decoder's rejection of a message."""


HEADER = struct.Struct("<4sBBHQQIHH")  # section 2, little-endian, 32 bytes
HEADER_BYTES = 32
MAGIC = b"HPCG"
FP32, FP16, SIGN1, TERNARY2, SCALED_SIGN = 1, 2, 3, 4, 9
FIELDS = ("magic", "version", "codec", "flags", "count", "body_length", "step", "sender",
          "reserved")


def planes_bytes(d: int) -> int:
    return (d + 7) // 8  # B = ceil(d/8)


def roundup8(n: int) -> int:
    return -(-n // 8) * 8


def doc_body_length(codec: int, d: int) -> int:
    """Section 3."""
    b = planes_bytes(d)
    lengths = {FP32: 4 * d, FP16: 2 * d, SIGN1: b, TERNARY2: roundup8(b) + b,
               SCALED_SIGN: b + 4}
    if codec not in lengths:
        raise DocFormatError(f"unknown codec id {codec}")
    return lengths[codec]


def _pack_plane(bits) -> bytes:
    """Section 4.3: element i -> byte i // 8, bit i % 8 from the LSB."""
    out = bytearray(planes_bytes(len(bits)))
    for i, bit in enumerate(bits):
        if bit:
            out[i // 8] |= 1 << (i % 8)
    return bytes(out)


def _unpack_plane(plane: bytes, d: int, name: str) -> list:
    if d % 8 and plane[-1] >> (d % 8):
        raise DocFormatError(f"{name}: padding bits set")
    return [(plane[i // 8] >> (i % 8)) & 1 for i in range(d)]


def doc_encode(codec: int, values, step: int, sender: int) -> bytes:
    """A whole message, from the document's rules."""
    v = np.asarray(values, dtype=np.float32)
    d = v.size
    if codec == FP32:
        body = v.astype("<f4").tobytes()
    elif codec == FP16:
        with np.errstate(over="ignore"):
            body = v.astype("<f2").tobytes()
    elif codec == SIGN1:
        body = _pack_plane([x < 0 for x in v])
    elif codec == SCALED_SIGN:  # section 4.10: the sign1 plane, then float32(sum|v| / d)
        scale = sum(abs(float(x)) for x in v) / d if d else 0.0
        body = _pack_plane([x < 0 for x in v]) + struct.pack("<f", scale)
    elif codec == TERNARY2:
        nonzero = _pack_plane([x != 0 for x in v])
        negative = _pack_plane([x < 0 for x in v])
        body = nonzero + bytes(roundup8(len(nonzero)) - len(nonzero)) + negative
    else:
        raise DocFormatError(f"unknown codec id {codec}")
    assert len(body) == doc_body_length(codec, d)
    return HEADER.pack(MAGIC, 1, codec, 0, d, len(body), step, sender, 0) + body


def doc_decode(message) -> tuple[dict, np.ndarray]:
    """Header fields and float32 values of one whole message; DocFormatError if invalid."""
    message = bytes(message)
    if len(message) < HEADER_BYTES:
        raise DocFormatError("shorter than the header")
    header = dict(zip(FIELDS, HEADER.unpack_from(message, 0)))
    if header["magic"] != MAGIC:
        raise DocFormatError("bad magic")
    if header["version"] != 1:
        raise DocFormatError("version")
    if header["reserved"] != 0:
        raise DocFormatError("reserved")
    codec, d = header["codec"], header["count"]
    if header["body_length"] != doc_body_length(codec, d):
        raise DocFormatError("body_length")
    if len(message) != HEADER_BYTES + header["body_length"]:
        raise DocFormatError("message length")
    if header["flags"] != 0:
        raise DocFormatError("flags")
    body = message[HEADER_BYTES:]
    if codec == FP32:
        values = np.frombuffer(body, dtype="<f4").astype(np.float32)
    elif codec == FP16:
        values = np.frombuffer(body, dtype="<f2").astype(np.float32)
    elif codec == SIGN1:
        values = np.array([-1.0 if bit else 1.0 for bit in _unpack_plane(body, d, "sign1")],
                          dtype=np.float32)
    elif codec == SCALED_SIGN:
        b = planes_bytes(d)
        (scale,) = struct.unpack_from("<f", body, b)
        if not (math.isfinite(scale) and scale >= 0):
            raise DocFormatError("scale")
        values = np.array([-scale if bit else scale
                           for bit in _unpack_plane(body[:b], d, "scaled-sign")],
                          dtype=np.float32)
    else:
        b = planes_bytes(d)
        stride = roundup8(b)
        nonzero = _unpack_plane(body[:b], d, "non-zero plane")
        if any(body[b:stride]):
            raise DocFormatError("bytes between the planes")
        negative = _unpack_plane(body[stride:], d, "negative plane")
        table = {(0, 0): 0.0, (1, 0): 1.0, (1, 1): -1.0}
        try:
            values = np.array([table[pair] for pair in zip(nonzero, negative)],
                              dtype=np.float32)
        except KeyError:
            raise DocFormatError("negative but not non-zero") from None
    return header, values


def message_length(codec: int, d: int) -> int:
    return HEADER_BYTES + doc_body_length(codec, d)


# =========================================================================== real runs

ITERATIONS, RECORDED, RANKS = 6, 3, 5
SETUP_TIMEOUT = 400  # the decoder tests' one 5-rank job (conftest.py), counted against a test


def _args(workdir: Path, extra: list) -> list:
    # 6 iterations with the default --flush-every 10: the log's one flush is a partial one.
    return ["--iterations", str(ITERATIONS), "--record-messages", str(RECORDED),
            "--log", str(workdir / "run.h5"), "--quiet", *extra]


def _read(workdir: Path, proc) -> dict:
    assert proc.returncode == 0, \
        f"{proc.args}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    with h5py.File(workdir / "run.h5", "r") as f:
        m = f["messages"]
        return {
            "attrs": dict(f.attrs),
            "bytes_up": f["steps/bytes_up"][...],
            "bytes_down": f["steps/bytes_down"][...],
            "iteration": m["iteration"][...],
            "up_index": m["uplink_index"][...],
            "up_bytes": m["uplink_bytes"][...].tobytes(),
            "down_index": m["downlink_index"][...],
            "down_bytes": m["downlink_bytes"][...].tobytes(),
        }


RUNS = {"signum": [], "signum-zero": ["--tie", "zero"], "fp32-ps": ["--algorithm", "fp32-ps"],
        "ef-scaled-sign": ["--algorithm", "ef-sgd", "--compressor", "scaled-sign"],
        "signum-random": ["--tie", "random", "--seed", "4"],
        "fp16-ps": ["--algorithm", "fp16-ps"]}


@pytest.fixture(scope="module")
def runs(doc_runs5):
    """Every run of RUNS, from the one 5-rank job of the decoder tests (tests/wire/conftest.py),
    as futures: a run that failed fails only the tests that read it."""
    return read_each(doc_runs5, __name__, RUNS, _read)


def _recorded(run) -> list:
    """[(iteration, [(worker rank, header, values)], (header, values), raw lengths)]."""
    out = []
    for i, iteration in enumerate(run["iteration"]):
        uplinks, lengths = [], []
        for w, (offset, length) in enumerate(run["up_index"][i]):
            raw = run["up_bytes"][offset: offset + length]
            uplinks.append((w + 1, *doc_decode(raw)))
            lengths.append(len(raw))
        offset, length = run["down_index"][i]
        raw = run["down_bytes"][offset: offset + length]
        out.append((int(iteration), uplinks, doc_decode(raw), lengths + [len(raw)]))
    return out


def _check_run(run, up_codec: int, down_codec: int) -> list:
    attrs = run["attrs"]
    d, workers = int(attrs["num_params"]), int(attrs["num_workers"])
    assert workers == RANKS - 1
    up_len, down_len = message_length(up_codec, d), message_length(down_codec, d)
    # Per-step byte counts: the exact MPI buffer lengths, every step, every worker.
    assert run["bytes_up"].shape == (ITERATIONS, workers)
    assert (run["bytes_up"] == up_len).all(), (run["bytes_up"], up_len)
    assert (run["bytes_down"] == down_len).all(), (run["bytes_down"], down_len)
    records = _recorded(run)
    assert [r[0] for r in records] == list(range(RECORDED))
    for iteration, uplinks, (down, _), lengths in records:
        assert lengths == [up_len] * workers + [down_len]
        assert [u[0] for u in uplinks] == list(range(1, workers + 1))
        for rank, header, values in uplinks:
            assert header["magic"] == MAGIC and header["version"] == 1
            assert header["codec"] == up_codec
            assert header["count"] == d == values.size
            assert header["body_length"] == up_len - HEADER_BYTES
            assert header["step"] == iteration
            assert header["sender"] == rank
            assert header["flags"] == 0 and header["reserved"] == 0
        assert down["codec"] == down_codec and down["count"] == d
        assert down["body_length"] == down_len - HEADER_BYTES
        assert down["step"] == iteration and down["sender"] == 0
        assert down["flags"] == 0 and down["reserved"] == 0
    return records


@pytest.mark.timeout(SETUP_TIMEOUT + 60)
def test_signum_default_tie_messages(runs):
    signum_run = runs["signum"].result()
    assert signum_run["attrs"]["uplink_codec"] == "sign1"
    assert signum_run["attrs"]["downlink_codec"] == "sign1"
    d = int(signum_run["attrs"]["num_params"])
    assert message_length(SIGN1, d) == 32 + -(-d // 8)
    ties = 0
    for _, uplinks, (_, down), _ in _check_run(signum_run, SIGN1, SIGN1):
        votes = np.stack([values for _, _, values in uplinks])
        assert set(np.unique(votes)) <= {-1.0, 1.0}
        total = votes.sum(axis=0)
        ties += int((total == 0).sum())
        np.testing.assert_array_equal(down, np.where(total < 0, -1.0, 1.0))  # tie -> +1
    assert ties > 0, "4 workers and no tied coordinate: the tie rule went untested"


@pytest.mark.timeout(SETUP_TIMEOUT + 60)
def test_signum_tie_zero_messages(runs):
    signum_zero_run = runs["signum-zero"].result()
    assert signum_zero_run["attrs"]["uplink_codec"] == "ternary2"
    assert signum_zero_run["attrs"]["downlink_codec"] == "ternary2"
    d = int(signum_zero_run["attrs"]["num_params"])
    b = -(-d // 8)
    assert message_length(TERNARY2, d) == 32 + roundup8(b) + b
    zeros = 0
    for _, uplinks, (_, down), _ in _check_run(signum_zero_run, TERNARY2, TERNARY2):
        votes = np.stack([values for _, _, values in uplinks])
        total = votes.sum(axis=0)
        zeros += int((down == 0).sum())
        np.testing.assert_array_equal(down, np.sign(total).astype(np.float32))
    assert zeros > 0, "no tied coordinate: the zero downlink went untested"


@pytest.mark.timeout(SETUP_TIMEOUT + 60)
def test_signum_random_tie_takes_the_documented_coin_bits(runs):
    """§6: a tied vote at coordinate i takes bit i % 8 (LSB first) of byte i // 8 of
    default_rng([seed, t, 0x7E]).bytes(ceil(d/8)); 1 = -1."""
    run = runs["signum-random"].result()
    d = int(run["attrs"]["num_params"])
    seed = int(run["attrs"]["seed"])
    ties = {-1.0: 0, 1.0: 0}
    for step, uplinks, (_, down), _ in _check_run(run, SIGN1, SIGN1):
        total = np.stack([values for _, _, values in uplinks]).sum(axis=0)
        coins = np.frombuffer(np.random.default_rng([seed, step, 0x7E]).bytes(-(-d // 8)),
                              dtype=np.uint8)
        coin = np.array([(coins[i // 8] >> (i % 8)) & 1 for i in range(d)])
        expected = np.where(total < 0, -1.0, np.where(total > 0, 1.0,
                                                      np.where(coin == 1, -1.0, 1.0)))
        np.testing.assert_array_equal(down, expected.astype(np.float32))
        for value in ties:
            ties[value] += int(((total == 0) & (down == value)).sum())
    assert min(ties.values()) > 0, f"ties broken both ways: {ties}"


@pytest.mark.timeout(SETUP_TIMEOUT + 60)
def test_fp32_ps_messages(runs):
    fp32_run = runs["fp32-ps"].result()
    assert fp32_run["attrs"]["uplink_codec"] == "fp32"
    d = int(fp32_run["attrs"]["num_params"])
    assert message_length(FP32, d) == 32 + 4 * d
    for _, uplinks, (_, down), _ in _check_run(fp32_run, FP32, FP32):
        mean = uplinks[0][2].copy()
        for _, _, values in uplinks[1:]:
            mean = (mean + values).astype(np.float32)
        mean = (mean / np.float32(len(uplinks))).astype(np.float32)
        assert mean.dtype == np.float32
        np.testing.assert_array_equal(down.view(np.uint32), mean.view(np.uint32))


def test_fp16_ps_messages(runs):
    """§6: the mean of the decoded (widened) fp16 uplinks in float32, rounded to binary16."""
    run = runs["fp16-ps"].result()
    assert run["attrs"]["uplink_codec"] == run["attrs"]["downlink_codec"] == "fp16"
    d = int(run["attrs"]["num_params"])
    assert message_length(FP16, d) == 32 + 2 * d
    for _, uplinks, (_, down), _ in _check_run(run, FP16, FP16):
        mean = uplinks[0][2].copy()
        for _, _, values in uplinks[1:]:
            mean = (mean + values).astype(np.float32)
        mean = (mean / np.float32(len(uplinks))).astype(np.float32)
        expected = mean.astype(np.float16).astype(np.float32)
        np.testing.assert_array_equal(down.view(np.uint32), expected.view(np.uint32))


def test_ef_sgd_scaled_sign_messages(runs):
    run = runs["ef-scaled-sign"].result()
    assert run["attrs"]["uplink_codec"] == "scaled-sign"
    d = int(run["attrs"]["num_params"])
    assert message_length(SCALED_SIGN, d) == 32 + -(-d // 8) + 4
    for _, uplinks, (_, down), _ in _check_run(run, SCALED_SIGN, FP32):
        mean = uplinks[0][2].copy()
        for _, _, values in uplinks[1:]:
            assert len(set(np.abs(values).tolist())) == 1  # one magnitude per message
            mean = (mean + values).astype(np.float32)
        mean = (mean / np.float32(len(uplinks))).astype(np.float32)
        np.testing.assert_array_equal(down.view(np.uint32), mean.view(np.uint32))


# =========================================================================== codecs vs the doc

from hpcgrad.wire import codecs as hp_codecs  # noqa: E402  (only the cross-checks use hpcgrad)
from hpcgrad import wire as hp_wire  # noqa: E402
from hpcgrad.errors import WireFormatError  # noqa: E402

#: A codec id no codec has, whatever codecs are added later (v1 leaves 10..255 unassigned).
UNASSIGNED = max(hp_codecs.CODECS) + 1

HP = {FP32: hp_codecs.FP32, FP16: hp_codecs.FP16, SIGN1: hp_codecs.SIGN1,
      TERNARY2: hp_codecs.TERNARY2, SCALED_SIGN: hp_codecs.SCALED_SIGN}


def hp_message(codec: int, values: np.ndarray, step: int = 0, sender: int = 0) -> bytes:
    """A message built the way the runtime builds one: zeroed padded buffer, header, encode."""
    c = HP[codec]
    n = c.body_length(values.size)
    buf = np.zeros(hp_wire.round_up(hp_wire.HEADER_SIZE + n), dtype=np.uint8)
    hp_wire.Header(c.id, values.size, n, step, sender).pack_into(buf)
    with np.errstate(over="ignore"):
        c.encode(values, buf[hp_wire.HEADER_SIZE:])
    return bytes(buf[: hp_wire.HEADER_SIZE + n])


def expected_values(codec: int, v: np.ndarray) -> np.ndarray:
    if codec == FP32:
        return v
    if codec == FP16:
        with np.errstate(over="ignore"):
            return v.astype(np.float16).astype(np.float32)
    if codec == SIGN1:
        return np.where(v < 0, -1.0, 1.0).astype(np.float32)
    if codec == SCALED_SIGN:
        scale = np.float32(sum(abs(float(x)) for x in v) / v.size) if v.size else 0
        return np.where(v < 0, -scale, scale).astype(np.float32)
    return np.where(v < 0, -1.0, np.where(v > 0, 1.0, 0.0)).astype(np.float32)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype == np.float32 and a.shape == b.shape and \
        np.array_equal(a.view(np.uint32), b.view(np.uint32))


vectors = hnp.arrays(
    np.float32, st.integers(0, 200),
    elements=st.one_of(st.sampled_from([0.0, -0.0, 1.0, -1.0]),
                       st.floats(width=32, allow_nan=False)))
codec_ids = st.sampled_from([FP32, FP16, SIGN1, TERNARY2, SCALED_SIGN])
fast = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])
few = settings(fast, max_examples=50)


@fast
@given(codec=codec_ids, values=vectors, step=st.integers(0, 2**32 - 1),
       sender=st.integers(0, 2**16 - 1))
def test_codecs_match_the_document(codec, values, step, sender):
    if codec == SCALED_SIGN:  # the runtime sends finite values only (section 4.1)
        assume(np.isfinite(values).all())
    message = hp_message(codec, values, step, sender)
    assert message == doc_encode(codec, values, step, sender)  # byte for byte
    header, mine = doc_decode(message)
    assert (header["codec"], header["count"], header["step"], header["sender"]) == \
        (codec, values.size, step, sender)
    hp_header, theirs = hp_codecs.decode_message(message)
    assert (hp_header.codec, hp_header.count, hp_header.body_length, hp_header.step,
            hp_header.sender, hp_header.flags) == \
        (codec, values.size, header["body_length"], step, sender, 0)
    assert same_bits(mine, theirs.astype(np.float32))
    assert same_bits(mine, expected_values(codec, values))


def test_worked_examples_of_the_document():
    text = DOC.read_text()
    sign = bytes.fromhex("48504347 01 03 0000 0900000000000000 0200000000000000 07000000 0200"
                         " 0000 8a00")
    values = np.array([0.5, -1, 0, -2, 3, -0.0, 7, -8, 1], np.float32)
    assert hp_message(SIGN1, values, 7, 2) == sign == doc_encode(SIGN1, values, 7, 2)
    assert doc_decode(sign)[1].tolist() == [1, -1, 1, -1, 1, 1, 1, -1, 1]
    ternary = bytes.fromhex("48504347 01 04 0000 0a00000000000000 0a00000000000000 07000000"
                            " 0000 0000 d501000000000000 4401")
    values = np.array([1, 0, -1, -0.0, 2.5, 0, -3, 4, -5, 0], np.float32)
    assert hp_message(TERNARY2, values, 7, 0) == ternary == doc_encode(TERNARY2, values, 7, 0)
    assert doc_decode(ternary)[1].tolist() == [1, 0, -1, 0, 1, 0, -1, 1, -1, 0]
    fp32 = hp_message(FP32, np.array([1.0, -2.5], np.float32), 3, 1)
    fp16 = hp_message(FP16, np.array([1.0, -2.5, 0.1], np.float32), 3, 1)
    assert fp32[32:] == bytes.fromhex("0000803f000020c0") and len(fp32) == 40
    assert fp16[32:] == bytes.fromhex("003c00c1662e")
    scaled = hp_message(SCALED_SIGN, np.array([1, -2, 0, 3, -0.5], np.float32))
    assert scaled[32:] == bytes.fromhex("126666a63f") == \
        doc_encode(SCALED_SIGN, [1, -2, 0, 3, -0.5], 0, 0)[32:]
    for hexbytes in ("8a 00", "d5 01 00 00 00 00 00 00", "44 01", "00 00 80 3f 00 00 20 c0",
                     "00 3c 00 c1 66 2e", "12 66 66 a6 3f"):
        assert hexbytes in text, f"the document no longer shows {hexbytes}"


# --------------------------------------------------------------------------- corruption

def _patch(message: bytes, offset: int, fmt: str, value) -> bytes:
    buf = bytearray(message)
    struct.pack_into(fmt, buf, offset, value)
    return bytes(buf)


def _rejected(message: bytes, pattern: str) -> None:
    with pytest.raises(WireFormatError, match=re.compile(pattern, re.IGNORECASE)):
        hp_codecs.decode_message(message)
    with pytest.raises(DocFormatError):
        doc_decode(message)


GOOD = hp_message(SIGN1, np.array([1, -1, 2, -3, 0, 5, -6, 7, 8, -9, 1], np.float32), 5, 3)


@pytest.mark.parametrize("corrupt, pattern", [
    (lambda m: b"HPCX" + m[4:], r"magic"),
    (lambda m: _patch(m, 4, "<B", 2), r"version 2"),
    (lambda m: _patch(m, 4, "<B", 0), r"version 0"),
    (lambda m: _patch(m, 5, "<B", UNASSIGNED), rf"unknown codec id {UNASSIGNED}"),
    (lambda m: _patch(m, 5, "<B", 0), r"unknown codec id 0"),
    (lambda m: _patch(m, 6, "<H", 1), r"flags"),
    (lambda m: _patch(m, 16, "<Q", 3), r"body_length 3"),
    (lambda m: _patch(m, 16, "<Q", 1), r"body_length 1"),
    (lambda m: _patch(m, 8, "<Q", 17), r"body_length"),  # count no longer fits the body
    (lambda m: _patch(m, 30, "<H", 1), r"reserved"),
    (lambda m: m[:-1], r"header says"),
    (lambda m: m + b"\0", r"header says"),
    (lambda m: m[:31], r"shorter than the 32-byte header"),
    (lambda m: b"", r"shorter than the 32-byte header"),
    (lambda m: m[:-1] + bytes([m[-1] | 0x80]), r"padding bits"),
], ids=["magic", "version2", "version0", "codec-unassigned", "codec0", "flags", "body_length+1",
        "body_length-1", "count", "reserved", "truncated", "trailing", "short", "empty",
        "sign-padding"])
def test_corrupt_messages_are_rejected(corrupt, pattern):
    doc_decode(GOOD)  # the uncorrupted message is valid
    hp_codecs.decode_message(GOOD)
    _rejected(corrupt(GOOD), pattern)


@few
@given(codec=st.sampled_from([SIGN1, TERNARY2, SCALED_SIGN]), values=vectors, data=st.data())
def test_set_padding_bits_are_rejected(codec, values, data):
    d = values.size
    assume(d % 8)
    if codec == SCALED_SIGN:
        assume(np.isfinite(values).all())
    message = bytearray(hp_message(codec, values))
    bit = data.draw(st.integers(d % 8, 7), label="padding bit")
    b = planes_bytes(d)
    last = HEADER_BYTES + b - 1
    if codec == TERNARY2 and data.draw(st.booleans(), label="negative plane"):
        last += roundup8(b)
    message[last] |= 1 << bit
    _rejected(bytes(message), r"padding bits")


@pytest.mark.parametrize("scale", [-1.0, float("inf"), float("nan")])
def test_a_scaled_sign_scale_that_is_not_a_magnitude_is_rejected(scale):
    message = hp_message(SCALED_SIGN, np.array([1, -2, 0, 3, -0.5], np.float32))
    _rejected(_patch(message, len(message) - 4, "<f", scale), r"scale")


def test_a_negative_zero_scaled_sign_scale_is_accepted_by_both():
    """§4.10: -0.0 is not negative; bit 0 decodes to -0.0, bit 1 to +0.0."""
    message = hp_message(SCALED_SIGN, np.array([1, -2, 0, 3, -0.5], np.float32))
    message = _patch(message, len(message) - 4, "<f", -0.0)
    assert message[-4:] == bytes.fromhex("00000080")
    want = np.array([-0.0, 0.0, -0.0, -0.0, 0.0], np.float32)
    assert same_bits(doc_decode(message)[1], want)
    assert same_bits(hp_codecs.decode_message(message)[1], want)


@few
@given(values=vectors, data=st.data())
def test_ternary_bytes_between_planes_are_rejected(values, data):
    b = planes_bytes(values.size)
    assume(roundup8(b) > b)
    message = bytearray(hp_message(TERNARY2, values))
    where = HEADER_BYTES + data.draw(st.integers(b, roundup8(b) - 1), label="gap byte")
    message[where] = data.draw(st.integers(1, 255), label="value")
    _rejected(bytes(message), r"padding between the planes")


@few
@given(values=vectors, data=st.data())
def test_ternary_negative_without_nonzero_is_rejected(values, data):
    zeros = np.flatnonzero(values == 0)
    assume(zeros.size)
    i = int(data.draw(st.sampled_from(zeros), label="zero coordinate"))
    message = bytearray(hp_message(TERNARY2, values))
    message[HEADER_BYTES + roundup8(planes_bytes(values.size)) + i // 8] |= 1 << (i % 8)
    _rejected(bytes(message), r"negative but not non-zero")
