"""Checkpoints: every rank's training state after a step, and an exact resume.

Layout (``docs/checkpoints.md``)::

    DIR/step-00000200/rank-00000.h5    one HDF5 file per rank
                      rank-00001.h5 ...

``step-N`` holds the state after N completed steps.  Every rank writes its file
into ``DIR/.step-N.partial/``; after a barrier rank 0 renames the directory to
``step-N``, so a ``step-N`` directory is always complete (a job killed while
writing leaves only a ``.partial`` directory, which resume ignores).

A rank's file holds what its next step depends on: its algorithm's state
(``Algorithm.state_names``: residuals, momentum, ...; vectors of the model's
length are stored per parameter *name*, ``state/<key>/<parameter>``), its
sampler position, torch's RNG state, and on rank 0 the parameters
(``params/<parameter>``, every replica being identical) and the run totals of
the summary.  Its attributes name the run: algorithm, world size, settings.

Resume checks that the checkpoint was written by a run of the same algorithm,
world size, model (parameter names and shapes) and settings (all but those that
do not change the trajectory: ``IGNORED``) and raises :class:`ConfigError`
naming every difference; nothing is restored unless everything matches.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import torch

from .. import __version__
from ..errors import ConfigError, HpcgradError

FORMAT = "hpcgrad-checkpoint"
FORMAT_VERSION = 1
#: Settings a resumed run may change: they do not change the trajectory.  (``iterations``
#: may grow to extend a run, unless a cosine lr schedule is spread over it; settings
#: derived from it, such as DQ-SGD's horizon, are compared as resolved.)
IGNORED = {"iterations", "log", "quiet", "eval_every", "flush_every", "record_messages",
           "checkpoint_every", "checkpoint_dir", "resume", "preempt_signal"}
_STEP_DIR = re.compile(r"^step-(\d{8,})$")


def rank_file(directory: Path, rank: int) -> Path:
    return Path(directory) / f"rank-{rank:05d}.h5"


def _trajectory_settings(config) -> dict:
    settings = json.loads(config.to_json())
    spread = str(settings.get("lr_schedule", "constant")).startswith("cosine")
    ignored = IGNORED - ({"iterations"} if spread else set())
    return {k: v for k, v in settings.items() if k not in ignored}


def settings_differences(saved: dict, config) -> list[str]:
    """The settings of ``config`` that steer training and differ from a checkpoint's.

    A setting the checkpoint does not name did not exist when it was written (an algorithm
    added since, with settings of its own): it is compared as that setting's default, the
    value the run that wrote the checkpoint behaved with."""
    now = _trajectory_settings(config)
    options = getattr(type(config), "OPTIONS", {})
    problems = []
    for key in sorted(set(saved) | set(now)):
        if key == "algorithm":
            continue
        before = saved[key] if key in saved else getattr(options.get(key), "default", None)
        if before != now.get(key):
            problems.append(f"{key.replace('_', '-')}: checkpoint {before!r}, "
                            f"now {now.get(key)!r}")
    return problems


def _get(obj, path: str):
    """``alg.sgd.buffer`` for ``"sgd.buffer"``; None where a part is missing or None (an
    algorithm without momentum has no ``sgd``)."""
    for part in path.split("."):
        obj = getattr(obj, part, None)
    return obj


def _set(obj, path: str, value, xp=np) -> None:
    """Restore one state entry; arrays go to the array module ``xp`` of the run's
    parameters (NumPy, or CuPy on a GPU rank)."""
    *parents, last = path.split(".")
    for part in parents:
        obj = getattr(obj, part, None)
        if obj is None:
            if value is None:
                return  # not kept by this run, not saved by the checkpoint
            raise ConfigError(f"the checkpoint holds {path}, which this run's algorithm does "
                              "not keep")
    current = getattr(obj, last, None)
    if isinstance(value, np.ndarray) and hasattr(current, "shape") \
            and current.shape == value.shape and current.dtype == value.dtype:
        current[...] = xp.asarray(value)  # in place: other objects may hold views of it
    elif isinstance(value, np.ndarray):
        setattr(obj, last, xp.asarray(value))
    elif value is None or current is None:
        setattr(obj, last, value if value is None else value.item())
    else:
        setattr(obj, last, type(current)(value))


# ----------------------------------------------------------------------- save

def save(directory, step: int, comm, flat, alg, sampler, totals: dict, config) -> Path:
    """Collective: write the state after ``step`` completed steps; return the directory."""
    rank = comm.Get_rank()
    final = Path(directory) / f"step-{step:08d}"
    partial = Path(directory) / f".step-{step:08d}.partial"
    error = None
    if rank == 0:
        try:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        except OSError as exc:
            error = f"cannot create the checkpoint directory {str(partial)!r}: {exc}"
    error = comm.bcast(error, root=0)
    if error:
        raise HpcgradError(error)
    try:
        _write(rank_file(partial, rank), step, comm, flat, alg, sampler, totals, config)
    except OSError as exc:
        error = f"rank {rank} cannot write its checkpoint file: {exc}"
    errors = [e for e in comm.allgather(error) if e]
    if errors:
        raise HpcgradError(errors[0])
    if rank == 0:
        shutil.rmtree(final, ignore_errors=True)  # a re-run over an old checkpoint
        os.replace(partial, final)
    comm.Barrier()
    return final


def _write(path, step, comm, flat, alg, sampler, totals, config) -> None:
    rank = comm.Get_rank()
    with h5py.File(path, "w") as f:
        f.attrs.update({"format": FORMAT, "format_version": FORMAT_VERSION, "step": step,
                        "rank": rank, "world_size": comm.Get_size(),
                        "algorithm": alg.name, "num_params": flat.count,
                        "parameters": json.dumps(list(zip(flat.names, flat.shapes))),
                        "settings": json.dumps(_trajectory_settings(config)),
                        "hpcgrad_version": __version__})
        if rank == 0:
            params = flat.params.detach().cpu().numpy()
            group = f.create_group("params")
            for name, start, n, shape in _tensors(flat):
                group[name] = params[start:start + n].reshape(shape)
            f.create_group("totals").attrs.update(totals)
        state = f.create_group("state")
        for key in alg.state_names:
            value = _get(alg, key)
            if value is None:
                continue
            value = _host(value)
            if isinstance(value, np.ndarray) and value.ndim == 1 and value.size == flat.count:
                group = state.create_group(key)
                group.attrs["per_parameter"] = True
                for name, start, n, shape in _tensors(flat):
                    group[name] = value[start:start + n].reshape(shape)
            else:
                state[key] = value
        if sampler is not None:
            f.create_group("sampler").attrs.update({"epoch": sampler.epoch,
                                                    "cursor": sampler.cursor})
        f["torch_rng_state"] = torch.get_rng_state().numpy()


def _tensors(flat):
    return zip(flat.names, flat.offsets, flat.numels, flat.shapes)


def _host(value):
    if hasattr(value, "get") and type(value).__module__.startswith("cupy"):
        return value.get()
    return value


# --------------------------------------------------------------------- resume

def find(path) -> Path:
    """The checkpoint to resume from: ``path`` itself if it holds rank files, else the
    newest complete ``step-N`` directory in it."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"--resume {str(path)!r}: no such directory")
    if rank_file(path, 0).exists():
        return path
    steps = sorted((p for p in path.iterdir() if _STEP_DIR.match(p.name) and p.is_dir()),
                   key=lambda p: int(_STEP_DIR.match(p.name).group(1)))
    if not steps:
        raise ConfigError(f"--resume {str(path)!r}: no complete checkpoint in it (expected "
                          "step-NNNNNNNN/rank-NNNNN.h5 as --checkpoint-dir writes)")
    return steps[-1]


def check(directory, comm, flat, alg, config) -> int:
    """Validate this rank's checkpoint file against the run; return its step.  Raises
    :class:`ConfigError` naming every mismatch.  Collective only through the caller's
    ``agree``; reads nothing into the run."""
    rank, size = comm.Get_rank(), comm.Get_size()
    path = rank_file(directory, rank)
    if not path.exists():
        raise ConfigError(f"checkpoint {str(directory)!r} has no file for rank {rank} "
                          f"({path.name}): it was written by a smaller job, or is incomplete")
    try:
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
    except OSError as exc:
        raise ConfigError(f"checkpoint file {str(path)!r} cannot be read: {exc}") from None
    if attrs.get("format") != FORMAT:
        raise ConfigError(f"{str(path)!r} is not an hpcgrad checkpoint")
    if attrs.get("format_version") != FORMAT_VERSION:
        raise ConfigError(f"{str(path)!r}: checkpoint format version "
                          f"{attrs.get('format_version')}, this hpcgrad reads {FORMAT_VERSION}")
    problems = []
    if attrs["world_size"] != size:
        problems.append(f"world size: checkpoint {attrs['world_size']}, now {size}")
    if attrs["algorithm"] != alg.name:
        problems.append(f"algorithm: checkpoint {attrs['algorithm']}, now {alg.name}")
    saved_params = [(name, tuple(shape)) for name, shape in json.loads(attrs["parameters"])]
    now_params = list(zip(flat.names, flat.shapes))
    if saved_params != now_params:
        problems.append(f"model: checkpoint has {len(saved_params)} tensors, "
                        f"{int(attrs['num_params']):,} parameters; this run's model "
                        f"has {len(now_params)} tensors, {flat.count:,} parameters"
                        + _first_difference(saved_params, now_params))
    problems += settings_differences(json.loads(attrs["settings"]), config)
    if problems:
        raise ConfigError(f"checkpoint {str(directory)!r} does not match this run: "
                          + "; ".join(problems))
    step = int(attrs["step"])
    if step >= config.iterations:
        raise ConfigError(f"checkpoint {str(directory)!r} is at step {step}; --iterations "
                          f"{config.iterations} leaves nothing to run")
    return step


def _first_difference(saved, now) -> str:
    for a, b in zip(saved, now):
        if a != b:
            return f" (first difference: {a[0]} {list(a[1])} vs {b[0]} {list(b[1])})"
    return ""


def load(directory, comm, flat, alg, sampler, xp=np) -> dict:
    """Restore this rank's state from a checkpoint that :func:`check` accepted; rank 0
    also loads the parameters (the caller broadcasts them).  Arrays are restored into the
    array module ``xp`` (CuPy on a GPU rank).  Returns rank 0's totals."""
    rank = comm.Get_rank()
    path = rank_file(directory, rank)
    totals = {}
    try:
        with h5py.File(path, "r") as f:
            if rank == 0:
                params = flat.params.detach().cpu().numpy()
                for name, start, n in zip(flat.names, flat.offsets, flat.numels):
                    params[start:start + n] = f["params"][name][...].reshape(-1)
                flat.params.copy_(torch.from_numpy(params))
                totals = {k: v.item() for k, v in f["totals"].attrs.items()}
            state = f["state"]
            for key in alg.state_names:
                if key not in state:
                    _set(alg, key, None, xp)
                elif isinstance(state[key], h5py.Group):
                    value = np.concatenate([state[key][name][...].reshape(-1)
                                            for name in flat.names])
                    _set(alg, key, value, xp)
                else:
                    value = state[key][...]
                    _set(alg, key, value if value.ndim else value[()], xp)
            if sampler is not None:
                s = f["sampler"].attrs
                sampler.seek(int(s["epoch"]), int(s["cursor"]))
            torch.set_rng_state(torch.from_numpy(f["torch_rng_state"][...]))
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise ConfigError(f"checkpoint file {str(path)!r} is damaged: {exc}") from None
    return totals
