"""TernGrad (``terngrad``): the ternary quantizer against an independent reader of the bytes,
its expectation, clipping, determinism, the server's mean and update, the settings, and a run
under mpiexec.  (Written against docs/algorithms/terngrad.md and docs/wire-format.md §4.8,
not against the module's code.)"""

import hashlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from hpcgrad.algorithms import REGISTRY, create
from hpcgrad.errors import ConfigError, NonFiniteError
from hpcgrad.kernels import quantize
from hpcgrad.options import IgnoredSettingWarning
from hpcgrad.training.config import TrainConfig
from without_mpi import apply, exchange, iteration, uplink_buffer

SEGMENTS = [300, 1, 180, 7]  # a one-element tensor: constant, so never clipped to zero
D = sum(SEGMENTS)
OFFSETS = np.concatenate([[0], np.cumsum(SEGMENTS)])


def config(**settings):
    return TrainConfig(algorithm="terngrad", **settings).resolved()


def ranks_of(workers, **settings):
    cfg = config(**settings)
    return [create(cfg, D, workers, SEGMENTS) for _ in range(workers + 1)]


def gradient(seed=0):
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(D) * np.repeat([1.0, 3.0, 0.01, 50.0], SEGMENTS)
    v[5] = v[310] = 0.0
    v[7] = 40.0  # an outlier the default clipping (2.5 sigma) cuts
    return v.astype(np.float32)


def read_uplink(wire):
    """(scales, ternary values in {-1, 0, 1}) from a message, by the documented layout: the
    32-byte header (codec 7, flags = width 2), one float32 per tensor, then per tensor a
    byte-aligned LSB-first stream of 2-bit fields, bit 0 the level, bit 1 the sign."""
    header = np.frombuffer(bytes(wire[:32]), "<u1")
    assert bytes(header[:4]) == b"HPCG" and header[5] == 7  # qsgd
    assert int.from_bytes(bytes(header[6:8]), "little") == 2  # width 2, no next width
    body = bytes(wire[32:])
    assert int.from_bytes(bytes(header[16:24]), "little") == len(body)
    scales = np.frombuffer(body[: 4 * len(SEGMENTS)], "<f4")
    pos, ternary = 4 * len(SEGMENTS), []
    for n in SEGMENTS:
        section = body[pos: pos + -(-2 * n // 8)]
        bits = np.unpackbits(np.frombuffer(section, np.uint8), bitorder="little")
        level, sign = bits[0: 2 * n: 2], bits[1: 2 * n: 2]
        assert not (sign & (level == 0)).any(), "a zero level carries a sign bit"
        assert not bits[2 * n:].any(), "padding bits are not zero"
        ternary.append(level.astype(np.int64) * (1 - 2 * sign.astype(np.int64)))
        pos += len(section)
    assert pos == len(body)
    return scales, np.concatenate(ternary)


def clipped(v, clip):
    """The paper's layer-wise clipping at clip * sigma (sigma = 0: not clipped)."""
    out = v.astype(np.float64)
    for lo, hi in zip(OFFSETS[:-1], OFFSETS[1:]):
        sigma = np.std(out[lo:hi])
        if clip and sigma > 0:
            bound = float(np.float32(clip * sigma))
            out[lo:hi] = np.clip(out[lo:hi], -bound, bound)
    return out


def send(alg, v, step=0, rank=1):
    from without_mpi import context

    msg = uplink_buffer(alg, rank)
    msg.begin(step)
    alg.worker_step(context(alg, rank, step), v, msg)
    return msg


@pytest.mark.parametrize("clip", [0.0, 2.5, 1.0])
def test_each_tensor_sends_its_max_scale_and_ternary_signs(clip):
    v = gradient(1)
    alg = ranks_of(2, terngrad_clip=clip)[1]
    scales, ternary = read_uplink(send(alg, v).wire)
    ref = clipped(v, clip)
    for l, (lo, hi) in enumerate(zip(OFFSETS[:-1], OFFSETS[1:])):
        assert scales[l] == np.float32(np.abs(ref[lo:hi]).max())
        t = ternary[lo:hi]
        assert ((t == 0) | (np.sign(ref[lo:hi]) == t)).all()  # a sent entry keeps its sign
        assert (t[np.abs(ref[lo:hi]) == np.abs(ref[lo:hi]).max()] != 0).all()  # p = 1
    assert (ternary[[5, 310]] == 0).all()  # zeros are never sent
    assert ternary[300] == np.sign(v[300])  # the one-element tensor is not zeroed
    if clip == 2.5:
        assert scales[0] < v[7]  # the outlier was cut


def test_without_clipping_the_ternary_gradient_is_unbiased():
    v = gradient(2)
    alg = ranks_of(2, terngrad_clip=0.0)[1]
    total, n = np.zeros(D), 3000
    for step in range(n):
        scales, ternary = read_uplink(send(alg, v, step).wire)
        total += ternary * np.repeat(scales.astype(np.float64), SEGMENTS)
    scale = np.repeat([np.abs(v[lo:hi]).max() for lo, hi in zip(OFFSETS[:-1], OFFSETS[1:])],
                      SEGMENTS)
    p = np.abs(v) / scale
    bound = 5 * scale * np.sqrt(p * (1 - p) / n) + 1e-6  # 5 sigma of the mean of n coins
    assert (np.abs(total / n - v) <= bound).all()


def test_the_same_seed_step_and_rank_give_the_same_bytes_and_others_do_not():
    v = gradient(3)
    alg = ranks_of(3, seed=7)[1]
    first = bytes(send(alg, v, step=4, rank=2).wire)
    assert bytes(send(ranks_of(3, seed=7)[2], v, step=4, rank=2).wire) == first
    assert bytes(send(alg, v, step=5, rank=2).wire) != first
    assert bytes(send(alg, v, step=4, rank=3).wire) != first
    assert len(first) == 32 + 4 * len(SEGMENTS) + sum(-(-n // 4) for n in SEGMENTS)


def test_the_server_sends_the_float32_mean_and_every_rank_takes_torchs_sgd_step():
    workers, lr, mu, wd = 3, 0.05, 0.9, 1e-3
    ranks = ranks_of(workers, lr=lr, momentum=mu, weight_decay=wd)
    x0 = np.random.default_rng(4).standard_normal(D).astype(np.float32)
    params = [x0.copy() for _ in ranks]
    reference = torch.nn.Parameter(torch.from_numpy(x0.copy()))
    sgd = torch.optim.SGD([reference], lr=lr, momentum=mu, weight_decay=wd)
    for step in range(3):
        grads = [gradient(10 * step + w) for w in range(workers)]
        up, down = iteration(ranks, params, grads, step)
        decoded = []
        for w in range(workers):
            scales, ternary = read_uplink(up.message(w + 1))
            decoded.append((ternary * np.repeat(scales, SEGMENTS)).astype(np.float32))
        mean = decoded[0].copy()
        for u in decoded[1:]:
            mean += u
        mean /= np.float32(workers)
        np.testing.assert_array_equal(down.body.view("<f4"), mean)
        reference.grad = torch.from_numpy(mean.copy())
        sgd.step()
        for p in params:  # every replica, server included, bit-identical
            np.testing.assert_array_equal(p, params[0])
        np.testing.assert_allclose(params[0], reference.detach().numpy(), rtol=1e-6, atol=1e-7)


def test_a_gradient_that_is_not_finite_is_refused_naming_the_tensor():
    v = gradient(5)
    v[400] = np.inf  # tensor 2
    with pytest.raises(NonFiniteError, match="tensor 2 of rank 1's gradient at step 0"):
        send(ranks_of(2)[1], v)


def test_settings():
    assert "terngrad" in REGISTRY
    assert config().terngrad_clip == 2.5 and config().lr == 0.1
    with pytest.raises(ConfigError, match="terngrad-clip"):
        config(terngrad_clip=-1.0)
    with pytest.warns(IgnoredSettingWarning, match="--terngrad-clip: a setting of --algorithm "
                                                   "terngrad; this run uses --algorithm qsgd"):
        TrainConfig(algorithm="qsgd", terngrad_clip=1.0).resolved()
    # Its worker step runs where the gradient lives (tests/algorithms/test_on_device.py).
    assert config(device="cuda").device == "cuda"


def test_an_inverting_adversary_flips_every_sent_sign():
    honest, adversary = ranks_of(2)[1], ranks_of(2, adversaries=1)[1]
    from hpcgrad.training.attacks import Attack

    v = gradient(6)
    clean = read_uplink(send(honest, v).wire)
    msg = send(adversary, v)
    header = msg.header
    Attack("invert", 0, 1, SEGMENTS).corrupt(msg.padded_body, header.codec, header.count,
                                             header.flags, header.body_length, 0)
    scales, ternary = read_uplink(msg.wire)
    np.testing.assert_array_equal(scales, clean[0])
    np.testing.assert_array_equal(ternary, -clean[1])


def test_the_uplink_decodes_with_the_qsgd_decoder_the_server_uses():
    workers = 2
    ranks = ranks_of(workers, terngrad_clip=0.0)
    up, down = exchange(ranks[1:], ranks[0], [gradient(8), gradient(9)], step=3)
    params = [np.zeros(D, np.float32) for _ in ranks]
    for rank, (alg, p) in enumerate(zip(ranks, params)):
        apply(alg, rank, p, down, 3)
    assert params[0].any() and all((p == params[0]).all() for p in params)
    assert quantize.levels(2) == 1  # a 2-bit qsgd field has one level: the ternary one


def test_help_lists_terngrad_and_its_setting_without_importing_numba():
    probe = ("import sys\nfrom hpcgrad.cli import build_parser\n"
             "text = build_parser()._subparsers._group_actions[0].choices['train'].format_help()\n"
             "print('--terngrad-clip' in text and 'terngrad' in text, 'numba' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=60)
    assert run.stdout.split() == ["True", "False"], run.stderr


@pytest.mark.mpi(min_size=3)
def test_training_keeps_every_replica_identical_and_logs_the_ternary_bytes(comm, mpi_tmp_path):
    import h5py

    from hpcgrad import workloads
    from hpcgrad.training import runtime

    log = str(mpi_tmp_path / "terngrad.h5")
    cfg = TrainConfig(algorithm="terngrad", iterations=12, eval_every=0, flush_every=5,
                      quiet=True, log=log).resolved()
    data = workloads.synthetic(cfg.seed, train=2048, test=256)
    model = workloads.mlp(data.num_features, 32, data.num_classes)
    runtime.train(cfg, comm, model=model, data=data)
    digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes()
                                     for p in model.parameters())).hexdigest()
    assert len(set(comm.allgather(digest))) == 1
    if comm.Get_rank() == 0:
        with h5py.File(log, "r", swmr=True) as f:
            segments = [p.numel() for p in model.parameters()]
            up = 32 + 4 * len(segments) + sum(-(-n // 4) for n in segments)
            assert (f["steps/bytes_up"][()] == up).all()
            assert (f["steps/bytes_down"][()] == 32 + 4 * sum(segments)).all()
            assert f.attrs["algorithm"] == "terngrad"
            assert f["final_params_sha256"][()].decode() == digest
