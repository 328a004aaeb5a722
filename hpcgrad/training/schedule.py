"""Learning-rate schedules: the lr of step t as a pure function of t.

``--lr-schedule`` names the decay, ``--warmup N`` a linear warm-up in front of
it; with ``lr`` the base learning rate and ``T`` = ``--iterations``::

    lr(t) = lr * warm(t) * decay(t)            t = 0, 1, ..., T-1

    warm(t)  = (t + 1) / N   for t < N,   else 1    (N = 0: no warm-up)

    decay(t), by --lr-schedule:
      constant            1                                     (the default)
      step:EVERY:GAMMA    GAMMA ** floor(t / EVERY)             (t counted from step 0)
      cosine              F + (1 - F) * (1 + cos(pi * u)) / 2,  F = 0
      cosine:F            the same, ending at the fraction F of lr (0 <= F < 1)
                          u = clamp((t - N) / (T - N), 0, 1): the decay starts after
                          the warm-up and reaches F at t = T

So warm-up starts at ``lr / N`` and reaches ``lr`` at step ``N - 1``.  The value
depends on nothing but the settings and ``t`` (no state), so a resumed run gets
the same lr at every step, and every rank computes the same value; the runtime
hands it to ``Algorithm.set_lr`` as float32 before each step's exchange.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError
from ..options import Option

KINDS = ("constant", "step", "cosine")
SYNTAX = "constant, step:EVERY:GAMMA or cosine[:FLOOR]"


@dataclass(frozen=True)
class Schedule:
    """A parsed ``--lr-schedule`` plus ``--warmup``; call :meth:`lr_at`."""

    lr: float
    iterations: int
    kind: str = "constant"
    every: int = 0
    gamma: float = 1.0
    floor: float = 0.0
    warmup: int = 0

    @property
    def is_constant(self) -> bool:
        """True when every step's lr is the base lr (no decay, no warm-up)."""
        return self.kind == "constant" and self.warmup == 0

    def factor(self, step: int) -> float:
        """``warm(step) * decay(step)``: the multiplier of the base lr."""
        warm = (step + 1) / self.warmup if step < self.warmup else 1.0
        if self.kind == "step":
            decay = self.gamma ** (step // self.every)
        elif self.kind == "cosine":
            span = self.iterations - self.warmup
            u = min(max((step - self.warmup) / span, 0.0), 1.0) if span > 0 else 1.0
            decay = self.floor + (1.0 - self.floor) * (1.0 + math.cos(math.pi * u)) / 2.0
        else:
            decay = 1.0
        return warm * decay

    def lr_at(self, step: int) -> float:
        """The learning rate of step ``step`` (float64; algorithms store it as float32)."""
        if self.is_constant:
            return self.lr
        return self.lr * self.factor(step)


def parse(text: str) -> dict:
    """``kind``, ``every``, ``gamma``, ``floor`` of a ``--lr-schedule`` string.

    Raises :class:`ConfigError` with the accepted syntax on anything else.
    """
    def bad(why: str) -> ConfigError:
        return ConfigError(f"lr-schedule {text!r}: {why}; use {SYNTAX} (e.g. step:100:0.5, "
                           "cosine, cosine:0.1)")

    if not isinstance(text, str):
        raise ConfigError(f"lr-schedule must be a string ({SYNTAX}), got {text!r}")
    head, *args = text.split(":")
    if head == "constant":
        if args:
            raise bad("constant takes no parameters")
        return {"kind": "constant"}
    if head == "step":
        if len(args) != 2:
            raise bad("step needs EVERY and GAMMA")
        every, gamma = args
        if not every.isdigit() or int(every) < 1:
            raise bad(f"EVERY must be an integer >= 1 (steps between decays), got {every!r}")
        try:
            g = float(gamma)
        except ValueError:
            raise bad(f"GAMMA must be a number, got {gamma!r}") from None
        if not (math.isfinite(g) and 0 < g <= 1):
            raise bad(f"GAMMA must be in (0, 1] (the factor applied every EVERY steps), "
                      f"got {gamma!r}")
        return {"kind": "step", "every": int(every), "gamma": g}
    if head == "cosine":
        if len(args) > 1:
            raise bad("cosine takes at most one parameter, the FLOOR")
        floor = 0.0
        if args:
            try:
                floor = float(args[0])
            except ValueError:
                raise bad(f"FLOOR must be a number, got {args[0]!r}") from None
            if not (math.isfinite(floor) and 0 <= floor < 1):
                raise bad(f"FLOOR must be in [0, 1) (the final lr as a fraction of --lr), "
                          f"got {args[0]!r}")
        return {"kind": "cosine", "floor": floor}
    raise bad(f"unknown schedule {head!r}")


def from_config(config) -> Schedule:
    """The schedule of a resolved :class:`hpcgrad.training.config.TrainConfig`."""
    return Schedule(lr=float(config.lr), iterations=int(config.iterations),
                    warmup=int(config.warmup), **parse(config.lr_schedule))


#: ``--lr-schedule`` / ``--warmup`` (warm-up <= iterations is a rule of the training settings).
LR_SCHEDULE = Option("lr_schedule", str, "constant", metavar="SCHEDULE",
                     check=lambda value, label: parse(value),
                     help="lr of step t: constant; step:EVERY:GAMMA = lr*GAMMA^floor(t/EVERY); "
                          "cosine = from lr down to 0 over --iterations (after the warm-up); "
                          "cosine:FLOOR = down to FLOOR*lr, 0 <= FLOOR < 1")
WARMUP = Option("warmup", int, 0, bounds=">= 0", metavar="N",
                help="linear warm-up in front of the schedule: step t < N uses lr*(t+1)/N")
