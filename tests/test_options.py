"""Settings declared by what owns them (hpcgrad/options.py): the Option machinery, and the
promise it keeps -- an algorithm declared in one module, with settings of its own, shows up in
``hpcgrad train``'s arguments, the config file's keys and the validation with nothing else
edited."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hpcgrad import cli, options
from hpcgrad.algorithms import REGISTRY
from hpcgrad.algorithms.dense_ps import DensePS
from hpcgrad.compression.compressors import COMPRESSORS, SPARSITY
from hpcgrad.errors import ConfigError
from hpcgrad.options import Configurable, IgnoredSettingWarning, Option, Section, fail
from hpcgrad.training import config
from hpcgrad.training.config import TrainConfig, load_file

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------ one option

def test_the_flag_and_the_toml_key_are_the_dashed_name():
    option = Option("k_per_worker", str, None)
    assert (option.key, option.flag) == ("k-per-worker", "--k-per-worker")
    assert options.key_name("k-per-worker") == options.key_name("k_per_worker") == "k_per_worker"


@pytest.mark.parametrize("declaration, words", [
    (dict(name="Bad-Name"), "lower-case identifier"),
    (dict(name="x", type=list), "not one of bool, int, float, str"),
    (dict(name="x", type=float, bounds="between 0 and 1"), "neither an interval"),
    (dict(name="x", type=float, bounds="(1, 0]"), "empty interval"),
    (dict(name="x", type=int, default=0, bounds=">= 1"), "x must be an integer >= 1, got 0"),
    (dict(name="x", type=str, default="c", choices=("a", "b")), "unknown x 'c'"),
])
def test_a_bad_declaration_fails_where_it_is_declared(declaration, words):
    with pytest.raises((ValueError, ConfigError)) as err:
        Option(**declaration)
    assert words in str(err.value)


@pytest.mark.parametrize("option, value, words", [
    (Option("batch_size", int, 32, bounds=">= 1"), 2.5, "batch-size must be an integer >= 1, "
                                                        "got 2.5"),
    (Option("batch_size", int, 32, bounds=">= 1"), True, "must be an integer >= 1, got True"),
    (Option("batch_size", int, 32, bounds=">= 1"), None, "got None"),  # only unset-able ones
    (Option("seed", int, 0), "7", "seed must be an integer, got '7'"),
    (Option("rate", float, 0.5, bounds="[0, 1)"), 1.0, "rate must be in [0, 1), got 1.0"),
    (Option("rate", float, 0.5, bounds="[0, 1)"), float("nan"), "must be a finite number"),
    (Option("rate", float, None, bounds="> 0"), "fast", "rate must be a finite number, "
                                                       "got 'fast'"),
    (Option("rate", float, None, bounds="(0, 1]", label="rate (rho)"), 0, "rate (rho) must be "
                                                                           "in (0, 1], got 0"),
    (Option("quiet", bool, False), "no", "quiet must be true or false, got 'no'"),
    (Option("log", str, None), 5, "log must be a string, got 5"),
    (Option("tie", str, "a", choices=("a", "b")), "c", "unknown tie 'c'; choose one of: a, b"),
    (Option("tie", str, "a", choices=("a", "b"), unknown="tie: {value!r} is neither a nor b"),
     "c", "tie: 'c' is neither a nor b"),
    (Option("shape", (int, str), None), 1.5, "shape must be an integer or a string, got 1.5"),
    (Option("even", int, 2, check=lambda v, label: fail(v % 2 == 0, f"{label} must be even")),
     3, "even must be even"),
])
def test_a_bad_value_is_refused_naming_the_setting(option, value, words):
    with pytest.raises(ConfigError) as err:
        option.check_value(value)
    assert words in str(err.value)


def test_good_values_pass_and_unset_passes_where_the_default_is_unset():
    Option("rate", float, None, bounds="> 0").check_value(None)
    Option("rate", float, None, bounds="> 0").check_value(3)  # an int is a number
    Option("shape", (int, str), None).check_value("1x28x28")
    Option("n", int, 1, bounds=">= 1").check_value(10**12)


def test_an_option_for_some_devices_refuses_a_value_on_the_others():
    option = Option("fused", bool, False, devices=("cuda",))
    option.check_device(False, "cpu")  # the default is no claim
    option.check_device(True, "cuda")
    with pytest.raises(ConfigError, match="--fused True is not supported with --device cpu"):
        option.check_device(True, "cpu")


# ------------------------------------------------------------------------ command line

def _parser(sections, default_text=None):
    parser = argparse.ArgumentParser(prog="t")
    options.add_arguments(parser, sections, default_text)
    return parser


SECTIONS = (
    Section(None, (Option("rounds", int, 3, bounds=">= 1", metavar="N", help="how many"),
                   Option("quiet", bool, False, help="say less"))),
    Section("the knob (a group)", (
        Option("knob", str, None, choices=("low", "high"), default_help="low",
               help="which knob, 100% turned"),
        Option("shape", (int, str), None, metavar="F|CxHxW",
               parse=lambda t: int(t) if t.isdigit() else t)),
        description="the knob's settings"),
    Section("empty", ()),
)


def test_sections_become_arguments_and_groups_with_the_defaults_in_the_help():
    parser = _parser(SECTIONS)
    text = parser.format_help()
    assert "the knob (a group):" in text and "the knob's settings" in text
    assert "empty:" not in text  # a group without options is left out
    assert "how many (default: 3)" in text
    assert "100% turned (default: low)" in " ".join(text.split())
    assert "--rounds N" in text and "--shape F|CxHxW" in text


def test_an_unspecified_argument_is_none_so_a_config_file_keeps_its_value():
    args = vars(_parser(SECTIONS).parse_args([]))
    assert args == {"rounds": None, "quiet": None, "knob": None, "shape": None}
    args = _parser(SECTIONS).parse_args(["--rounds", "7", "--quiet", "--knob", "high",
                                         "--shape", "1x28x28"])
    assert (args.rounds, args.quiet, args.knob, args.shape) == (7, True, "high", "1x28x28")
    assert _parser(SECTIONS).parse_args(["--shape", "64"]).shape == 64


def test_argparse_refuses_a_choice_or_a_type_it_cannot_read(capsys):
    for argv in (["--knob", "mid"], ["--rounds", "many"]):
        with pytest.raises(SystemExit):
            _parser(SECTIONS).parse_args(argv)
    assert "invalid choice: 'mid'" in capsys.readouterr().err


def test_the_dataclass_has_a_field_per_option_with_its_default():
    declared = options.collect(SECTIONS)
    cls = options.make_dataclass("Settings", declared.values())
    made = cls()
    assert (made.rounds, made.quiet, made.knob, made.shape) == (3, False, None, None)
    assert cls(rounds=9).rounds == 9


def test_two_declarations_of_one_name_are_an_error_naming_both():
    class Owner(Configurable):
        name, selected_by = "mine", "--algorithm"

    twin = Section(None, (Option("rounds", int, 5),), owner=Owner)
    with pytest.raises(ValueError, match="'rounds' is declared twice, by 'the main options' "
                                         "and by --algorithm mine"):
        options.collect([*SECTIONS, twin])


# ------------------------------------------------------------------- the real registry

def test_the_registry_is_found_in_a_stable_order():
    # The algorithms of this release keep their order in --help and messages; an algorithm
    # added later takes its place by its ``order`` without this test being edited.
    seed = ["signum-mv", "s3gd-mv", "topk", "qsgd", "dq-sgd", "ef-sgd", "fp32-ps", "fp16-ps",
            "allreduce"]
    assert [name for name in REGISTRY if name in seed] == seed
    assert list(REGISTRY) == [cls.name for cls in sorted(
        REGISTRY.values(), key=lambda cls: (cls.order, cls.name))]
    assert list(COMPRESSORS) == ["identity", "scaled-sign", "topk", "randomk", "qsgd"]
    for owner in [*REGISTRY.values(), *COMPRESSORS.values()]:
        assert owner.summary, f"{owner.name} has no summary for --help"
        assert all(isinstance(o, Option) for o in owner.options), owner.name


def test_every_setting_is_a_command_line_flag_and_a_toml_key(tmp_path):
    parser = cli.build_parser()
    args = parser.parse_args(["train"])
    assert set(config.FIELDS) <= set(vars(args))
    path = tmp_path / "run.toml"
    path.write_text('algorithm = "s3gd-mv"\nk-per-worker = "auto"\nvotes_per_coordinate = 2.0\n')
    assert load_file(path) == {"algorithm": "s3gd-mv", "k_per_worker": "auto",
                               "votes_per_coordinate": 2.0}


def test_a_shared_setting_is_one_object_and_the_help_says_who_reads_it():
    owners = TrainConfig.OWNERS["sparsity"]
    assert {o.name for o in owners} == {"s3gd-mv", "topk", "randomk"}
    assert all(SPARSITY in o.options for o in owners)
    parser = argparse.ArgumentParser()
    cli.add_train_options(parser)
    text = " ".join(parser.format_help().split())
    assert "read by --algorithm s3gd-mv / topk and --compressor topk / randomk" in text
    assert "--algorithm ef-sgd (error feedback" in text  # a group per algorithm


@pytest.mark.parametrize("settings, words", [
    (dict(algorithm="qsgd", tie="zero"), "--tie: a setting of --algorithm signum-mv; this run "
                                         "uses --algorithm qsgd, which does not read it; "
                                         "ignored"),
    (dict(algorithm="dq-sgd", bits=3), "use --dq-start-bits"),
])
def test_a_setting_the_run_would_ignore_is_named_with_its_owner_in_a_warning(settings, words):
    """Such a command line ran before settings were declared: it still runs, not silently."""
    with pytest.warns(IgnoredSettingWarning) as record:
        cfg = TrainConfig(**settings).resolved()
    assert [words in str(w.message) for w in record] == [True]
    assert cfg.algorithm == settings["algorithm"]


@pytest.mark.parametrize("settings, words", [
    (dict(algorithm="ef-sgd", compressor="scaled-sign", sparsity=0.05),
     "a setting of --algorithm s3gd-mv / topk or --compressor topk / randomk; this run uses "
     "--algorithm ef-sgd with --compressor scaled-sign"),
    (dict(algorithm="signum-mv", compressor="topk", feedback="ef"),
     "--compressor --feedback: settings of --algorithm ef-sgd"),
])
def test_a_setting_refused_before_settings_were_declared_still_is(settings, words):
    # (ef-sgd refused --device cuda too, until its worker step ran where the gradient lives:
    # an algorithm's own refusal is checked with the test's knob-ps below.)
    with pytest.raises(ConfigError) as err:
        TrainConfig(**settings).resolved()
    assert words in str(err.value)


def test_settings_the_chosen_owners_read_are_accepted():
    TrainConfig(algorithm="ef-sgd", compressor="randomk", sparsity=0.05).resolved()
    TrainConfig(algorithm="ef-sgd", compressor="qsgd", bits=3).resolved()
    cfg = TrainConfig(algorithm="ef-sgd").resolved()  # ef-sgd's defaults fill sparsity, bits
    assert cfg.resolved() == cfg  # and resolving again accepts them


# --------------------------------------------------------- an algorithm of the test's own

KNOB = Option("knob_level", int, None, bounds=">= 1", metavar="K",
              help="how far the test's knob turns")


class KnobPS(DensePS):
    """A test algorithm: fp32-ps with a setting of its own, and a shared one."""

    name = "knob-ps"
    summary = "the test's own algorithm"
    options = (KNOB, SPARSITY)
    defaults = {"lr": 0.1, "momentum": 0.9, "knob_level": 3, "sparsity": 0.5}
    devices = ("cpu",)

    @classmethod
    def check_settings(cls, cfg):
        fail(cfg.knob_level <= cfg.iterations,
             f"knob-level {cfg.knob_level} is more than the iterations ({cfg.iterations})")


@pytest.fixture(scope="module")
def with_knob():
    """The settings class of the registries plus :class:`KnobPS`."""
    return config.settings_class({**REGISTRY, KnobPS.name: KnobPS}, COMPRESSORS)


def test_a_registered_algorithm_is_in_the_parser(with_knob):
    parser = argparse.ArgumentParser()
    cli.add_train_options(parser, with_knob)
    text = " ".join(parser.format_help().split())
    assert "--algorithm knob-ps (the test's own algorithm): --knob-level K how far the test's " \
           "knob turns (default: 3)" in text
    assert "knob-ps = the test's own algorithm" in text
    args = parser.parse_args(["--algorithm", "knob-ps", "--knob-level", "4"])
    given = {k: v for k, v in vars(args).items() if v is not None and k != "config"}
    cfg = with_knob(**given).resolved()
    assert (cfg.algorithm, cfg.knob_level, cfg.sparsity, cfg.lr) == ("knob-ps", 4, 0.5, 0.1)
    assert '"knob_level": 4' in cfg.to_json()
    assert "knob_level" not in config.FIELDS  # the real TrainConfig is not touched


@pytest.mark.parametrize("settings, words", [
    (dict(algorithm="knob-ps", knob_level=0), "knob-level must be an integer >= 1, got 0"),
    (dict(algorithm="knob-ps", knob_level=9, iterations=5), "knob-level 9 is more than the "
                                                           "iterations (5)"),
    (dict(algorithm="knob-ps", device="cuda"), "knob-ps runs on --device cpu only; --device "
                                               "cuda is not supported for it yet"),
    (dict(algorithm="knob", knob_level=2), "unknown algorithm 'knob'; choose one of: "
                                           "signum-mv, "),
])
def test_a_registered_algorithm_is_validated(with_knob, settings, words):
    with pytest.raises(ConfigError) as err:
        with_knob(**settings).resolved()
    assert words in str(err.value)


@pytest.mark.parametrize("settings, words", [
    (dict(algorithm="knob-ps", tie="zero"), "--tie: a setting of --algorithm signum-mv"),
    (dict(algorithm="fp32-ps", knob_level=2), "--knob-level: a setting of --algorithm "
                                              "knob-ps; this run uses --algorithm fp32-ps"),
])
def test_a_registered_algorithm_and_others_settings(with_knob, settings, words):
    with pytest.warns(IgnoredSettingWarning, match=words):
        with_knob(**settings).resolved()


def test_a_new_module_is_one_file(tmp_path):
    """Copy the package, add one algorithm module, nothing else: the registry, the settings,
    ``hpcgrad train --help`` and the config file's keys all have it."""
    shutil.copytree(ROOT / "hpcgrad", tmp_path / "hpcgrad",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "hpcgrad" / "algorithms" / "knob_ps.py").write_text(textwrap.dedent('''
        """A test algorithm in a module of its own."""
        from ..options import Option
        from .dense_ps import DensePS

        KNOB = Option("knob_level", int, 3, bounds=">= 1", metavar="K", help="the knob")


        class KnobPS(DensePS):
            name = "knob-ps"
            summary = "one file"
            order = 75
            options = (KNOB,)
        '''))
    (tmp_path / "run.toml").write_text('algorithm = "knob-ps"\nknob-level = 5\n')
    probe = textwrap.dedent('''
        import contextlib, io, json
        from hpcgrad.algorithms import REGISTRY
        from hpcgrad.cli import main
        from hpcgrad.training.config import build, load_file
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            main(["train", "--help"])
        cfg = build(load_file("run.toml"), {})
        print(json.dumps({"registry": list(REGISTRY), "help": out.getvalue(),
                          "knob": cfg.knob_level}))
        ''')
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    run = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    found = json.loads(run.stdout.strip().splitlines()[-1])
    registry = found["registry"]
    assert set(registry) == set(REGISTRY) | {"knob-ps"}
    # Its ``order`` puts it between fp32-ps and fp16-ps, whatever else is registered.
    assert registry.index("fp32-ps") + 1 == registry.index("knob-ps") == \
        registry.index("fp16-ps") - 1
    assert "--algorithm knob-ps (one file):" in found["help"]
    assert "--knob-level K" in found["help"]
    assert found["knob"] == 5
