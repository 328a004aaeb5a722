"""Training settings: defaults, a TOML config file, and the command line.

Precedence: built-in defaults < ``--config FILE`` < command-line options; a setting still
unset (None) then takes the chosen algorithm's default (``Algorithm.defaults``).

Every setting is declared once, by what owns it (:class:`hpcgrad.options.Option`): the
training loop's and the checkpoints' here, the schedule's and the adversaries' in
``schedule.py`` and ``attacks.py``, the workload's in ``workloads/catalog.py``, and each
algorithm's and compressor's in its class (``options``).  :class:`TrainConfig` is made from
all of them, as ``hpcgrad train``'s arguments are (``cli.py``), so a new algorithm adds its
settings without an edit here.

Every setting is validated here, on every rank, before any communication:

1. each setting's type, then its own rules (choices, range, format);
2. the chosen algorithm, and what it chooses in turn (ef-sgd's ``--compressor``), runs on
   ``--device``;
3. a setting read only by algorithms or compressors other than the chosen ones, given a value
   other than its default, is named with who reads it: refused where it was refused before
   settings were declared (``strict`` options, and anything with ``--algorithm ef-sgd``),
   otherwise ignored with an :class:`hpcgrad.options.IgnoredSettingWarning`, which
   ``hpcgrad train`` prints on rank 0 (config files and command lines that ran before still
   run, and no setting is ignored silently);
4. the rules between settings: the training loop's, the workload's, then the chosen
   algorithm's and compressor's ``check_settings``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import sys
import warnings
from pathlib import Path

from .. import options
from ..algorithms import REGISTRY
from ..comm import topology
from ..comm.interrupts import PREEMPT_SIGNALS
from ..compression.compressors import COMPRESSORS
from ..errors import ConfigError
from ..options import Option, Section, fail
from ..workloads.catalog import WORKLOAD
from .attacks import ADVERSARIES, ATTACK
from .schedule import LR_SCHEDULE, WARMUP
from . import sharding

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ALGORITHMS = tuple(REGISTRY)
DEFAULT_ALGORITHM = "signum-mv"
DEVICES = ("cpu", "cuda")


def _below(limit_text: str, limit: int, why: str = ""):
    def check(value, label):
        fail(value < limit, f"{label} must be < {limit_text}{why}")
    return check


def _directory(value, label) -> None:
    fail(bool(value), f"{label} must be a directory path, got {value!r}")


#: The training loop's settings (``--algorithm`` is added in front, from the registry).
LOOP = (
    Option("iterations", int, 300, bounds=">= 1", metavar="N",
           check=_below("2**32", 2**32, " (the header's step field)"),
           help="training iterations"),
    Option("seed", int, 0, bounds=">= 0", metavar="S", check=_below("2**63", 2**63),
           help="seed of data, model init, sampling and tie coins"),
    Option("lr", float, None, bounds="> 0", metavar="LR", help="learning rate"),
    Option("momentum", float, None, bounds="[0, 1)", metavar="BETA",
           help="momentum in [0, 1); for signum-mv the worker momentum beta of "
                "m <- beta*m + (1-beta)*g, 0 giving signSGD"),
    Option("weight_decay", float, 0.0, bounds=">= 0", metavar="WD",
           help="weight decay; for signum-mv applied after the vote, "
                "x <- x - lr*(sign(v) + wd*x)"),
    Option("batch_size", int, 32, bounds=">= 1", metavar="B",
           help="examples per worker per step"),
    Option("eval_every", int, 50, bounds=">= 0", metavar="N",
           help="evaluate on held-out data every N steps, 0 = only at the end"),
    Option("flush_every", int, 10, bounds=">= 1", metavar="N",
           help="gather per-step records to rank 0 and flush the log every N steps"),
    Option("log", str, None, metavar="PATH", default_help="runs/ALGORITHM-nWORLD-sSEED-TIME.h5",
           help="HDF5 traffic log to write; its directory must exist (runs/ is created), "
                "an existing file is refused unless --overwrite, and the run locks it"),
    Option("overwrite", bool, False,
           help="replace an existing --log file (never one another run is writing)"),
    Option("record_messages", int, 0, bounds=">= 0", metavar="N",
           help="store the raw bytes of every uplink and downlink message of the first N "
                "iterations in the log's /messages group"),
    Option("device", str, "cpu", choices=DEVICES,
           help="where workers compute and encode: cpu, or cuda (one GPU per worker, chosen "
                "by node-local rank among CUDA_VISIBLE_DEVICES; needs CuPy). The server "
                "aggregates on the host either way"),
    Option("quiet", bool, False, help="print only the final summary"),
)


def _check_loop(cfg) -> None:
    for name in ("lr", "momentum"):
        fail(getattr(cfg, name) is not None, f"{name}: --algorithm {cfg.algorithm} has no "
             f"default {name}; give --{name}")


def _check_checkpoints(cfg) -> None:
    fail(not cfg.checkpoint_every or cfg.checkpoint_dir is not None,
         "checkpoints every N steps need both --checkpoint-every N and --checkpoint-dir DIR "
         "(--checkpoint-dir alone: a checkpoint only when a signal stops the run)")


def _check_schedule(cfg) -> None:
    fail(cfg.warmup <= cfg.iterations,
         f"warmup ({cfg.warmup} steps) must be at most the iterations ({cfg.iterations})")


CHECKPOINTS = Section("checkpoints (docs/checkpoints.md)", (
    Option("checkpoint_every", int, 0, bounds=">= 0", metavar="N",
           help="save every rank's state every N steps (needs --checkpoint-dir)"),
    Option("checkpoint_dir", str, None, metavar="DIR", check=_directory,
           help="where checkpoints go: DIR/step-NNNNNNNN/, one HDF5 file per rank; also "
                "the checkpoint of a run stopped by SIGTERM or --preempt-signal"),
    Option("resume", str, None, metavar="DIR", check=_directory,
           help="continue from the newest complete checkpoint in DIR (or from DIR, a "
                "step-NNNNNNNN directory): same parameters, state and data order, so the run "
                "continues exactly as if it had not stopped"),
    Option("preempt_signal", str, None, choices=PREEMPT_SIGNALS, metavar="SIGNAL",
           default_help="SIGTERM only",
           help="a signal that, like SIGTERM, stops the run gracefully: every rank finishes "
                "the step, a checkpoint is written (with --checkpoint-dir), the log is closed, "
                "exit status 143 (e.g. USR1 with sbatch --signal=USR1@120; "
                "choices: " + ", ".join(PREEMPT_SIGNALS) + ")"),
), check=_check_checkpoints)

SCHEDULE_AND_ADVERSARIES = Section(
    "learning-rate schedule and adversarial workers (hpcgrad/training/schedule.py, "
    "hpcgrad/training/attacks.py)", (LR_SCHEDULE, WARMUP, ADVERSARIES, ATTACK),
    check=_check_schedule)

HIERARCHY = Section("node-aware aggregation (hpcgrad/comm/topology.py, docs/hierarchy.md)",
                    (topology.HIERARCHY, topology.RANKS_PER_NODE),
                    check=topology.check_settings)


class _Settings:
    """The methods of every settings class :func:`settings_class` makes."""

    def resolved(self):
        """A copy with the chosen algorithm's defaults filled in, validated."""
        cfg = dataclasses.replace(self)
        kind = type(cfg)
        for option in kind.OPTIONS.values():  # type errors first, naming the setting
            option.check_type(getattr(cfg, option.name))
        kind.OPTIONS["algorithm"].check_value(cfg.algorithm)
        for name, value in kind.ALGORITHMS[cfg.algorithm].defaults.items():
            if getattr(cfg, name, 0) is None:  # a callable default depends on other settings
                setattr(cfg, name, value(cfg) if callable(value) else value)
        validate(cfg)
        return cfg

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data.pop("extra")
        return json.dumps(data, sort_keys=True)


def settings_class(algorithms: dict, compressors: dict):
    """A settings dataclass for these algorithms and compressors (name -> class): one field per
    setting any of them, the training loop or the workloads declare, plus ``extra`` (settings
    a benchmark passes through).  :class:`TrainConfig` is the one of the registries; a test
    makes its own with an algorithm of its own.

    The class also holds ``ALGORITHMS``, ``COMPRESSORS``, ``OPTIONS`` (name -> Option),
    ``OWNERS`` (name -> the classes that declare it) and ``SECTIONS``, from which
    ``hpcgrad train``'s argument groups are made."""
    default = DEFAULT_ALGORITHM if DEFAULT_ALGORITHM in algorithms else next(iter(algorithms))
    algorithm = Option("algorithm", str, default, choices=tuple(algorithms),
                       help="training algorithm: " + "; ".join(
                           f"{name} = {cls.summary}" for name, cls in algorithms.items()))
    sections = [Section(None, (algorithm, *LOOP), check=_check_loop)]
    shown = {o.name for o in sections[0].options}
    owners: dict = {}
    for owner in [*algorithms.values(), *compressors.values()]:
        for option in owner.options:
            owners.setdefault(option.name, []).append(owner)
        new = tuple(o for o in owner.options if o.name not in shown)
        shown.update(o.name for o in new)
        sections.append(options.owner_section(owner, new))
    sections += [WORKLOAD, sharding.SECTION, CHECKPOINTS, SCHEDULE_AND_ADVERSARIES, HIERARCHY]
    declared = options.collect(sections + [options.owner_section(owner, owner.options)
                                           for owner in [*algorithms.values(),
                                                         *compressors.values()]])
    extra = ("extra", dict, dataclasses.field(default_factory=dict, repr=False))
    cls = options.make_dataclass("TrainConfig", declared.values(), bases=(_Settings,),
                                 extra_fields=[extra], module=__name__)
    cls.__doc__ = ("Every training setting (hpcgrad.training.config): "
                   + ", ".join(declared) + ".")
    cls.ALGORITHMS, cls.COMPRESSORS = dict(algorithms), dict(compressors)
    cls.OPTIONS, cls.OWNERS, cls.SECTIONS = declared, owners, tuple(sections)
    return cls


TrainConfig = settings_class(REGISTRY, COMPRESSORS)

FIELDS = set(TrainConfig.OPTIONS)


def validate(cfg) -> None:
    """Every check of the module docstring, on settings whose defaults are filled in."""
    kind = type(cfg)
    for option in kind.OPTIONS.values():
        option.check_value(getattr(cfg, option.name))
    algorithm = kind.ALGORITHMS[cfg.algorithm]
    chosen = (algorithm, *algorithm.parts(cfg))
    for owner in chosen:
        owner.check_device(cfg.device)
    for option in kind.OPTIONS.values():
        option.check_device(getattr(cfg, option.name), cfg.device)
    _refuse_settings_of_others(cfg, chosen)
    for section in kind.SECTIONS:
        if section.owner is None and section.check is not None:
            section.check(cfg)
    for owner in chosen:
        owner.check_settings(cfg)


def _refuse_settings_of_others(cfg, chosen: tuple) -> None:
    """A setting that only algorithms or compressors not chosen read, given a value other than
    its default (or the chosen algorithm's default, which a resolved configuration holds), is
    refused if it is ``strict`` or the chosen algorithm ``refuses_others`` (as before settings
    were declared); otherwise it is ignored with an :class:`IgnoredSettingWarning` naming it,
    so that config files and command lines that ran before still run."""
    kind, algorithm = type(cfg), chosen[0]
    given = []
    for name, owners in kind.OWNERS.items():
        if any(owner in chosen for owner in owners):
            continue
        value, option = getattr(cfg, name), kind.OPTIONS[name]
        filled = algorithm.defaults.get(name)
        if value == option.default or (not callable(filled) and value == filled):
            continue
        given.append((option, owners))
    refuse = any(getattr(owner, "refuses_others", False) for owner in chosen)
    refused = [(o, owners) for o, owners in given if refuse or o.strict]
    if refused:
        raise ConfigError(_not_read(refused, chosen))
    groups: dict = {}
    for option, owners in given:
        groups.setdefault(tuple(owners), []).append((option, owners))
    for same in groups.values():
        warnings.warn(_not_read(same, chosen) + "; ignored", options.IgnoredSettingWarning,
                      stacklevel=2)


def _not_read(given: list, chosen: tuple) -> str:
    """``--x --y: settings of ...; this run uses ..., which does not read them (hint)``."""
    option, owners = given[0]
    flags = [o.flag for o, same in given if same == owners]
    who = options.owners_text(owners, "or")
    runs = " with ".join(f"{owner.selected_by} {owner.name}" for owner in chosen)
    hint = next((owner.hints[key] for owner in chosen
                 for key in (option.name, *(o.name for o in owners)) if key in owner.hints),
                None)
    return (f"{' '.join(flags)}: {'a setting' if len(flags) == 1 else 'settings'} "
            f"of {who}; this run uses {runs}, which does not read "
            f"{'it' if len(flags) == 1 else 'them'}" + (f" ({hint})" if hint else ""))


#: The largest config file read: settings are a few hundred bytes; this bounds the time and
#: memory a wrong path (a data file, a log) costs every rank.
MAX_CONFIG_BYTES = 1 << 20


def load_file(path: str | Path) -> dict:
    """Settings from a TOML file (keys as on the command line, '-' or '_').

    The file must be a regular file of at most :data:`MAX_CONFIG_BYTES` in UTF-8: a device
    (``/dev/zero``), a FIFO, a directory or a large file is refused before it is read (a FIFO
    is opened non-blocking, so a missing writer cannot stall the job), and at most that many
    bytes are ever read."""
    path = Path(path)
    name = repr(str(path))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ConfigError(f"config file {name} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config file {name} cannot be read: {exc.strerror}") from None
    try:
        info = os.fstat(fd)  # of the file opened, not of whatever the path names later
        if stat.S_ISDIR(info.st_mode):
            raise ConfigError(f"config file {name} is a directory, not a TOML file")
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"config file {name} is not a regular file (a device, FIFO or "
                              "socket); give the path of a TOML file")
        if info.st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"config file {name} is {info.st_size / 1e6:.1f} MB; a config "
                              f"file holds settings and may be at most "
                              f"{MAX_CONFIG_BYTES // 1024} KiB: is it the right file?")
        with os.fdopen(os.dup(fd), "rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)  # bounded, should it grow meanwhile
    except OSError as exc:
        raise ConfigError(f"config file {name} cannot be read: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {name} grew past {MAX_CONFIG_BYTES // 1024} KiB "
                          "while being read")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {name} is not UTF-8 text (byte 0x{raw[exc.start]:02x} "
                          f"at offset {exc.start}): a TOML file is UTF-8; is it the right "
                          "file?") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {name} is not valid TOML: {exc}") from None
    settings = {}
    for key, value in data.items():
        name = options.key_name(key)
        if name not in FIELDS:
            raise ConfigError(f"config file {str(path)!r}: unknown setting {key!r}; known: "
                              + ", ".join(sorted(k.replace("_", "-") for k in FIELDS)))
        settings[name] = value
    return settings


def build(file_settings: dict, cli_settings: dict):
    """Defaults, overlaid by the file's settings, overlaid by the command line's."""
    merged = {**file_settings, **{k: v for k, v in cli_settings.items() if v is not None}}
    return TrainConfig(**merged).resolved()
