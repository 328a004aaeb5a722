"""The contract every algorithm implements.

An algorithm is a few small functions around explicit state, in the spirit of
PyTorch's DDP communication hooks.  Each receives the rank's
:class:`~hpcgrad.algorithms.step.StepContext` ``ctx`` (rank, worker index, step,
learning rate, the flat parameters, the device, the shard of coordinates):

``before_gradient(ctx)`` / ``after_gradient(ctx)``
    on ranks 1..M, around the forward/backward pass: the point the gradient is
    taken at may move (step-ahead error feedback), and is put back after;
``worker_step(ctx, grad, uplink)``
    on ranks 1..M: turn the local gradient into the uplink message body
    (worker-side state such as momentum or residuals lives on the object);
``server_step(ctx, uplinks, downlink)``
    on rank 0: aggregate the M uplinks (``uplinks.header(w)``, ``uplinks.body(w)``,
    headers parsed once, by the transport; :func:`~hpcgrad.algorithms.step.decode_into_sum`
    and :func:`~hpcgrad.algorithms.step.decode_into_rows` run the usual loops) into the
    downlink body;
``decode(ctx, downlink)``
    on every rank, server included: the downlink body (``downlink.padded_body``, its
    header ``downlink.header``) into what the update reads -- phase ``decode``.  An
    algorithm whose update kernel reads the body itself (signum-mv's packed signs)
    returns the body;
``apply(ctx, decoded)``
    on every rank: update ``ctx.params`` from what :meth:`decode` returned -- phase
    ``update`` -- so every replica stays bit-identical.

Messages: an outgoing message (``uplink`` on workers, ``downlink`` on the server) has
``padded_body``, where the body is written (zeroed where the previous step's body was,
for variable-length messages), ``write(codec, flags, body_length) -> Header``, which
declares the body and returns the header that is sent, and ``header`` (the header
sent).  Which codec carries each direction is declared by ``uplink`` / ``downlink``.
An algorithm whose messages change length from step to step (sparse or adaptive
codecs) sets ``variable_length`` and lists every codec a direction may use in
``uplink_codecs()`` / ``downlink_codecs()``; a fixed-length message needs no ``write``.
The runtime (``exchange.py``) owns buffers, MPI, header checks, timing and logging; when
each method runs within a step is drawn in ``docs/architecture.md`` ("One iteration's data
path"), and what an algorithm module must hold is listed there too ("Adding an algorithm").

Per-step figures for the log (``nnz_up``, ``union_size``, ...) are declared in
``step_fields`` and filled by ``server_step`` into ``self.step_stats``.

Settings: an algorithm declares the ones it owns (``options``), a ``summary`` for
``--algorithm``'s help, the devices it runs on, per-algorithm ``defaults`` and its rules
between settings (``check_settings``), as every :class:`hpcgrad.options.Configurable` does.
``hpcgrad.training.config`` and ``hpcgrad train``'s arguments are made from these, and the
package finds the module by itself (``hpcgrad/algorithms/__init__.py``): a new algorithm is
one module.
"""

from __future__ import annotations

import numpy as np

from .. import kernels
from ..options import Configurable
from ..wire.codecs import Codec
from .step import Shard


def f32(value) -> np.float32:
    return np.float32(value)


class Algorithm(Configurable):
    name: str = ""
    selected_by = "--algorithm"
    #: Where ``--algorithm``'s choices and ``--help`` list it: by ``order``, then by name.
    order: int = 1000
    #: "parameter-server" (Gatherv to rank 0, Bcast back) or "allreduce".
    topology: str = "parameter-server"
    uplink: Codec
    downlink: Codec
    #: Defaults of settings whose right value depends on the algorithm.
    defaults = {"lr": 0.1, "momentum": 0.9}
    variable_length = False
    #: Extra per-step log datasets: name -> (one column per worker?, dtype).
    step_fields: dict = {}
    #: The state a checkpoint saves: attribute paths ("residual", "sgd.buffer") whose
    #: values are arrays, numbers, or None before first use (hpcgrad/training/checkpoint.py).
    state_names: tuple = ()
    #: Error averaging every this many steps (0: never; see residual_to_average).
    average_every = 0

    def __init__(self, config, num_params: int, num_workers: int, segments=None):
        self.config = config
        self.num_params = num_params
        self.num_workers = num_workers
        #: Sizes of the parameter tensors, in flat-vector order (one segment if unknown).
        self.segments = [int(n) for n in segments] if segments is not None else [num_params]
        #: The coordinates the exchange covers, and the tensors in them (one shard today).
        self.shard = Shard.whole(self.segments)
        #: Where each tensor starts in the flat vector, plus the end (L + 1 int64).
        self.offsets = self.shard.offsets
        #: Rank 0, after each server_step: the values of ``step_fields`` for the step.
        self.step_stats = {}

    def metadata(self) -> dict:
        """Algorithm-specific run attributes for the log."""
        return {}

    def uplink_codecs(self) -> tuple:
        return (self.uplink,)

    def downlink_codecs(self) -> tuple:
        return (self.downlink,)

    def set_lr(self, lr: float) -> None:
        """Every rank, server included, before each step's exchange, with the same value on
        all ranks: the learning rate of this step (``--lr-schedule``, hpcgrad/training/schedule.py).

        Stored as float32, as the constructor stores ``config.lr``: ``self.lr`` where the
        algorithm has one, and ``self.sgd.lr`` where it keeps a :class:`MomentumSGD` (both
        when it has both).  An algorithm that keeps its lr elsewhere overrides this."""
        found = False
        if hasattr(self, "lr"):
            self.lr = f32(lr)
            found = True
        if getattr(self, "sgd", None) is not None:
            self.sgd.lr = f32(lr)
            found = True
        if not found:
            raise NotImplementedError(f"{self.name} keeps its learning rate neither in "
                                      "self.lr nor in self.sgd; it must override set_lr to "
                                      "follow --lr-schedule")

    def before_gradient(self, ctx) -> None:
        """Workers, before the forward pass: the point the gradient is taken at may move
        (step-ahead error feedback); :meth:`after_gradient` puts ``ctx.params`` back."""

    def after_gradient(self, ctx) -> None:
        """Workers, after the backward pass: undo :meth:`before_gradient`."""

    def residual_to_average(self, ctx):
        """Workers, after the update: an array to replace by the workers' mean, or None
        (error averaging; the exchange runs the Allreduce among the workers)."""
        return None

    def worker_step(self, ctx, grad, uplink) -> None:
        raise NotImplementedError

    def server_step(self, ctx, uplinks, downlink) -> None:
        raise NotImplementedError

    def decode(self, ctx, downlink):
        """The downlink body as the update reads it (default: the padded body itself)."""
        return downlink.padded_body

    def apply(self, ctx, decoded) -> None:
        raise NotImplementedError


class MomentumSGD:
    """``buf <- mu*buf + (g + wd*x);  x <- x - lr*buf`` (PyTorch's SGD), allocation-free.

    ``g`` is the aggregated gradient; every rank holds an identical copy of
    this state, so the update needs no communication.
    """

    def __init__(self, num_params: int, lr: float, momentum: float, weight_decay: float):
        self.lr, self.mu, self.wd = f32(lr), f32(momentum), f32(weight_decay)
        self.buffer = self.scratch = None  # allocated on first use, where params live

    def _place_buffer(self, like) -> None:
        """The buffer where ``like`` lives: allocated on first use, or moved there once (a
        checkpoint restores it on the host; a GPU worker's steps run on the device)."""
        xp = kernels.array_module(like)
        if self.buffer is None:
            self.buffer = xp.zeros_like(like)
        elif kernels.array_module(self.buffer) is not xp:
            self.buffer = xp.asarray(self.buffer)

    def update(self, params, grad, out) -> None:
        """``buf <- mu*buf + (g + wd*x)``, then ``out <- lr*buf``: the step ``x -= out``
        without taking it (error feedback sends it).  ``params`` may be None when the
        weight decay is 0 (a benchmark's exchange, which has no model)."""
        xp = kernels.array_module(grad)
        self._place_buffer(grad)
        if params is None:
            if self.wd:
                raise ValueError("momentum SGD with weight decay needs the parameters")
            out[...] = grad
        else:
            xp.multiply(params, self.wd, out=out)
            out += grad
        self.buffer *= self.mu
        self.buffer += out
        xp.multiply(self.buffer, self.lr, out=out)

    def step(self, params, grad) -> None:
        xp = kernels.array_module(params)
        if self.scratch is None:
            self.scratch = xp.empty_like(params)
        self._place_buffer(params)
        if self.wd:
            self.update(params, grad, self.scratch)
        else:
            # Without weight decay ``x*0 + g`` is ``g`` (up to the sign of a zero), so the two
            # passes that form it are skipped: four passes over d instead of six, the same
            # float32 operations in the same order otherwise.
            self.buffer *= self.mu
            self.buffer += grad
            xp.multiply(self.buffer, self.lr, out=self.scratch)
        params -= self.scratch
