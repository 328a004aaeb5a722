"""Every ``ef-sgd --compressor`` log decodes with the document's codecs and the log alone.

A user who has only ``docs/wire-format.md`` and ``docs/log-format.md`` must be able to decode
the recorded messages of every ``ef-sgd`` compressor (issue 21): the codecs here are the ones
written from the document by the sibling doc-decoder tests (``qsgd`` §4.8, ``sparse-values``
§4.9, ``fp32`` §4.1; ``scaled-sign`` is checked in ``test_wire_format_doc.py``), and the only
facts taken from the run are the log's own attributes -- ``segments`` (the tensor sizes a
``qsgd`` body is cut by), ``k_per_segment`` (the K_l of the sparse compressors), ``config``
(seed, sparsity, bits) -- never hpcgrad's code.

Each 3-rank run (``mpiexec``, real HDF5) is decoded message by message: the header fields and
logged lengths are the documented ones, ``randomk``'s positions are the documented draws, the
top-K uplink keeps at most K_l entries per tensor, and the fp32 downlink is, bit for bit, the
mean of the decoded uplinks added in float32 in worker order (wire-format §6).  With
``--server-feedback`` (qsgd) the downlink is re-encoded byte for byte from the documents: the
server's residual followed from step 0, the documented coins keyed by (seed, t, 0).
"""

from __future__ import annotations

import json
import math
from concurrent.futures import Future

import h5py
import numpy as np
import pytest
from mpirun import train_several
from test_quantized_wire_format_doc import (doc_body_length, doc_decode_qsgd, doc_encode_qsgd,
                                            doc_key, doc_mean)
from test_topk_wire_format_doc import doc_decode_sparse_values
from test_wire_format_doc import FIELDS, HEADER, HEADER_BYTES, MAGIC, DocFormatError

FP32, QSGD, SPARSE_VALUES = 1, 7, 8
NAMES = {FP32: "fp32", QSGD: "qsgd", SPARSE_VALUES: "sparse-values"}

ITERATIONS, RECORDED, RANKS = 4, 3, 3
RUNS = {"topk": ["--compressor", "topk", "--sparsity", "0.02"],
        "randomk": ["--compressor", "randomk", "--sparsity", "0.02", "--feedback", "step-ahead"],
        "qsgd": ["--compressor", "qsgd", "--bits", "3"],
        "identity": ["--compressor", "identity", "--feedback", "none"],
        "qsgd-server-feedback": ["--compressor", "qsgd", "--bits", "3", "--server-feedback"]}

#: The one job of every run; pytest-timeout counts it against the first test that reads it.
SETUP_TIMEOUT = 300


def _args(work, extra):
    log = work / "run.h5"
    return ["--algorithm", "ef-sgd", *extra, "--iterations", str(ITERATIONS),
            "--record-messages", str(RECORDED), "--hidden", "24", "--seed", "5",
            "--log", str(log), "--quiet"]


def _read(work, proc):
    assert proc.returncode == 0, proc.stderr
    with h5py.File(work / "run.h5", "r") as f:
        return {"attrs": dict(f.attrs), **{k: f["steps"][k][...] for k in f["steps"]},
                **{f"m_{k}": f["messages"][k][...] for k in f["messages"]}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every run of RUNS, one after another in one 3-rank job (tests/mpirun.py's
    ``train_several``: the ranks start once, not once per run). Each value is a future: a
    run that failed fails only the tests that read it."""
    work = {name: tmp_path_factory.mktemp(name) for name in RUNS}
    done = train_several(RANKS, {name: (work[name], _args(work[name], extra))
                                 for name, extra in RUNS.items()}, timeout=SETUP_TIMEOUT)
    futures = {}
    for name in RUNS:
        futures[name] = Future()
        try:
            futures[name].set_result(_read(work[name], done[name]))
        except Exception as exc:  # noqa: BLE001 -- raised again by the test that reads it
            futures[name].set_exception(exc)
    return futures


def doc_decode(message: bytes, segments):
    """(header, dense float32 values, positions or None) of one message, from the document."""
    header = dict(zip(FIELDS, HEADER.unpack_from(message, 0)))
    if header["magic"] != MAGIC or header["version"] != 1 or header["reserved"]:
        raise DocFormatError("header")
    if len(message) != HEADER_BYTES + header["body_length"]:
        raise DocFormatError("message length")
    body, d, codec = message[HEADER_BYTES:], header["count"], header["codec"]
    if codec == QSGD:
        return header, doc_decode_qsgd(body, d, header["flags"], segments), None
    if codec == FP32 and header["flags"] == 0 and len(body) == 4 * d:
        return header, np.frombuffer(body, "<f4").astype(np.float32), None
    if codec == SPARSE_VALUES:
        positions, values, marks = doc_decode_sparse_values(body, d, header["flags"])
        if marks is not None:
            raise DocFormatError("ef-sgd sends no membership bitmap")
        dense = np.zeros(d, dtype=np.float32)  # absent entries are 0 (§4.9)
        dense[positions] = values
        return header, dense, positions
    raise DocFormatError(f"codec {codec}")


def doc_k_per_segment(segments, sparsity):
    """K_l as wire-format §6 defines it: ceil(sparsity * numel_l), at least 1, at most
    numel_l."""
    return [min(n, max(1, math.ceil(sparsity * n))) for n in segments]


@pytest.mark.timeout(SETUP_TIMEOUT + 60)
@pytest.mark.parametrize("name", [name for name in RUNS if "server-feedback" not in name])
def test_every_recorded_message_decodes_from_the_documents_and_the_log_alone(runs, name):
    run = runs[name].result()
    attrs, config = run["attrs"], json.loads(run["attrs"]["config"])
    d = int(attrs["num_params"])
    assert int(attrs["num_workers"]) == RANKS - 1
    assert attrs["algorithm"] == "ef-sgd" and attrs["compressor"] == name
    segments = json.loads(attrs["segments"])  # every ef-sgd log has them (log-format.md)
    assert sum(segments) == d and min(segments) > 0
    offsets = np.concatenate([[0], np.cumsum(segments)])
    up_codec = {"topk": SPARSE_VALUES, "randomk": SPARSE_VALUES, "qsgd": QSGD,
                "identity": FP32}[name]
    assert (attrs["uplink_codec"], attrs["downlink_codec"]) == (NAMES[up_codec], "fp32")
    ks = None
    if up_codec == SPARSE_VALUES:
        ks = json.loads(attrs["k_per_segment"])
        assert ks == doc_k_per_segment(segments, config["sparsity"])
    else:
        assert "k_per_segment" not in attrs
    up_bytes, down_bytes = run["m_uplink_bytes"].tobytes(), run["m_downlink_bytes"].tobytes()
    assert list(run["m_iteration"]) == list(range(RECORDED))
    for i, step in enumerate(run["m_iteration"]):
        rows = []
        for w, (offset, length) in enumerate(run["m_uplink_index"][i]):
            header, values, positions = doc_decode(up_bytes[offset: offset + length], segments)
            assert (header["codec"], header["count"], header["step"], header["sender"]) == (
                up_codec, d, step, w + 1)
            assert length == run["bytes_up"][step, w]
            if up_codec == QSGD:
                assert header["flags"] == config["bits"]  # width b, no next width
                assert length == HEADER_BYTES + doc_body_length(segments, config["bits"])
            elif up_codec == FP32:
                assert length == HEADER_BYTES + 4 * d
            else:
                per_tensor = np.bincount(np.searchsorted(offsets, positions, side="right") - 1,
                                         minlength=len(segments))
                if name == "randomk":  # the documented draws, tensor by tensor
                    expected = np.concatenate([
                        np.sort(np.random.default_rng([config["seed"], step, w + 1, l]).choice(
                            n, k, replace=False)) + offsets[l]
                        for l, (n, k) in enumerate(zip(segments, ks))])
                    np.testing.assert_array_equal(positions, expected)
                else:  # top-K: at most K_l per tensor (an exact zero is not sent)
                    assert (per_tensor <= ks).all() and per_tensor.sum() > 0
            rows.append(values)
        assert len(rows) == RANKS - 1  # the divisor M of the mean below
        offset, length = run["m_downlink_index"][i]
        header, down, _ = doc_decode(down_bytes[offset: offset + length], segments)
        assert (header["codec"], header["step"], header["sender"], header["flags"]) == (
            FP32, step, 0, 0)
        assert length == run["bytes_down"][step] == HEADER_BYTES + 4 * d
        # The server's mean: ((u_1 + u_2) + ... + u_M) / float32(M), in float32.
        np.testing.assert_array_equal(down, doc_mean(rows))
        assert np.any(down != 0)


@pytest.mark.timeout(SETUP_TIMEOUT + 60)
def test_the_server_feedback_downlink_is_the_documented_compression_of_mean_plus_residual(runs):
    """``--server-feedback``: the downlink is C(a + e_s), compressed with sender 0, and
    e_s <- a + e_s - C(a + e_s) (docs/algorithms/error-feedback.md, wire format §6).  From the
    documents alone the residual can be followed from step 0, so every recorded downlink is
    re-encoded byte for byte: the mean of the decoded uplinks, plus e_s, quantized with the
    documented coins keyed by (seed, t, 0)."""
    run = runs["qsgd-server-feedback"].result()
    attrs, config = run["attrs"], json.loads(run["attrs"]["config"])
    d, segments, b = int(attrs["num_params"]), json.loads(attrs["segments"]), config["bits"]
    assert (attrs["uplink_codec"], attrs["downlink_codec"]) == ("qsgd", "qsgd")
    assert attrs["server_feedback"] == True  # noqa: E712  (an HDF5 boolean)
    up_bytes, down_bytes = run["m_uplink_bytes"].tobytes(), run["m_downlink_bytes"].tobytes()
    residual = np.zeros(d, dtype=np.float32)
    for i, step in enumerate(run["m_iteration"]):
        rows = [doc_decode(up_bytes[offset: offset + length], segments)[1]
                for offset, length in run["m_uplink_index"][i]]
        offset, length = run["m_downlink_index"][i]
        message = down_bytes[offset: offset + length]
        header, down, _ = doc_decode(message, segments)
        assert (header["codec"], header["flags"], header["step"], header["sender"]) == (
            QSGD, b, step, 0)
        assert length == run["bytes_down"][step] == HEADER_BYTES + doc_body_length(segments, b)
        target = (residual + doc_mean(rows)).astype(np.float32)  # a + e_s
        key = doc_key(config["seed"], int(step), 0)
        assert message[HEADER_BYTES:] == doc_encode_qsgd(target, segments, b, key)
        residual = (target - down).astype(np.float32)  # e_s <- a + e_s - C(a + e_s)
    assert np.any(residual != 0)
