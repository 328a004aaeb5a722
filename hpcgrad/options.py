"""Settings declared by what owns them: one :class:`Option` per setting, and the machinery that
turns a list of options into command-line arguments, checks and a dataclass.

Algorithms and compressors (:class:`Configurable` classes), the workloads and the training loop
each declare the settings they own; :mod:`hpcgrad.training.config` collects them into
``TrainConfig`` and :mod:`hpcgrad.cli` into ``hpcgrad train``'s argument groups.  So a new
algorithm with settings of its own is one module: nothing else lists them.

A setting has one name, a Python identifier (``k_per_worker``).  Its command-line flag and its
key in a TOML config file are the dashed form (``--k-per-worker``, ``k-per-worker = "auto"``; a
file may write ``k_per_worker`` too), and error messages name it so.

This module is at the bottom of the layers, beside :mod:`hpcgrad.errors`: it imports nothing
else of hpcgrad's and nothing heavy, so ``hpcgrad train --help`` stays fast.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
import re
from dataclasses import dataclass
from typing import Any, Callable

from .errors import ConfigError

#: ``"[0, 1)"``, ``"(0, 1]"``: an interval; ``"> 0"``, ``">= 1"``: a lower bound.
_NUMBER = r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:e-?\d+)?"
_INTERVAL = re.compile(rf"^([\[(])\s*({_NUMBER})\s*,\s*({_NUMBER})\s*([\])])$")
_BOUND = re.compile(rf"^(>=|>|<=|<)\s*({_NUMBER})$")
_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a finite number",
               str: "a string"}


class IgnoredSettingWarning(UserWarning):
    """A setting was given that the chosen algorithm (and compressor) does not read."""


def fail(condition: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(message)


def _is(value, kind) -> bool:
    """``isinstance`` as settings mean it: a bool is not a number, an int is a float."""
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


@dataclass(frozen=True)
class Option:
    """One setting: its name, type, default, help, and the rules its value must keep.

    ``type``      int, float, str or bool (a bool is an on/off flag on the command line), or
                  a tuple of them for a setting that takes either (``--features 64`` or
                  ``1x28x28``).
    ``default``   the value when nobody sets it.  ``None`` means "unset": the chosen
                  algorithm's ``defaults`` may fill it, otherwise it means "off" or "computed"
                  (say which in ``default_help``).  Only a setting whose default is ``None``
                  may be ``None``.
    ``choices``   the values allowed; ``unknown`` replaces the message for any other
                  (formatted with ``value``).
    ``bounds``    ``"[0, 1)"``, ``"(0, 1]"``, ``"> 0"``, ``">= 1"``: the range of a number.
    ``check``     ``check(value, label)``: a further rule of the value alone; raises
                  :class:`ConfigError`.  (Rules between settings belong to the owner's
                  ``check_settings``.)
    ``devices``   the ``--device`` values the setting works on, where that matters (a
                  non-default value on another device is refused); ``None``: any.
    ``label``     how messages name the setting (default: the dashed name).
    ``parse``     command-line text -> value, where ``type`` is not enough.
    ``strict``    given a value in a run whose choices do not read it, the setting is refused
                  (these were refused before settings were declared); any other such
                  setting is ignored with an :class:`IgnoredSettingWarning`, so config files
                  and command lines that ran before keep running.
    """

    name: str
    type: Any = str
    default: Any = None
    help: str = ""
    metavar: str | None = None
    choices: tuple | None = None
    bounds: str | None = None
    check: Callable[[Any, str], None] | None = None
    devices: tuple | None = None
    label: str | None = None
    unknown: str | None = None
    parse: Callable[[str], Any] | None = None
    default_help: str | None = None
    strict: bool = False

    def __post_init__(self):
        if not self.name.isidentifier() or self.name != self.name.lower():
            raise ValueError(f"option name {self.name!r} must be a lower-case identifier")
        for kind in self.types:
            if kind not in _TYPE_WORDS:
                raise ValueError(f"option {self.name}: type {kind!r} is not one of bool, int, "
                                 "float, str")
        if self.bounds is not None:
            self._bounds()  # a typo in a declaration fails at import, not at the first check
        if self.choices is not None:
            object.__setattr__(self, "choices", tuple(self.choices))
        if self.default is not None:
            self.check_value(self.default)

    # ------------------------------------------------------------------ names
    @property
    def key(self) -> str:
        """The dashed name: the TOML key and, after ``--``, the flag."""
        return self.name.replace("_", "-")

    @property
    def flag(self) -> str:
        return "--" + self.key

    @property
    def types(self) -> tuple:
        return self.type if isinstance(self.type, tuple) else (self.type,)

    @property
    def annotation(self):
        """The dataclass field's type: the union of ``types``, with None where unset is."""
        kinds = self.types + ((type(None),) if self.default is None else ())
        return functools.reduce(operator.or_, kinds)

    @property
    def what(self) -> str:
        return self.label or self.key

    # ------------------------------------------------------------------ checks
    def _bounds(self):
        """``(low, low_open, high, high_open, text)``; an absent bound is None."""
        text = " ".join(self.bounds.split())
        m = _INTERVAL.match(text)
        if m:
            lo, hi = float(m.group(2)), float(m.group(3))
            if not lo < hi:
                raise ValueError(f"option {self.name}: empty interval {self.bounds!r}")
            return lo, m.group(1) == "(", hi, m.group(4) == ")", "in " + text
        m = _BOUND.match(text)
        if not m:
            raise ValueError(f"option {self.name}: bounds {self.bounds!r} is neither an "
                             "interval like '[0, 1)' nor a bound like '>= 1'")
        op, value = m.group(1), float(m.group(2))
        if op.startswith(">"):
            return value, op == ">", None, False, text
        return None, False, value, op == "<", text

    def _in_bounds(self, value) -> bool:
        lo, lo_open, hi, hi_open, _ = self._bounds()
        return ((lo is None or (value > lo if lo_open else value >= lo))
                and (hi is None or (value < hi if hi_open else value <= hi)))

    def _type_message(self, value) -> str:
        if self.types == (int,) and self.bounds:
            return f"{self.what} must be an integer {self._bounds()[4]}, got {value!r}"
        words = " or ".join(_TYPE_WORDS[kind] for kind in self.types)
        return f"{self.what} must be {words}, got {value!r}"

    def check_type(self, value) -> None:
        """Refuse a value of the wrong type, naming the setting (a config file's
        ``quiet = "no"`` or ``algorithm = ["x"]``); None where the setting may be unset."""
        if value is None and self.default is None:
            return
        fail(any(_is(value, kind) for kind in self.types), self._type_message(value))

    def check_value(self, value) -> None:
        """The type, then the choices, the bounds and ``check``: every rule of the value
        alone.  None passes where the setting may be unset."""
        self.check_type(value)
        if value is None:
            return
        if self.choices is not None and value not in self.choices:
            raise ConfigError(
                self.unknown.format(value=value) if self.unknown else
                f"unknown {self.what} {value!r}; choose one of: {', '.join(self.choices)}")
        if self.types == (float,):
            fail(math.isfinite(value), f"{self.what} must be a finite number, got {value!r}")
        if self.bounds is not None:
            ok = self._in_bounds(value)
            fail(ok, self._type_message(value) if self.types == (int,) else
                 f"{self.what} must be {self._bounds()[4]}, got {value}")
        if self.check is not None:
            self.check(value, self.what)

    def check_device(self, value, device: str) -> None:
        """Refuse a value other than the default on a ``--device`` the setting lacks."""
        if self.devices is not None and device not in self.devices and value != self.default:
            raise ConfigError(f"{self.flag} {value} is not supported with --device {device} "
                              f"(only with --device {' / '.join(self.devices)})")

    # ------------------------------------------------------------------ command line
    def argument(self, default_text: str | None = None) -> tuple[tuple, dict]:
        """``(args, kwargs)`` of ``parser.add_argument`` for this option.

        Every argument's default is None, so a setting not given on the command line does
        not override the config file's (``training.config.build`` drops the Nones)."""
        helptext = self.help
        if default_text:
            helptext = f"{helptext} ({default_text})" if helptext else f"({default_text})"
        kwargs = {"dest": self.name, "default": None,
                  "help": helptext.replace("%", "%%")}  # argparse formats help with %
        if self.types == (bool,):
            kwargs["action"] = "store_true"
        else:
            kwargs["type"] = self.parse or self.types[0]
            if self.choices is not None:
                kwargs["choices"] = self.choices
            if self.metavar is not None:
                kwargs["metavar"] = self.metavar
        return (self.flag,), kwargs

    def default_text(self) -> str | None:
        """``default: ...`` for the help, or None (an on/off flag, or nothing to say)."""
        if self.default_help is not None:
            return f"default: {self.default_help}"
        if self.types == (bool,) or self.default is None:
            return None
        return f"default: {self.default}"


@dataclass(frozen=True)
class Section:
    """Options shown together in ``--help`` (an argument group; ``title`` None: the main
    list) and checked together: ``check(cfg)`` holds the rules between them."""

    title: str | None
    options: tuple
    description: str | None = None
    check: Callable[[Any], None] | None = None
    #: The :class:`Configurable` class the options belong to; None: always in effect.
    owner: Any = None


class Configurable:
    """What owns settings and is chosen by one: an algorithm (``--algorithm``), a compressor
    (``--compressor``).  Subclasses declare, at class level:

    ``name``      the value that chooses it; ``summary``: a few words for ``--help``;
                  ``docs``: its page, if it has one (``docs/algorithms/dq-sgd.md``).
    ``options``   the :class:`Option` s it owns.  An option several owners share (``sparsity``)
                  is one object, declared in the lowest layer that uses it and imported by
                  each owner.  A setting owned only by others, given a value other than its
                  default, is ignored with a warning naming who owns it (refused if the
                  option is ``strict`` or the chosen owner ``refuses_others``).
    ``defaults``  values for settings left unset (None) when this one is chosen; a callable
                  computes the value from the settings (``lambda cfg: cfg.iterations``).
    ``devices``   the ``--device`` values it runs on (checked with the settings, on every
                  rank, before anything is built); ``device_note`` says why not the others.
    ``hints``     setting (or owner) name -> what to use instead, added to the message when
                  that setting of another owner is given with this one chosen.
    """

    name: str = ""
    summary: str = ""
    docs: str = ""
    #: The flag that chooses among the subclasses, for messages.
    selected_by: str = ""
    options: tuple = ()
    #: Refuse, rather than ignore with a warning, any setting of others given with this one.
    refuses_others: bool = False
    defaults: dict = {}
    devices: tuple = ("cpu", "cuda")
    device_note: str = ""
    hints: dict = {}

    @classmethod
    def check_settings(cls, cfg) -> None:
        """Rules between this owner's settings (and the others'), on resolved settings;
        raise :class:`ConfigError` naming the settings."""

    @classmethod
    def parts(cls, cfg) -> tuple:
        """The further :class:`Configurable` classes these settings choose (ef-sgd: its
        ``--compressor``); their options are in effect too."""
        return ()

    @classmethod
    def check_device(cls, device: str) -> None:
        if device not in cls.devices:
            why = cls.device_note or f"runs on --device {' / '.join(cls.devices)} only"
            raise ConfigError(f"{cls.name} {why}; --device {device} is not supported for it "
                              "yet")


def collect(sections) -> dict:
    """name -> :class:`Option` over ``sections``, in order; an option shared by several owners
    appears once.  Two different declarations of one name are an error naming both places."""
    found: dict = {}
    where: dict = {}
    for section in sections:
        for option in section.options:
            seen = found.get(option.name)
            if seen is not None and seen is not option:
                raise ValueError(f"setting {option.name!r} is declared twice, by "
                                 f"{where[option.name]} and by {_place(section)}; declare it "
                                 "once and import it where it is shared")
            found.setdefault(option.name, option)
            where.setdefault(option.name, _place(section))
    return found


def _place(section: Section) -> str:
    if section.owner is not None:
        return f"{section.owner.selected_by} {section.owner.name}".strip()
    return repr(section.title or "the main options")


def owners_text(owners, joiner: str = "and") -> str:
    """``--algorithm s3gd-mv / topk and --compressor topk / randomk``: who reads a setting."""
    by_flag: dict = {}
    for owner in owners:
        by_flag.setdefault(owner.selected_by, []).append(owner.name)
    return f" {joiner} ".join(f"{flag} {' / '.join(names)}" for flag, names in by_flag.items())


def owner_section(owner, options: tuple) -> Section:
    """The ``--help`` group of one owner: ``options`` are the ones not shown already."""
    title = f"{owner.selected_by} {owner.name}".strip()
    about = "; ".join(text for text in (owner.summary, owner.docs) if text)
    return Section(f"{title} ({about})" if about else title, options, owner=owner)


def add_arguments(parser, sections, default_text: Callable[[Option], str | None] = None):
    """Add every option of ``sections`` to ``parser``: a section with a title becomes an
    argument group (an empty one is left out).  ``default_text(option)`` may say the default
    where the option cannot (one the algorithm decides), and more; else the option's own
    ``default: ...`` is shown."""
    for section in sections:
        if not section.options:
            continue
        target = parser if section.title is None else \
            parser.add_argument_group(section.title, section.description)
        for option in section.options:
            text = (default_text(option) if default_text else None) or option.default_text()
            args, kwargs = option.argument(text)
            target.add_argument(*args, **kwargs)


def key_name(key: str) -> str:
    """The setting a TOML key names: ``vocab-size`` and ``vocab_size`` are ``vocab_size``."""
    return key.replace("-", "_")


def make_dataclass(cls_name: str, options, *, bases=(), extra_fields=(), module=None):
    """A dataclass with one field per option (its default, its type), then ``extra_fields``
    (``(name, type, dataclasses.field(...))``).  ``module`` makes it picklable by name."""
    fields = [(o.name, o.annotation, dataclasses.field(default=o.default)) for o in options]
    cls = dataclasses.make_dataclass(cls_name, [*fields, *extra_fields], bases=tuple(bases))
    if module is not None:
        cls.__module__ = module
    return cls
