"""Training settings: defaults, a TOML config file, and the command line.

Precedence: built-in defaults < ``--config FILE`` < command-line options.
Every setting is validated here, on every rank, before any communication.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from . import schedule
from ..workloads.catalog import (BATCH_NORMS, DATASETS, MODEL_INPUTS, MODEL_NEEDS, MODELS,
                                 check_workload, parse_features, parse_partition,
                                 partition_classes)
from ..algorithms import REGISTRY
from .attacks import ATTACKS
from ..errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ALGORITHMS = tuple(REGISTRY)
TIE_RULES = ("positive", "zero", "random")
SELECTIONS = ("exact", "threshold")
DEVICES = ("cpu", "cuda")
TOPK_SELECTIONS = ("local", "union-boost", "aggregate-hint", "shared-random", "leader")
TOPK_VALUES = ("fp32", "fp16")


@dataclass
class TrainConfig:
    algorithm: str = "signum-mv"
    iterations: int = 300
    seed: int = 0
    lr: float | None = None
    momentum: float | None = None
    weight_decay: float = 0.0
    tie: str = "positive"
    batch_size: int = 32
    hidden: int = 128
    eval_every: int = 50
    flush_every: int = 10
    log: str | None = None
    record_messages: int = 0
    quiet: bool = False
    device: str = "cpu"
    # s3gd-mv
    sparsity: float | None = None
    k_per_worker: str | None = None
    votes_per_coordinate: float = 1.0
    residual: float | None = None
    selection: str = "exact"
    # topk (uses sparsity too)
    topk_selection: str = "local"
    topk_values: str = "fp32"
    union_boost: float | None = None
    aggregate_hint: float | None = None
    unbiased: bool = False
    # data
    partition: str = "iid"
    # workload (hpcgrad/workloads/models.py, hpcgrad/workloads/datasets.py; None = the default described there)
    model: str = "mlp"
    dataset: str = "synthetic"
    data_path: str | None = None
    examples: int | None = None
    features: int | str | None = None
    classes: int | None = None
    vocab_size: int | None = None
    batch_norm: str | None = None
    # qsgd / dq-sgd
    bits: int | None = None
    quantize_downlink: bool = False
    dq_rho: float | None = None
    dq_horizon: int | None = None
    dq_lambda: float | None = None
    dq_start_bits: int | None = None
    min_bits: int | None = None
    max_bits: int | None = None
    dq_window: int | None = None
    # error feedback (ef-sgd) and checkpoints
    compressor: str | None = None
    feedback: str | None = None
    error_averaging: int | None = None
    server_feedback: bool = False
    checkpoint_every: int = 0
    checkpoint_dir: str | None = None
    resume: str | None = None
    # schedule and adversaries
    lr_schedule: str = "constant"
    warmup: int = 0
    adversaries: int = 0
    attack: str = "invert"
    extra: dict = field(default_factory=dict, repr=False)

    def resolved(self) -> "TrainConfig":
        """A copy with per-algorithm defaults filled in, validated."""
        cfg = dataclasses.replace(self)
        _check_types(cfg)
        algorithm = REGISTRY.get(cfg.algorithm)
        for name, value in (algorithm.defaults if algorithm else {}).items():
            if getattr(cfg, name, 0) is None:  # a callable default depends on other settings
                setattr(cfg, name, value(cfg) if callable(value) else value)
        validate(cfg)
        return cfg

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data.pop("extra")
        return json.dumps(data, sort_keys=True)


FIELDS = {f.name for f in dataclasses.fields(TrainConfig)} - {"extra"}


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _finite(name: str, value) -> float:
    _check(isinstance(value, (int, float)) and not isinstance(value, bool)
           and math.isfinite(value), f"{name} must be a finite number, got {value!r}")
    return float(value)


def _integer(name: str, value, minimum: int) -> None:
    _check(isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
           f"{name} must be an integer >= {minimum}, got {value!r}")


#: Settings whose value must be a string (or None where the field allows it).
_TEXT = ("algorithm", "tie", "device", "selection", "log", "k_per_worker", "topk_selection",
         "topk_values", "partition", "compressor", "feedback", "checkpoint_dir", "resume")


def _check_types(cfg: TrainConfig) -> None:
    """Type errors first, so a config file's ``algorithm = ["x"]`` or ``quiet = "no"``
    gets a message naming the setting instead of a failure further on."""
    for name in _TEXT:
        value = getattr(cfg, name)
        _check(value is None or isinstance(value, str),
               f"{name.replace('_', '-')} must be a string, got {value!r}")
    for name in ("quiet", "quantize_downlink", "unbiased", "server_feedback"):
        value = getattr(cfg, name, None)
        _check(value is None or isinstance(value, bool),
               f"{name.replace('_', '-')} must be true or false, got {value!r}")


def validate(cfg: TrainConfig) -> None:
    _check_types(cfg)
    _check(cfg.algorithm in ALGORITHMS,
           f"unknown algorithm {cfg.algorithm!r}; choose one of: {', '.join(ALGORITHMS)}")
    _check(_finite("lr", cfg.lr) > 0, f"lr must be > 0, got {cfg.lr}")
    momentum = _finite("momentum", cfg.momentum)
    _check(0 <= momentum < 1, f"momentum must be in [0, 1), got {cfg.momentum}")
    _check(_finite("weight-decay", cfg.weight_decay) >= 0,
           f"weight-decay must be >= 0, got {cfg.weight_decay}")
    _check(cfg.tie in TIE_RULES,
           f"unknown tie rule {cfg.tie!r}; choose one of: {', '.join(TIE_RULES)}")
    _check(cfg.device in DEVICES,
           f"unknown device {cfg.device!r}; choose one of: {', '.join(DEVICES)}")
    _integer("iterations", cfg.iterations, 1)
    _check(cfg.iterations < 2**32, "iterations must be < 2**32 (the header's step field)")
    _integer("seed", cfg.seed, 0)
    _integer("batch-size", cfg.batch_size, 1)
    _integer("hidden", cfg.hidden, 1)
    _integer("eval-every", cfg.eval_every, 0)
    _integer("flush-every", cfg.flush_every, 1)
    _integer("record-messages", cfg.record_messages, 0)
    _check(cfg.seed < 2**63, "seed must be < 2**63")
    if cfg.sparsity is not None:
        _check(0 < _finite("sparsity", cfg.sparsity) <= 1,
               f"sparsity must be in (0, 1], got {cfg.sparsity}")
    _check(cfg.k_per_worker in (None, "auto"),
           f"k-per-worker: only 'auto' is understood (K = c*d/M), got {cfg.k_per_worker!r}; "
           "use --sparsity for a ratio")
    _check(_finite("votes-per-coordinate", cfg.votes_per_coordinate) > 0,
           f"votes-per-coordinate must be > 0, got {cfg.votes_per_coordinate}")
    if cfg.residual is not None:
        _check(0 <= _finite("residual", cfg.residual) <= 1,
               f"residual (rho) must be in [0, 1], got {cfg.residual}")
    _check(cfg.selection in SELECTIONS,
           f"unknown selection {cfg.selection!r}; choose one of: {', '.join(SELECTIONS)}")
    _validate_quantization(cfg)
    _validate_topk(cfg)
    _validate_feedback(cfg)
    _validate_checkpoints(cfg)
    _validate_schedule_and_adversaries(cfg)
    partition_classes(cfg.partition)
    check_workload(cfg)
    _check(not (cfg.algorithm == "allreduce" and cfg.record_messages),
           "record-messages: allreduce sends raw fp32 buffers, not hpcgrad messages; "
           "there is nothing to record")


def _validate_schedule_and_adversaries(cfg: TrainConfig) -> None:
    """``--lr-schedule``/``--warmup`` (hpcgrad/training/schedule.py) and ``--adversaries``/``--attack``
    (hpcgrad/training/attacks.py; adversaries <= workers is checked once the world size is known)."""
    schedule.parse(cfg.lr_schedule)
    _integer("warmup", cfg.warmup, 0)
    _check(cfg.warmup <= cfg.iterations,
           f"warmup ({cfg.warmup} steps) must be at most the iterations ({cfg.iterations})")
    _integer("adversaries", cfg.adversaries, 0)
    _check(isinstance(cfg.attack, str) and cfg.attack in ATTACKS,
           f"unknown attack {cfg.attack!r}; choose one of: {', '.join(ATTACKS)}")


def _validate_feedback(cfg: TrainConfig) -> None:
    """``--compressor/--feedback/--error-averaging/--server-feedback`` (algorithms/ef_sgd.py)."""
    from ..algorithms.ef_sgd import FEEDBACK_MODES
    from ..compression.compressors import COMPRESSORS
    chosen = [f"--{name.replace('_', '-')}" for name in
              ("compressor", "feedback", "error_averaging", "server_feedback")
              if getattr(cfg, name) not in (None, False)]
    if cfg.algorithm != "ef-sgd":
        _check(not chosen, f"{' '.join(chosen)}: error feedback wraps the compressors of "
               f"--algorithm ef-sgd, not {cfg.algorithm}" + (
                   " (which keeps its own gradient residual, --residual)"
                   if cfg.algorithm in ("s3gd-mv", "topk") else ""))
        return
    _check(cfg.compressor in COMPRESSORS, f"unknown compressor {cfg.compressor!r}; choose "
           f"one of: {', '.join(COMPRESSORS)}")
    _check(cfg.feedback in FEEDBACK_MODES, f"unknown feedback {cfg.feedback!r}; choose one "
           f"of: {', '.join(FEEDBACK_MODES)}")
    if cfg.error_averaging is not None:
        _integer("error-averaging", cfg.error_averaging, 1)
        _check(cfg.feedback != "none", "error-averaging averages the workers' residuals; "
               "--feedback none keeps none")
    if cfg.compressor in ("topk", "randomk"):
        _check(cfg.sparsity < 1, f"{cfg.compressor}: sparsity {cfg.sparsity} selects every "
               "coordinate; use --compressor identity for no compression")
    for ignored, why in ((cfg.k_per_worker is not None, "--k-per-worker is an s3gd-mv setting; "
                          "use --sparsity"),
                         (cfg.selection != "exact", "--selection is s3gd-mv's; the topk "
                          "compressor always selects exactly"),
                         (cfg.topk_values != "fp32", "--topk-values is the topk algorithm's; "
                          "the topk compressor sends fp32 values"),
                         (cfg.residual is not None, "--residual is s3gd-mv's; ef-sgd keeps its "
                          "residual with --feedback"),
                         (cfg.quantize_downlink, "--quantize-downlink is qsgd's; use "
                          "--server-feedback to compress the downlink")):
        _check(not ignored, f"ef-sgd: {why}")


def _validate_checkpoints(cfg: TrainConfig) -> None:
    _integer("checkpoint-every", cfg.checkpoint_every, 0)
    _check(bool(cfg.checkpoint_every) == (cfg.checkpoint_dir is not None),
           "checkpoints need both --checkpoint-every N (N >= 1) and --checkpoint-dir DIR")
    for name in ("checkpoint_dir", "resume"):
        value = getattr(cfg, name)
        _check(value is None or (isinstance(value, str) and value),
               f"{name.replace('_', '-')} must be a directory path, got {value!r}")


def _validate_topk(cfg: TrainConfig) -> None:
    _check(cfg.topk_selection in TOPK_SELECTIONS,
           f"unknown topk-selection {cfg.topk_selection!r}; choose one of: "
           f"{', '.join(TOPK_SELECTIONS)}")
    _check(cfg.topk_values in TOPK_VALUES,
           f"topk-values must be fp32 or fp16, got {cfg.topk_values!r}")
    for name, rule in (("union_boost", "union-boost"), ("aggregate_hint", "aggregate-hint")):
        value = getattr(cfg, name)
        if value is None:
            continue
        flag = name.replace("_", "-")
        _check(_finite(flag, value) >= 0, f"{flag} must be >= 0, got {value}")
        _check(cfg.algorithm == "topk" and cfg.topk_selection == rule,
               f"{flag} is a weight of --algorithm topk --topk-selection {rule}; this run uses "
               f"{cfg.algorithm}" + (f" with --topk-selection {cfg.topk_selection}"
                                     if cfg.algorithm == "topk" else ""))
    _check(not cfg.unbiased or (cfg.algorithm == "topk"
                                and cfg.topk_selection == "shared-random"),
           "unbiased scaling is an option of --algorithm topk --topk-selection shared-random")
    if cfg.algorithm == "topk":
        _check(cfg.sparsity is None or cfg.sparsity < 1,
               f"topk: sparsity {cfg.sparsity} selects every coordinate (K = d); top-K needs "
               "K < d, i.e. --sparsity below 1")
        _check(cfg.k_per_worker is None, "topk: --k-per-worker is an s3gd-mv setting; "
               "use --sparsity")


def _width(name: str, value) -> None:
    """A quantizer width b: b - 1 level bits and a sign bit (docs/algorithms/dq-sgd.md)."""
    _check(isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 16,
           f"{name} must be an integer in 2..16 (bits per coordinate: a sign bit and b-1 "
           f"level bits; 2..8 is the useful range), got {value!r}")
    _check(value != 1, f"{name} 1 leaves no level bits (s = 2**0 - 1 = 0 levels: every "
           "coordinate would decode to 0); use 2 or more, or signum-mv for 1-bit signs")


def _validate_quantization(cfg: TrainConfig) -> None:
    for name in ("bits", "dq_start_bits", "min_bits", "max_bits"):
        if getattr(cfg, name) is not None:
            _width(name.replace("_", "-"), getattr(cfg, name))
    _check(isinstance(cfg.quantize_downlink, bool),
           f"quantize-downlink must be true or false, got {cfg.quantize_downlink!r}")
    if cfg.dq_rho is not None:
        _check(0 < _finite("dq-rho", cfg.dq_rho) <= 1,
               f"dq-rho must be in (0, 1], got {cfg.dq_rho}")
    if cfg.dq_horizon is not None:
        _check(isinstance(cfg.dq_horizon, int) and not isinstance(cfg.dq_horizon, bool)
               and cfg.dq_horizon >= 1,
               f"dq-horizon (T, the planned iterations) must be an integer >= 1, got "
               f"{cfg.dq_horizon!r}")
    if cfg.dq_lambda is not None:
        _check(_finite("dq-lambda", cfg.dq_lambda) > 0,
               f"dq-lambda must be > 0, got {cfg.dq_lambda}")
    if cfg.dq_window is not None:
        _integer("dq-window", cfg.dq_window, 1)
        _check(cfg.dq_window <= cfg.iterations,
               f"dq-window must be at most the iterations ({cfg.iterations}), "
               f"got {cfg.dq_window}")
    if None not in (cfg.min_bits, cfg.max_bits):
        _check(cfg.min_bits <= cfg.max_bits,
               f"min-bits {cfg.min_bits} is above max-bits {cfg.max_bits}")
        if cfg.dq_start_bits is not None:
            _check(cfg.min_bits <= cfg.dq_start_bits <= cfg.max_bits,
                   f"dq-start-bits {cfg.dq_start_bits} is outside min-bits {cfg.min_bits} .. "
                   f"max-bits {cfg.max_bits}")


def load_file(path: str | Path) -> dict:
    """Settings from a TOML file (keys as on the command line, '-' or '_')."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
    settings = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in FIELDS:
            raise ConfigError(f"config file {str(path)!r}: unknown setting {key!r}; known: "
                              + ", ".join(sorted(k.replace("_", "-") for k in FIELDS)))
        settings[name] = value
    return settings


def build(file_settings: dict, cli_settings: dict) -> TrainConfig:
    """Defaults, overlaid by the file's settings, overlaid by the command line's."""
    merged = {**file_settings, **{k: v for k, v in cli_settings.items() if v is not None}}
    return TrainConfig(**merged).resolved()
