"""Adversarial workers (hpcgrad/training/attacks.py): the corruption of each codec's body, the
settings, and whole runs under mpiexec -n 5 (tests/mpirun.py)."""

import json

import h5py
import numpy as np
import pytest

from hpcgrad.training import attacks
from hpcgrad.wire import codecs
from hpcgrad.algorithms import create
from hpcgrad.wire.codecs import (FP16, FP32, QSGD, SIGN1, SPARSE_SIGN, SPARSE_VALUES, TERNARY2,
                            encode_qsgd, encode_sparse_ternary, encode_sparse_values)
from hpcgrad.training.config import TrainConfig
from hpcgrad.errors import ConfigError
from hpcgrad.kernels import quantize
from hpcgrad.wire import HEADER_SIZE, read_header, round_up

from mpirun import run_mpi

SEGMENTS = [13, 24]  # qsgd: two tensors, neither a multiple of 8
D = sum(SEGMENTS)


def values(d=D, seed=0, zeros=True):
    v = np.random.default_rng(seed).standard_normal(d).astype(np.float32)
    if zeros:
        v[::5] = 0
    return v


def padded(length, fill=0):
    """A body buffer as the runtime has it: the body, then padding to 8 bytes, then more."""
    return np.full(round_up(length) + 8, fill, dtype=np.uint8)


def invert(body, codec, length, flags=0, count=D):
    attacks.Attack("invert", 0, 3, SEGMENTS).corrupt(body, codec.id, count, flags, length, 0)


def randomize(body, codec, length, flags=0, count=D, step=0, rank=3, seed=0):
    attacks.Attack("random", seed, rank, SEGMENTS).corrupt(body, codec.id, count, flags,
                                                           length, step)


def check_involution(body, codec, length, flags=0, count=D):
    """invert twice: the buffer comes back bit for bit, padding and beyond included."""
    before = body.copy()
    invert(body, codec, length, flags, count)
    assert not np.array_equal(body, before)
    assert np.array_equal(body[length:], before[length:])  # nothing past the body changes
    invert(body, codec, length, flags, count)
    np.testing.assert_array_equal(body, before)


# ------------------------------------------------------------------ sign1, ternary2


@pytest.mark.parametrize("d", [37, 64, 1])
def test_sign1_invert_flips_the_d_sign_bits_and_leaves_the_padding(d):
    v = values(d, zeros=False)
    length = SIGN1.body_length(d)
    body = padded(length)
    SIGN1.encode(v, body)
    if d % 8:
        body[length - 1] |= np.uint8(0xFF << (d % 8) & 0xFF)  # padding bits set on purpose
    before = body.copy()
    invert(body, SIGN1, length, count=d)
    bits = np.unpackbits(body[:length], bitorder="little")
    old = np.unpackbits(before[:length], bitorder="little")
    np.testing.assert_array_equal(bits[:d], 1 - old[:d])
    np.testing.assert_array_equal(bits[d:], old[d:])  # padding bits as they were
    body[:length] = before[:length]
    check_involution(body, SIGN1, length, count=d)


def test_sign1_random_is_seeded_by_seed_step_and_rank_and_keeps_the_padding():
    d, length = 37, SIGN1.body_length(37)
    honest = padded(length)
    SIGN1.encode(values(d), honest)

    def noise(**key):
        body = honest.copy()
        randomize(body, SIGN1, length, count=d, **key)
        assert body[length - 1] >> (d % 8) == honest[length - 1] >> (d % 8)
        np.testing.assert_array_equal(body[length:], honest[length:])
        return body

    first = noise()
    np.testing.assert_array_equal(noise(), first)  # repeats exactly
    for other in ({"step": 1}, {"rank": 4}, {"seed": 1}):
        assert not np.array_equal(noise(**other), first), other


def test_ternary2_invert_negates_the_nonzeros_and_keeps_zeros():
    v = values()
    length = TERNARY2.body_length(D)
    body = padded(length)
    TERNARY2.encode(v, body)
    honest = TERNARY2.decode(body[:length].copy(), D)
    invert(body, TERNARY2, length)
    np.testing.assert_array_equal(TERNARY2.decode(body[:length], D), -honest)
    invert(body, TERNARY2, length)
    check_involution(body, TERNARY2, length)


def test_ternary2_random_keeps_the_support_and_stays_a_valid_body():
    v = values()
    length = TERNARY2.body_length(D)
    body = padded(length)
    TERNARY2.encode(v, body)
    randomize(body, TERNARY2, length)
    noisy = TERNARY2.decode(body[:length], D)  # validates: negative only where non-zero
    np.testing.assert_array_equal(noisy != 0, v != 0)
    assert not np.array_equal(noisy, np.sign(v))


# ------------------------------------------------------------------ fp32, fp16, allreduce


@pytest.mark.parametrize("codec", [FP32, FP16], ids=["fp32", "fp16"])
def test_dense_invert_negates_every_value(codec):
    v = values()
    length = codec.body_length(D)
    body = padded(length, fill=0xAB)
    codec.encode(v, body)
    honest = codec.decode(body[:length].copy(), D)
    invert(body, codec, length)
    decoded = codec.decode(body[:length].copy(), D)
    np.testing.assert_array_equal(decoded, -honest)
    assert (np.signbit(decoded) != np.signbit(honest)).all()  # zeros too: -0.0
    invert(body, codec, length)
    check_involution(body, codec, length)


@pytest.mark.parametrize("codec", [FP32, FP16], ids=["fp32", "fp16"])
def test_dense_random_is_gaussian_of_the_same_norm(codec):
    v = values(400, zeros=False)
    length = codec.body_length(400)
    body = padded(length)
    codec.encode(v, body)
    honest = codec.decode(body[:length].copy(), 400)
    randomize(body, codec, length, count=400)
    noisy = codec.decode(body[:length].copy(), 400)
    assert np.linalg.norm(noisy) == pytest.approx(np.linalg.norm(honest), rel=1e-3)
    assert abs(np.corrcoef(noisy, honest)[0, 1]) < 0.2  # unrelated to the honest values
    again = padded(length)
    codec.encode(v, again)
    randomize(again, codec, length, count=400)
    np.testing.assert_array_equal(again, body)


def test_allreduce_buffer_is_negated_or_randomized():
    v = values()
    send = v.copy()
    attacks.Attack("invert", 0, 2).corrupt_raw(send, 5)
    np.testing.assert_array_equal(send, -v)
    attacks.Attack("random", 0, 2).corrupt_raw(send, 5)
    assert np.linalg.norm(send) == pytest.approx(np.linalg.norm(v), rel=1e-5)


# ------------------------------------------------------------------ sparse-sign, sparse-values


def sparse_ternary(v, count=D):
    nz = np.flatnonzero(v)
    body = padded(SPARSE_SIGN.max_body_length(count))
    codec, flags, length = encode_sparse_ternary(nz.astype(np.int64),
                                                 (v[nz] < 0).astype(np.uint8), nz.size,
                                                 count, body)
    assert codec == SPARSE_SIGN.id
    return body, flags, length


@pytest.mark.parametrize("keep", [3, 20, D])  # raw, Rice or bitmap positions
def test_sparse_sign_invert_flips_every_sign_at_the_same_positions(keep):
    v = values()
    v[keep:] = 0
    body, flags, length = sparse_ternary(v)
    honest = SPARSE_SIGN.decode(body[:length].copy(), D, flags)
    invert(body, SPARSE_SIGN, length, flags)
    np.testing.assert_array_equal(SPARSE_SIGN.decode(body[:length].copy(), D, flags), -honest)
    invert(body, SPARSE_SIGN, length, flags)
    check_involution(body, SPARSE_SIGN, length, flags)
    randomize(body, SPARSE_SIGN, length, flags)
    noisy = SPARSE_SIGN.decode(body[:length].copy(), D, flags)
    np.testing.assert_array_equal(noisy != 0, honest != 0)


@pytest.mark.parametrize("fp16", [False, True])
@pytest.mark.parametrize("marked", [False, True])
def test_sparse_values_invert_negates_the_values_and_keeps_positions_and_marks(fp16, marked):
    v = values()
    pos = np.flatnonzero(v).astype(np.int64)
    marks = (np.arange(pos.size) % 3 == 0).astype(np.uint8) if marked else None
    body = padded(SPARSE_VALUES.max_body_length(D))
    _, flags, length = encode_sparse_values(pos, v[pos], pos.size, D, body, fp16=fp16,
                                            marked=marks)
    out_pos, out_val = np.zeros(D, np.int64), np.zeros(D, np.float32)
    out_marks = np.zeros(D, np.uint8) if marked else None

    def decode():
        n = SPARSE_VALUES.decode_into(body[:length].copy(), D, flags, out_pos, out_val,
                                      out_marks)
        return out_pos[:n].copy(), out_val[:n].copy(), (out_marks[:n].copy() if marked else None)

    p0, v0, m0 = decode()
    invert(body, SPARSE_VALUES, length, flags)
    p1, v1, m1 = decode()
    np.testing.assert_array_equal(p1, p0)
    np.testing.assert_array_equal(v1, -v0)
    if marked:
        np.testing.assert_array_equal(m1, m0)
    invert(body, SPARSE_VALUES, length, flags)
    check_involution(body, SPARSE_VALUES, length, flags)
    randomize(body, SPARSE_VALUES, length, flags)
    p2, v2, _ = decode()
    np.testing.assert_array_equal(p2, p0)
    assert np.linalg.norm(v2) == pytest.approx(np.linalg.norm(v0), rel=1e-2)


# ------------------------------------------------------------------ qsgd


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_qsgd_invert_flips_the_sign_of_every_nonzero_level(bits):
    v = values()
    offsets = codecs.segment_offsets(SEGMENTS)
    body = padded(QSGD.body_length_at(D, bits, SEGMENTS))
    length = encode_qsgd(v, offsets, bits, quantize.stream_key(0, 0, 3), body,
                         np.zeros(2, np.float32))
    flags = codecs.QSGDCodec.flags(bits)
    honest = QSGD.decode(body[:length].copy(), D, flags, segments=SEGMENTS)
    invert(body, QSGD, length, flags)
    # The decoder rejects a zero level with its sign bit set: decoding checks validity.
    np.testing.assert_array_equal(QSGD.decode(body[:length].copy(), D, flags,
                                              segments=SEGMENTS), -honest)
    invert(body, QSGD, length, flags)
    check_involution(body, QSGD, length, flags)
    randomize(body, QSGD, length, flags)
    noisy = QSGD.decode(body[:length].copy(), D, flags, segments=SEGMENTS)
    np.testing.assert_array_equal(np.abs(noisy), np.abs(honest))


def test_a_message_is_corrupted_by_the_codec_its_header_names():
    """What exchange.py calls: the header the message sends says codec and length."""
    alg = create(TrainConfig(algorithm="signum-mv", tie="zero").resolved(), D, 4)
    from hpcgrad.algorithms.step import StepContext
    from hpcgrad.wire import Header, MessageBuffer
    msg = MessageBuffer(Header(alg.uplink.id, D, alg.uplink.body_length(D), 0, 4))
    msg.begin(2)
    alg.worker_step(StepContext(4, 4, alg.shard, step=2), values(), msg)
    honest = TERNARY2.decode(msg.body.copy(), D)
    attacks.Attack("invert", 0, 4).corrupt_message(msg, 2)
    assert read_header(msg.wire).codec == TERNARY2.id
    np.testing.assert_array_equal(TERNARY2.decode(msg.body.copy(), D), -honest)


# ------------------------------------------------------------------ settings, setup


def test_the_adversaries_are_the_last_worker_ranks():
    assert attacks.adversary_ranks(0, 5) == []
    assert attacks.adversary_ranks(1, 5) == [4]
    assert attacks.adversary_ranks(3, 5) == [2, 3, 4]
    assert not attacks.over_half(2, 4) and attacks.over_half(3, 4)
    meta = attacks.metadata(2, "random", 8)
    assert meta == {"adversaries": [6, 7], "attack": "random", "adversaries_over_half": False}
    assert attacks.metadata(0, "invert", 5)["attack"] == "none"


@pytest.mark.parametrize("settings, words", [
    ({"adversaries": -1}, "adversaries must be an integer >= 0"),
    ({"adversaries": 1.5}, "adversaries must be an integer >= 0"),
    ({"attack": "flip"}, "unknown attack 'flip'; choose one of: invert, random"),
])
def test_bad_adversary_settings_are_named(settings, words):
    with pytest.raises(ConfigError) as err:
        TrainConfig(**settings).resolved()
    assert words in str(err.value)


def test_more_adversaries_than_workers_is_refused_and_only_adversaries_attack():
    cfg = TrainConfig(algorithm="signum-mv", adversaries=5).resolved()
    alg = create(cfg, D, 4)
    with pytest.raises(ConfigError, match="5 adversarial workers, but the job has only 4"):
        attacks.create(cfg, alg, 1, 5)
    cfg = TrainConfig(algorithm="signum-mv", adversaries=2, attack="random").resolved()
    made = [attacks.create(cfg, alg, rank, 5) for rank in range(5)]
    assert made[:3] == [None, None, None]
    assert [(a.kind, a.rank) for a in made[3:]] == [("random", 3), ("random", 4)]


def test_an_uplink_codec_the_attack_does_not_know_is_refused_naming_the_algorithm():
    cfg = TrainConfig(algorithm="signum-mv", adversaries=1).resolved()
    alg = create(cfg, D, 4)
    alg.uplink = codecs.BASE3
    with pytest.raises(ConfigError, match="signum-mv sends base3 uplink bodies"):
        attacks.check(cfg, alg, 5)
    attacks.check(TrainConfig(algorithm="signum-mv").resolved(), alg, 5)  # K = 0: fine


# ------------------------------------------------------------------ whole runs, 5 ranks


def train(tmp_path, name, *options):
    log = tmp_path / f"{name}.h5"
    result = run_mpi(5, ["train", "--algorithm", "signum-mv", "--iterations", "20",
                         "--eval-every", "0", "--flush-every", "5", "--quiet",
                         "--record-messages", "1", "--log", str(log), *options], timeout=90)
    assert result.returncode == 0, result.stderr
    return result, h5py.File(log, "r")


def uplink(f, worker):
    off, length = f["messages/uplink_index"][0, worker - 1]
    return f["messages/uplink_bytes"][off:off + length]


@pytest.mark.timeout(300)  # three launches of 5 ranks on 2 cores
def test_inverting_adversaries_under_mpiexec(tmp_path):
    _, honest = train(tmp_path, "honest")
    one, inverted = train(tmp_path, "one", "--adversaries", "1")
    assert "warning" not in one.stderr
    with honest, inverted:
        assert json.loads(inverted.attrs["adversaries"]) == [4]
        assert inverted.attrs["attack"] == "invert"
        assert not inverted.attrs["adversaries_over_half"]
        assert json.loads(honest.attrs["adversaries"]) == [] and honest.attrs["attack"] == "none"
        d = int(honest.attrs["num_params"])
        # Step 0: same parameters and batches, so rank 4's message is the honest one with
        # its d sign bits flipped; header and padding bits equal; the others untouched.
        good, bad = uplink(honest, 4), uplink(inverted, 4)
        np.testing.assert_array_equal(bad[:HEADER_SIZE], good[:HEADER_SIZE])
        g = np.unpackbits(good[HEADER_SIZE:], bitorder="little")
        b = np.unpackbits(bad[HEADER_SIZE:], bitorder="little")
        np.testing.assert_array_equal(b[:d], 1 - g[:d])
        np.testing.assert_array_equal(b[d:], g[d:])
        for worker in (1, 2, 3):
            np.testing.assert_array_equal(uplink(inverted, worker), uplink(honest, worker))
        honest_loss = honest["eval/loss"][-1]
    # Three of four inverting: the vote is the negation of the honest one, training ascends.
    three, steered = train(tmp_path, "three", "--adversaries", "3")
    assert three.stderr.count("3 of 4 workers are adversaries, more than half") == 1
    with steered:
        assert json.loads(steered.attrs["adversaries"]) == [2, 3, 4]
        assert steered.attrs["adversaries_over_half"]
        loss = steered["steps/loss"][:]
        assert steered["eval/loss"][-1] > loss[0].mean() > honest_loss
        assert loss[-5:].mean() > loss[:5].mean()


# ------------------------------------------------------------------ every algorithm, in-process


@pytest.mark.mpi(min_size=3)
@pytest.mark.parametrize("attack", attacks.ATTACKS)
@pytest.mark.parametrize("algorithm, settings", [
    ("signum-mv", {}), ("signum-mv", {"tie": "zero"}), ("s3gd-mv", {"sparsity": 0.05}),
    ("topk", {"sparsity": 0.05}), ("topk", {"sparsity": 0.05, "topk_values": "fp16"}),
    ("qsgd", {}), ("dq-sgd", {}), ("fp32-ps", {}), ("fp16-ps", {}), ("allreduce", {})])
def test_every_algorithm_runs_with_an_adversary(comm, mpi_tmp_path, algorithm, settings,
                                                attack):
    """The server decodes (and so validates) the corrupted uplinks; replicas stay equal."""
    import hashlib

    from hpcgrad.training import runtime
    from hpcgrad import workloads

    config = TrainConfig(algorithm=algorithm, adversaries=1, attack=attack, iterations=6,
                         eval_every=0, quiet=True, **settings,
                         log=str(mpi_tmp_path / f"adv-{algorithm}-{attack}.h5")).resolved()
    data = workloads.synthetic(config.seed, train=1024, test=128)
    model = workloads.mlp(data.num_features, 16, data.num_classes)
    runtime.train(config, comm, model=model, data=data)
    params = b"".join(p.detach().numpy().tobytes() for p in model.parameters())
    assert len(set(comm.allgather(hashlib.sha256(params).hexdigest()))) == 1
    if comm.Get_rank() == 0:
        with h5py.File(config.log, "r") as f:
            assert json.loads(f.attrs["adversaries"]) == [comm.Get_size() - 1]
            assert f.attrs["attack"] == attack
