"""docs/wire-format.md §4.9 (``sparse-values``) is precise enough to write a codec from: this
file is that codec, written from the document alone (the bit I/O of §4.6's test).

The multi-rank tests run ``topk`` on 5 ranks (``mpiexec``) with recorded messages, decode every
uplink and downlink with this codec and check that the server's aggregate is the mean, in
float32 and worker order, of the decoded worker messages over their union, that the logged
``union_size`` / ``nnz_up`` / ``nnz_down`` / bytes are those of the messages, and for
``leader`` that the followers use the positions the downlink marked.  The serial tests check
hpcgrad's encoder against this codec byte for byte, and the document's worked example.
"""

from __future__ import annotations

import math
import struct

import h5py
import numpy as np
import pytest
from test_sparse_wire_format_doc import (BitReader, BitWriter, doc_read_positions,
                                         doc_write_positions)
from test_wire_format_doc import FIELDS, HEADER, HEADER_BYTES, MAGIC, DocFormatError

SPARSE_VALUES = 8
RAW, BITMAP, RICE = 0, 1, 2


# ============================================================ the codec, from the document

def doc_encode(positions, values, d, coding, k=0, fp16=False, marks=None) -> bytes:
    w = BitWriter()
    doc_write_positions(w, positions, d, coding, k)
    body = w.body()  # padded to a byte
    body += b"".join(struct.pack("<e" if fp16 else "<f", float(v)) for v in values)
    if marks is not None:
        plane = bytearray(math.ceil(len(marks) / 8))
        for i, m in enumerate(marks):
            plane[i // 8] |= int(bool(m)) << (i % 8)
        body += bytes(plane)
    return body


def doc_decode_sparse_values(body: bytes, d: int, flags: int):
    """(positions, values, marks or None)."""
    coding, fp16, marked, k = flags & 3, (flags >> 4) & 1, (flags >> 5) & 1, flags >> 8
    if flags & ~0x3F33 or coding not in (RAW, BITMAP, RICE) or k > 56 or (coding != RICE and k):
        raise DocFormatError("flags")
    r = BitReader(body)
    positions = doc_read_positions(r, d, coding, k)
    n = len(positions)
    h = math.ceil(r.pos / 8)
    if r.pos % 8 and body[h - 1] >> (r.pos % 8):
        raise DocFormatError("padding bits")
    v = 2 if fp16 else 4
    length = h + v * n + (math.ceil(n / 8) if marked else 0)
    if len(body) != length:
        raise DocFormatError("body length")
    values = [struct.unpack_from("<e" if fp16 else "<f", body, h + v * i)[0] for i in range(n)]
    marks = None
    if marked:
        plane = body[h + v * n:]
        marks = [(plane[i // 8] >> (i % 8)) & 1 for i in range(n)]
        if n % 8 and plane[-1] >> (n % 8):
            raise DocFormatError("membership padding bits")
    return positions, np.array(values, dtype=np.float32), marks


def doc_decode(message: bytes):
    header = dict(zip(FIELDS, HEADER.unpack_from(message, 0)))
    if header["magic"] != MAGIC or header["version"] != 1 or header["reserved"]:
        raise DocFormatError("header")
    if len(message) != HEADER_BYTES + header["body_length"] or header["codec"] != SPARSE_VALUES:
        raise DocFormatError("message")
    positions, values, marks = doc_decode_sparse_values(message[HEADER_BYTES:], header["count"],
                                                        header["flags"])
    return header, positions, values, marks


# ============================================================ real 5-rank runs

ITERATIONS, RECORDED, RANKS = 8, 6, 5


RUNS = {
    "leader": ["--topk-selection", "leader", "--partition", "classes:2"],
    "union-boost-fp16": ["--topk-selection", "union-boost", "--topk-values", "fp16"],
    "shared-random": ["--topk-selection", "shared-random"],
}
SETUP_TIMEOUT = 400  # the decoder tests' one 5-rank job (conftest.py), counted against a test


def _args(work, extra):
    return ["--algorithm", "topk", "--sparsity", "0.01", "--iterations", str(ITERATIONS),
            "--record-messages", str(RECORDED), "--log", str(work / "run.h5"), "--quiet",
            *extra]


@pytest.fixture(scope="module")
def runs(doc_runs5):
    """name -> (work directory, finished run), from the one 5-rank job of the decoder tests
    (tests/wire/conftest.py)."""
    return {name: doc_runs5[(__name__, name)] for name in RUNS}


@pytest.fixture(params=list(RUNS))
def run(request, runs):
    name = request.param
    work, proc = runs[name]
    assert proc.returncode == 0, proc.stderr
    with h5py.File(work / "run.h5", "r") as f:
        return name, {"attrs": dict(f.attrs), **{k: f["steps"][k][...] for k in f["steps"]},
                      **{f"m_{k}": f["messages"][k][...] for k in f["messages"]}}


@pytest.mark.timeout(SETUP_TIMEOUT + 60)
def test_recorded_topk_downlink_is_the_mean_of_the_decoded_uplinks(run):
    name, run = run
    d, m = int(run["attrs"]["num_params"]), RANKS - 1
    k = int(run["attrs"]["k"])
    up_bytes, down_bytes = run["m_uplink_bytes"].tobytes(), run["m_downlink_bytes"].tobytes()
    previous_marked = None
    for i, step in enumerate(run["m_iteration"]):
        ups = []
        for w, (offset, length) in enumerate(run["m_uplink_index"][i]):
            header, pos, vals, marks = doc_decode(up_bytes[offset: offset + length])
            assert (header["step"], header["sender"]) == (step, w + 1) and marks is None
            assert bool(header["flags"] & 0x10) == name.endswith("fp16")
            assert length == run["bytes_up"][step, w] and len(pos) == run["nnz_up"][step, w]
            assert len(pos) <= k
            ups.append((pos, vals))
            if previous_marked is not None and w + 1 != 1 + step % m:
                assert pos == previous_marked  # followers use the announced positions
        offset, length = run["m_downlink_index"][i]
        header, union, agg, marks = doc_decode(down_bytes[offset: offset + length])
        assert header["sender"] == 0 and length == run["bytes_down"][step]
        assert not header["flags"] & 0x10  # the downlink is fp32
        expected_union = sorted(set().union(*(set(p) for p, _ in ups)))
        assert union == expected_union
        assert run["union_size"][step] == run["nnz_down"][step] == len(union)
        total = np.zeros(d, dtype=np.float32)
        for pos, vals in ups:  # float32, in worker order, as documented
            total[pos] += vals
        mean = total / np.float32(m)
        np.testing.assert_array_equal(agg, mean[union])
        if name == "shared-random":
            assert len(union) == k
        if name == "leader":
            leader = 1 + step % m
            assert [p for p, f in zip(union, marks) if f] == list(ups[leader - 1][0])
            previous_marked = [p for p, f in zip(union, marks) if f]
        else:
            assert marks is None


# ============================================================ the document vs hpcgrad

@pytest.mark.parametrize("fp16", [False, True])
@pytest.mark.parametrize("marked", [False, True])
@pytest.mark.parametrize("d, n", [(1, 1), (20, 3), (97, 40), (1000, 5), (5000, 60), (64, 64)])
def test_sparse_values_bytes_match_the_document(d, n, fp16, marked):
    from hpcgrad.wire import codecs
    rng = np.random.default_rng(d * 7 + n)
    positions = np.sort(rng.choice(d, size=n, replace=False)).astype(np.int64)
    values = rng.standard_normal(n).astype(np.float32)
    values[::5] = 0
    marks = (rng.random(n) < 0.5).astype(np.uint8) if marked else None
    out = np.zeros(codecs.SPARSE_VALUES.max_body_length(d) + 8, dtype=np.uint8)
    codec, flags, length = codecs.encode_sparse_values(positions, values, n, d, out, fp16=fp16,
                                                       marked=marks)
    assert codec == SPARSE_VALUES and length <= codecs.SPARSE_VALUES.max_body_length(d)
    body = out[:length].tobytes()
    assert body == doc_encode(positions, values, d, flags & 3, flags >> 8, fp16,
                              None if marks is None else list(marks))
    pos, vals, got_marks = doc_decode_sparse_values(body, d, flags)
    assert pos == list(positions)
    np.testing.assert_array_equal(vals, values.astype(np.float16).astype(np.float32)
                                  if fp16 else values)
    # and hpcgrad's decoder reads the same
    p2, v2 = np.zeros(d, np.int64), np.zeros(d, np.float32)
    m2 = np.zeros(d, np.uint8) if marked else None
    assert codecs.SPARSE_VALUES.decode_into(out[:length], d, flags, p2, v2, m2) == n
    np.testing.assert_array_equal(p2[:n], positions)
    np.testing.assert_array_equal(v2[:n], vals)
    if marked:
        assert list(m2[:n]) == got_marks == list(marks)


def test_worked_example_of_the_document():
    from hpcgrad.wire import codecs
    pos = np.array([2, 3, 11], dtype=np.int64)
    vals = np.array([0.5, -1.25, 2.0], dtype=np.float32)
    out = np.zeros(64, dtype=np.uint8)
    assert codecs.encode_sparse_values(pos, vals, 3, 20, out)[1:] == (0x0102, 14)
    assert out[:14].tobytes() == bytes.fromhex("245c0000003f0000a0bf00000040")
    out[:] = 0
    marks = np.array([1, 0, 1], dtype=np.uint8)
    assert codecs.encode_sparse_values(pos, vals, 3, 20, out, fp16=True,
                                       marked=marks)[1:] == (0x0132, 9)
    assert out[:9].tobytes() == bytes.fromhex("245c003800bd004005")
    assert doc_encode(pos, vals, 20, RICE, 1) == bytes.fromhex("245c0000003f0000a0bf00000040")
