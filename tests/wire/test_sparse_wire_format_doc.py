"""docs/wire-format.md §4.6-4.7 (``sparse-sign``, ``base3``) are precise enough to write a
codec from: this file is that codec, written from the document alone, bit by bit.

The tests decode every message a real 5-rank ``s3gd-mv`` run recorded, recompute the server's
vote, union and the logged counts from the decoded uplinks; and check on random vectors that
hpcgrad's kernels and this codec agree byte for byte in every position coding.
"""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest
from test_wire_format_doc import FIELDS, HEADER, HEADER_BYTES, MAGIC, DocFormatError

SPARSE_SIGN, BASE3 = 5, 6
RAW, BITMAP, RICE = 0, 1, 2


# ============================================================ the codec, from the document

class BitWriter:
    def __init__(self):
        self.bits = []

    def put(self, value: int, n: int) -> None:  # LSB first
        self.bits.extend((value >> i) & 1 for i in range(n))

    def gamma(self, x: int) -> None:  # N - 1 zeros, then x's N bits, MSB first
        n = x.bit_length()
        self.bits.extend([0] * (n - 1) + [(x >> i) & 1 for i in range(n - 1, -1, -1)])

    def body(self) -> bytes:
        out = bytearray(math.ceil(len(self.bits) / 8))
        for j, bit in enumerate(self.bits):
            out[j // 8] |= bit << (j % 8)
        return bytes(out)


class BitReader:
    def __init__(self, body: bytes):
        self.body, self.pos = body, 0

    def bit(self) -> int:
        if self.pos >= 8 * len(self.body):
            raise DocFormatError("stream ends early")
        b = (self.body[self.pos // 8] >> (self.pos % 8)) & 1
        self.pos += 1
        return b

    def get(self, n: int) -> int:
        return sum(self.bit() << i for i in range(n))

    def gamma(self) -> int:
        zeros = 0
        while self.bit() == 0:
            zeros += 1
        x = 1
        for _ in range(zeros):
            x = (x << 1) | self.bit()
        return x


def raw_width(d: int) -> int:
    return max(1, (d - 1).bit_length())


def doc_write_positions(w: BitWriter, positions, d: int, coding: int, k: int = 0) -> None:
    """The count and the positions (§4.6 fields 1-2), shared by §4.9's sparse-values."""
    w.gamma(len(positions) + 1)
    if coding == RAW:
        for p in positions:
            w.put(int(p), raw_width(d))
    elif coding == BITMAP:
        marks = set(int(p) for p in positions)
        w.bits.extend(1 if i in marks else 0 for i in range(d))
    else:
        prev = -1
        for p in positions:
            gap = int(p) - prev - 1
            prev = int(p)
            w.bits.extend([1] * (gap >> k) + [0])
            w.put(gap & ((1 << k) - 1), k)


def doc_encode_sparse_sign(positions, negative, d: int, coding: int, k: int = 0) -> bytes:
    w = BitWriter()
    doc_write_positions(w, positions, d, coding, k)
    w.bits.extend(int(bool(s)) for s in negative)
    return w.body()


def doc_read_positions(r: BitReader, d: int, coding: int, k: int) -> list:
    """The count and the positions (§4.6 fields 1-2), validated."""
    n = r.gamma() - 1
    if n > d:
        raise DocFormatError("count above d")
    if coding == RAW:
        positions = [r.get(raw_width(d)) for _ in range(n)]
        if any(b <= a for a, b in zip(positions, positions[1:])):
            raise DocFormatError("positions do not increase")
    elif coding == BITMAP:
        positions = [i for i in range(d) if r.bit()]
        if len(positions) != n:
            raise DocFormatError("bitmap count")
    else:
        positions, prev = [], -1
        for _ in range(n):
            q = 0
            while r.bit():
                q += 1
            prev = prev + 1 + ((q << k) | r.get(k))
            positions.append(prev)
    if any(p >= d for p in positions):
        raise DocFormatError("position >= d")
    return positions


def doc_decode_sparse_sign(body: bytes, d: int, flags: int) -> np.ndarray:
    coding, k = flags & 0xFF, flags >> 8
    if coding not in (RAW, BITMAP, RICE) or (coding != RICE and k):
        raise DocFormatError("flags")
    r = BitReader(body)
    positions = doc_read_positions(r, d, coding, k)
    n = len(positions)
    signs = [r.bit() for _ in range(n)]
    if math.ceil(r.pos / 8) != len(body):
        raise DocFormatError("body longer than its stream")
    if r.pos % 8 and body[-1] >> (r.pos % 8):
        raise DocFormatError("padding bits")
    values = np.zeros(d, dtype=np.float32)
    for p, s in zip(positions, signs):
        values[p] = -1.0 if s else 1.0
    return values


def doc_decode_base3(body: bytes, d: int) -> np.ndarray:
    if len(body) != math.ceil(d / 5):
        raise DocFormatError("base3 length")
    values = np.zeros(d, dtype=np.float32)
    for j, byte in enumerate(body):
        if byte > 242:
            raise DocFormatError("base3 byte above 242")
        for i in range(5):
            t = byte % 3
            byte //= 3
            if t and 5 * j + i >= d:
                raise DocFormatError("trit past the end")
            if t:
                values[5 * j + i] = 1.0 if t == 1 else -1.0
    return values


def doc_decode(message: bytes):
    header = dict(zip(FIELDS, HEADER.unpack_from(message, 0)))
    if header["magic"] != MAGIC or header["version"] != 1 or header["reserved"]:
        raise DocFormatError("header")
    if len(message) != HEADER_BYTES + header["body_length"]:
        raise DocFormatError("message length")
    body, d = message[HEADER_BYTES:], header["count"]
    if header["codec"] == SPARSE_SIGN:
        return header, doc_decode_sparse_sign(body, d, header["flags"])
    if header["codec"] == BASE3 and header["flags"] == 0:
        return header, doc_decode_base3(body, d)
    raise DocFormatError("codec")


# ============================================================ a real run

ITERATIONS, RECORDED, RANKS = 8, 4, 5


RUNS = {"s3gd": ["--algorithm", "s3gd-mv", "--sparsity", "0.01"]}
SETUP_TIMEOUT = 400  # the decoder tests' one 5-rank job (conftest.py), counted against a test


def _args(work, extra):
    return [*extra, "--iterations", str(ITERATIONS), "--record-messages", str(RECORDED),
            "--log", str(work / "run.h5"), "--quiet"]


@pytest.fixture(scope="module")
def run(doc_runs5):
    """The s3gd-mv run, from the one 5-rank job of the decoder tests (tests/wire/conftest.py)."""
    work, proc = doc_runs5[(__name__, "s3gd")]
    assert proc.returncode == 0, proc.stderr
    with h5py.File(work / "run.h5", "r") as f:
        return {"attrs": dict(f.attrs), **{k: f["steps"][k][...] for k in f["steps"]},
                **{f"m_{k}": f["messages"][k][...] for k in f["messages"]}}


@pytest.mark.timeout(SETUP_TIMEOUT + 60)
def test_recorded_s3gd_messages_decode_to_the_sent_signs_and_the_server_vote(run):
    d = int(run["attrs"]["num_params"])
    ks = eval(run["attrs"]["k_per_segment"])  # JSON list of ints
    up_bytes, down_bytes = run["m_uplink_bytes"].tobytes(), run["m_downlink_bytes"].tobytes()
    for i, step in enumerate(run["m_iteration"]):
        ups = []
        for w, (offset, length) in enumerate(run["m_uplink_index"][i]):
            header, values = doc_decode(up_bytes[offset: offset + length])
            assert (header["codec"], header["step"], header["sender"]) == (SPARSE_SIGN, step, w + 1)
            assert length == run["bytes_up"][step, w]  # logged bytes = MPI lengths
            assert np.count_nonzero(values) == run["nnz_up"][step, w] <= sum(ks)
            assert run["coding_up"][step, w] == header["flags"] & 0xFF
            ups.append(values)
        offset, length = run["m_downlink_index"][i]
        header, direction = doc_decode(down_bytes[offset: offset + length])
        assert length == run["bytes_down"][step] and header["sender"] == 0
        votes = np.sum(ups, axis=0)
        np.testing.assert_array_equal(direction, np.sign(votes))  # sign(0) = 0
        union = np.count_nonzero(np.any(np.array(ups) != 0, axis=0))
        assert run["union_size"][step] == union
        assert run["nnz_down"][step] == np.count_nonzero(direction)
        if header["codec"] == BASE3:  # chosen only when shorter than a bitmap + signs
            assert length - HEADER_BYTES < (d + np.count_nonzero(direction)) / 8
        else:
            assert length - HEADER_BYTES <= math.ceil(d / 5)


# ============================================================ hpcgrad == the document

from hpcgrad.wire import codecs as hp_codecs  # noqa: E402
from hpcgrad.errors import WireFormatError  # noqa: E402
from hpcgrad.kernels.sparse import base3 as hp_base3, positions as hp_positions  # noqa: E402


def _random_sparse(seed, d, n):
    rng = np.random.default_rng(seed)
    positions = np.sort(rng.choice(d, n, replace=False)).astype(np.int64)
    return positions, rng.integers(0, 2, n).astype(np.uint8)


@pytest.mark.parametrize("d, n", [(1, 0), (1, 1), (9, 3), (64, 64), (100, 7), (1000, 999),
                                  (5000, 50), (77, 0)])
@pytest.mark.parametrize("coding, k", [(RAW, 0), (BITMAP, 0), (RICE, 0), (RICE, 3), (RICE, 9)])
def test_sparse_sign_bytes_match_the_document(d, n, coding, k):
    positions, negative = _random_sparse(d * 31 + n, d, n)
    doc = doc_encode_sparse_sign(positions, negative, d, coding, k)
    # Room for a coding that is not the shortest (the runtime sends only the shortest).
    out = np.zeros(len(doc) + 16, dtype=np.uint8)
    bits = hp_positions.encode_sparse_sign(positions, negative, n, d, coding, k, raw_width(d), out)
    ours = bytes(out[: math.ceil(bits / 8)])
    assert ours == doc
    flags = coding | (k << 8)
    expected = np.zeros(d, dtype=np.float32)
    expected[positions] = np.where(negative, -1.0, 1.0)
    np.testing.assert_array_equal(doc_decode_sparse_sign(ours, d, flags), expected)
    np.testing.assert_array_equal(hp_codecs.SPARSE_SIGN.decode(np.frombuffer(ours, np.uint8),
                                                               d, flags), expected)


@pytest.mark.parametrize("d, n", [(1, 1), (5, 5), (6, 2), (1234, 600)])
def test_base3_bytes_match_the_document(d, n):
    positions, negative = _random_sparse(d + n, d, n)
    out = np.zeros(math.ceil(d / 5) + 8, dtype=np.uint8)
    hp_base3.encode_base3(positions, negative, n, out)
    body = bytes(out[: math.ceil(d / 5)])
    expected = np.zeros(d, dtype=np.float32)
    expected[positions] = np.where(negative, -1.0, 1.0)
    np.testing.assert_array_equal(doc_decode_base3(body, d), expected)
    np.testing.assert_array_equal(hp_codecs.BASE3.decode(np.frombuffer(body, np.uint8), d),
                                  expected)


def test_worked_examples_of_the_document():
    assert doc_encode_sparse_sign([3, 10], [1, 0], 11, RICE, 1) == bytes([0xEE, 0x09])
    assert hp_codecs.SPARSE_SIGN.decode(np.frombuffer(b"\xee\x09", np.uint8), 11,
                                        0x0102).tolist() == [0, 0, 0, -1, 0, 0, 0, 0, 0, 0, 1]
    assert hp_codecs.BASE3.decode(np.frombuffer(b"\x58\x02", np.uint8), 6).tolist() == \
        [1, -1, 0, 0, 1, -1]


@pytest.mark.parametrize("body, d, flags, reason", [
    (b"\xee", 11, 0x0102, "ends before its last field"),        # truncated
    (b"\xee\x09\x00", 11, 0x0102, "longer than its bitstream"),  # a trailing byte
    (b"\xee\x29", 11, 0x0102, "padding bits"),                    # bit 13 set
    (b"\xee\x09", 9, 0x0102, "not below the message's count"),    # position 10 >= d = 9
    (b"\x00\x00\x00\x00", 11, 0x0102, "Elias-gamma|ends before"),  # all-zero gamma
    (b"\xee\x09", 11, 0x0103, "name no position coding"),         # coding 3
    (b"\xee\x09", 11, 0x0100, "name no position coding"),         # raw with k set
])
def test_corrupt_sparse_sign_bodies_are_named_by_both(body, d, flags, reason):
    with pytest.raises(WireFormatError, match=reason):
        hp_codecs.SPARSE_SIGN.decode(np.frombuffer(body, np.uint8), d, flags)
    with pytest.raises(DocFormatError):
        doc_decode_sparse_sign(body, d, flags)


@pytest.mark.parametrize("body, d, reason", [(b"\xf3", 5, "above 242"),
                                             (b"\x58\x05", 6, "past the last coordinate"),
                                             (b"\x58", 6, "longer than its bitstream")])
def test_corrupt_base3_bodies_are_named_by_both(body, d, reason):
    with pytest.raises(WireFormatError, match=reason):
        hp_codecs.BASE3.decode(np.frombuffer(body, np.uint8), d)
    with pytest.raises(DocFormatError):
        doc_decode_base3(body, d)


@pytest.mark.parametrize("density", [0.001, 0.01, 0.1])
def test_uplink_bits_per_entry_are_within_the_entropy_target(density):
    """Target (docs/targets.md): <= log2 C(d, K)/K + 0.2 bits per position, + 1 sign bit."""
    d = 1_000_000
    k = int(density * d)
    positions, negative = _random_sparse(k, d, k)
    out = np.zeros(hp_codecs.SPARSE_SIGN.max_body_length(d) + 8, dtype=np.uint8)
    _, _, length = hp_codecs.encode_sparse_ternary(positions, negative, k, d, out)
    entropy = (math.lgamma(d + 1) - math.lgamma(k + 1) - math.lgamma(d - k + 1)) / math.log(2)
    assert 8 * length / k <= entropy / k + 0.2 + 1


def test_a_rice_quotient_that_would_overflow_is_rejected_not_wrapped():
    """k = 56 and a quotient of 128: q << k overflows int64; the position must be refused."""
    w = BitWriter()
    w.gamma(3)  # two entries
    for _ in range(2):
        w.bits.extend([1] * 128 + [0])
        w.put(0, 56)
    w.bits.extend([0, 0])
    body = np.frombuffer(w.body(), np.uint8)
    with pytest.raises(WireFormatError, match="not below the message's count"):
        hp_codecs.SPARSE_SIGN.decode(body, 1000, RICE | (56 << 8))
