import json

import pytest

from hpcgrad import algorithms
from hpcgrad.training.config import ALGORITHMS, TrainConfig, build, load_file
from hpcgrad.errors import ConfigError
from hpcgrad.options import IgnoredSettingWarning


def test_every_registered_algorithm_is_selectable():
    assert set(ALGORITHMS) == set(algorithms.REGISTRY)


def test_algorithm_defaults_fill_unset_values():
    cfg = TrainConfig(algorithm="signum-mv").resolved()
    assert cfg.lr == algorithms.REGISTRY["signum-mv"].defaults["lr"]
    assert TrainConfig(algorithm="fp32-ps", lr=0.5).resolved().lr == 0.5


@pytest.mark.parametrize("settings, words", [
    ({"algorithm": "adam-mv"}, "unknown algorithm 'adam-mv'"),
    ({"lr": 0.0}, "lr must be > 0"),
    ({"lr": float("nan")}, "lr must be a finite number"),
    ({"momentum": 1.0}, "momentum must be in [0, 1)"),
    ({"momentum": -0.1}, "momentum must be in [0, 1)"),
    ({"weight_decay": -1.0}, "weight-decay must be >= 0"),
    ({"tie": "coin"}, "unknown tie rule 'coin'"),
    ({"iterations": 0}, "iterations must be an integer >= 1"),
    ({"batch_size": 2.5}, "batch-size must be an integer"),
])
def test_bad_settings_are_named(settings, words):
    with pytest.raises(ConfigError) as err:
        TrainConfig(**settings).resolved()
    assert words in str(err.value)


def test_file_then_command_line(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('algorithm = "fp16-ps"\nlr = 0.05\nbatch-size = 16\n')
    cfg = build(load_file(path), {"lr": 0.2, "seed": None})
    assert (cfg.algorithm, cfg.lr, cfg.batch_size) == ("fp16-ps", 0.2, 16)


def test_file_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_file(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("lr = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_file(bad)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("learning_rate = 3")
    with pytest.raises(ConfigError, match="unknown setting 'learning_rate'"):
        load_file(unknown)


@pytest.mark.parametrize("settings, message", [
    ({"algorithm": ["signum-mv"]}, "algorithm must be a string"),
    ({"log": 5}, "log must be a string"),
    ({"quiet": "no"}, "quiet must be true or false"),
    ({"algorithm": "dq-sgd", "dq_window": 10**12}, "dq-window must be at most the iterations"),
])
def test_wrongly_typed_settings_are_named(settings, message):
    with pytest.raises(ConfigError, match=message):
        build(settings, {})


def test_the_json_of_the_settings_is_what_logs_and_checkpoints_stored_before():
    """``to_json`` is in every log's attributes and every checkpoint, which compares it: the
    settings made from the declarations keep the keys and values of the hand-written ones."""
    ef = ('{"adversaries": 0, "aggregate_hint": null, "algorithm": "ef-sgd", "attack": "invert", '
          '"batch_norm": null, "batch_size": 32, "bits": 4, "checkpoint_dir": null, '
          '"checkpoint_every": 0, "classes": null, "compressor": "scaled-sign", "data_path": '
          'null, "dataset": "synthetic", "device": "cpu", "dq_horizon": null, "dq_lambda": null, '
          '"dq_rho": null, "dq_start_bits": null, "dq_window": null, "error_averaging": null, '
          '"eval_every": 50, "examples": null, "features": null, "feedback": "ef", '
          '"flush_every": 10, "hidden": 128, "iterations": 300, "k_per_worker": null, "log": '
          'null, "lr": 0.1, "lr_schedule": "constant", "max_bits": null, "min_bits": null, '
          '"model": "mlp", "momentum": 0.9, "partition": "iid", "quantize_downlink": false, '
          '"quiet": false, "record_messages": 0, "residual": null, "resume": null, "seed": 0, '
          '"selection": "exact", "server_feedback": false, "sparsity": 0.01, "tie": "positive", '
          '"topk_selection": "local", "topk_values": "fp32", "unbiased": false, "union_boost": '
          'null, "vocab_size": null, "votes_per_coordinate": 1.0, "warmup": 0, "weight_decay": '
          '0.0}')
    now = json.loads(TrainConfig(algorithm="ef-sgd").resolved().to_json())
    assert {k: now[k] for k in json.loads(ef)} == json.loads(ef)
    assert json.dumps({k: now[k] for k in json.loads(ef)}, sort_keys=True) == ef
    # Settings declared since (a new algorithm's) are there at their defaults: a checkpoint
    # written before they existed compares them so (checkpoint.settings_differences).
    for key in set(now) - set(json.loads(ef)):
        assert now[key] == TrainConfig.OPTIONS[key].default, key
    dq = TrainConfig(algorithm="dq-sgd", iterations=40).resolved()
    assert (dq.dq_horizon, dq.bits, dq.min_bits, dq.max_bits) == (40, None, 2, 8)


def test_a_setting_only_another_algorithm_reads_is_named_in_a_warning_or_refused():
    with pytest.warns(IgnoredSettingWarning, match="--residual: a setting of --algorithm "
                                                   "s3gd-mv; this run uses --algorithm topk, "
                                                   "which does not read it; ignored"):
        TrainConfig(algorithm="topk", residual=0.5).resolved()
    with pytest.raises(ConfigError, match="topk: --k-per-worker is an s3gd-mv setting"):
        TrainConfig(algorithm="topk", k_per_worker="auto").resolved()
    with pytest.raises(ConfigError, match="--residual: a setting of --algorithm s3gd-mv; this "
                                          "run uses --algorithm ef-sgd"):
        TrainConfig(algorithm="ef-sgd", residual=0.5).resolved()
    # Every algorithm accepts --device cuda; a rank without CuPy or a GPU refuses it when it
    # selects its device (tests/comm/test_device.py).
    for name in ("s3gd-mv", "ef-sgd", "terngrad"):
        assert TrainConfig(algorithm=name, device="cuda").resolved().device == "cuda"
