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

Every dataset carries the SHA-256 of its contents (attribute ``sha256``: dtype, shape and
bytes), every group with attributes the SHA-256 of those (``attrs_sha256``); resume checks
them all before anything is restored, so a flipped byte in a rank's momentum or rank 0's
parameters is refused, naming the rank, the file and the dataset.  (HDF5's Fletcher32
filter would cover chunked datasets only; scalars and empty arrays cannot be chunked.)
Checkpoints of format version 1, written before the checksums, are still resumed, with a
warning that their content cannot be verified.

Resume checks that the checkpoint was written by a run of the same algorithm,
world size, model (parameter names and shapes) and settings (all but those that
do not change the trajectory: ``IGNORED``) and raises :class:`ConfigError`
naming every difference; nothing is restored unless everything matches.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np
import torch

from .. import __version__
from ..comm.agreement import AgreedError
from ..errors import ConfigError

FORMAT = "hpcgrad-checkpoint"
#: 2: every dataset and attribute set carries its SHA-256 (1: none; still read, unverified).
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
DIGEST, ATTRS_DIGEST = "sha256", "attrs_sha256"
#: Settings a resumed run may change: they do not change the trajectory.  (``iterations``
#: may grow to extend a run, unless a cosine lr schedule is spread over it; settings
#: derived from it, such as DQ-SGD's horizon, are compared as resolved.)
IGNORED = {"iterations", "log", "overwrite", "quiet", "eval_every", "flush_every",
           "record_messages", "checkpoint_every", "checkpoint_dir", "resume", "preempt_signal"}
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
        # In place: other objects may hold views of it.  An array that exists keeps its
        # module: state an algorithm keeps on the host stays there on a GPU rank.
        current[...] = value if isinstance(current, np.ndarray) else xp.asarray(value)
    elif isinstance(value, np.ndarray):
        setattr(obj, last, xp.asarray(value))
    elif value is None or current is None:
        setattr(obj, last, value if value is None else value.item())
    else:
        setattr(obj, last, type(current)(value))


# ----------------------------------------------------------------------- save

def save(directory, step: int, comm, flat, alg, sampler, totals: dict, config,
         extra=None, run: dict | None = None) -> Path:
    """Collective: write the state after ``step`` completed steps; return the directory.
    ``extra(directory)``, if given, writes this rank's further files into the directory
    before it is complete (``hpcgrad.torch``: the torch optimizer's state); ``run`` (rank 0):
    the run's identity for the log of a resumed run (:func:`read_run`)."""
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
        raise AgreedError(error)  # every rank has it: one line from rank 0, exit status 1
    path = rank_file(partial, rank)
    try:
        _write(path, step, comm, flat, alg, sampler, totals, config, run)
        if extra is not None:
            extra(partial)
    except OSError as exc:  # a full disk, a quota, a vanished directory
        error = f"rank {rank} cannot write its checkpoint file {str(path)!r}: {exc}"
    errors = [e for e in comm.allgather(error) if e]
    if errors:
        if rank == 0:  # a partial checkpoint is never resumed: give its space back
            shutil.rmtree(partial, ignore_errors=True)
        raise AgreedError(errors[0].splitlines()[0])
    if rank == 0:
        shutil.rmtree(final, ignore_errors=True)  # a re-run over an old checkpoint
        os.replace(partial, final)
    comm.Barrier()
    return final


def _write(path, step, comm, flat, alg, sampler, totals, config, run=None) -> None:
    """Build the file in memory, then write its bytes with plain file I/O: a full disk or a
    quota then raises a clean ``OSError`` (HDF5 writing to a full disk fails in its
    destructors, with error stacks and even a segmentation fault)."""
    image = io.BytesIO()
    _build(image, step, comm, flat, alg, sampler, totals, config, run)
    with open(path, "wb") as fh:
        fh.write(image.getbuffer())
        fh.flush()
        os.fsync(fh.fileno())  # on disk before rank 0 renames the directory


def _build(target, step, comm, flat, alg, sampler, totals, config, run=None) -> None:
    rank = comm.Get_rank()
    with h5py.File(target, "w") as f:
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
                _put(group, name, params[start:start + n].reshape(shape))
            _seal_attrs(f.create_group("totals"), totals)
            if run:
                _seal_attrs(f.create_group("run"), run)
        state = f.create_group("state")
        for key in alg.state_names:
            value = _get(alg, key)
            if value is None:
                continue
            value = _host(value)
            if isinstance(value, np.ndarray) and value.ndim == 1 and value.size == flat.count:
                group = state.create_group(key)
                _seal_attrs(group, {"per_parameter": True})
                for name, start, n, shape in _tensors(flat):
                    _put(group, name, value[start:start + n].reshape(shape))
            else:
                _put(state, key, value)
        if sampler is not None:
            _seal_attrs(f.create_group("sampler"), {"epoch": sampler.epoch,
                                                    "cursor": sampler.cursor})
        _put(f, "torch_rng_state", torch.get_rng_state().numpy())
        _seal_attrs(f, {})  # the root's attributes, written above


def write_sealed(path, data: bytes) -> None:
    """Write a checkpoint's extra file (not HDF5: e.g. ``hpcgrad.torch``'s optimizer state)
    with its SHA-256 beside it in ``PATH.sha256``, so that :func:`read_sealed` refuses a
    damaged copy as resume refuses a damaged dataset."""
    path = Path(path)
    path.write_bytes(data)
    path.with_name(path.name + ".sha256").write_text(hashlib.sha256(data).hexdigest() + "\n")


def read_sealed(path) -> bytes:
    """The bytes of a file written by :func:`write_sealed`; a missing or different digest is
    a :class:`ConfigError` naming the file (resume refuses it)."""
    path = Path(path)
    data = path.read_bytes()
    sidecar = path.with_name(path.name + ".sha256")
    try:
        expected = sidecar.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{str(path)!r} has no readable SHA-256 ({sidecar.name}): {exc}")
    if hashlib.sha256(data).hexdigest() != expected:
        raise ConfigError(f"{str(path)!r} fails its SHA-256 check: the file is damaged")
    return data


def _digest(value) -> str:
    """SHA-256 of an array's dtype, shape and bytes (C order)."""
    array = np.ascontiguousarray(value)
    h = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    h.update(array.tobytes())
    return h.hexdigest()


def _attrs_digest(attrs) -> str:
    """SHA-256 of a set of HDF5 attributes as read back (sorted by name; the digest's own
    attribute excluded)."""
    h = hashlib.sha256()
    for name in sorted(k for k in attrs if k != ATTRS_DIGEST):
        h.update(f"{name}\0{_digest(np.asarray(attrs[name]))}\0".encode())
    return h.hexdigest()


def _put(group, name: str, value) -> None:
    """Write a dataset with the digest of what HDF5 holds (read back, so that any conversion
    h5py makes on the way is what the digest covers)."""
    dataset = group.create_dataset(name, data=value)
    dataset.attrs[DIGEST] = _digest(dataset[()])


def _seal_attrs(obj, attrs: dict) -> None:
    obj.attrs.update(attrs)
    obj.attrs[ATTRS_DIGEST] = _attrs_digest(obj.attrs)


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
    version = attrs.get("format_version")
    if version not in READABLE_VERSIONS:
        raise ConfigError(f"{str(path)!r}: checkpoint format version {version}, this hpcgrad "
                          f"reads {', '.join(map(str, READABLE_VERSIONS))}")
    if version >= 2:
        verify(path, rank)
    elif rank == 0:  # every rank has the same version: one warning
        print(f"hpcgrad: warning: checkpoint {str(directory)!r} was written before "
              "checkpoints carried checksums (format version 1): its content cannot be "
              "verified", file=sys.stderr, flush=True)
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


def verify(path, rank: int) -> None:
    """Check every dataset's and attribute set's SHA-256 in one rank's file (format version
    2); raises :class:`ConfigError` naming the rank, the file and the first object whose
    content differs from what was written, or that has no checksum."""
    where = f"rank {rank}'s checkpoint file {str(path)!r}"
    objects = []
    try:
        with h5py.File(path, "r") as f:
            f.visititems(lambda name, obj: objects.append(name))
            for name in ["/", *objects]:
                obj = f[name]
                if isinstance(obj, h5py.Dataset):
                    stored = obj.attrs.get(DIGEST)
                    what, its = f"dataset {name!r}", "fails its"
                    actual = None if stored is None else _digest(obj[()])
                elif name == "/" or len(obj.attrs):
                    stored = obj.attrs.get(ATTRS_DIGEST)
                    what = "the file's attributes" if name == "/" else \
                        f"the attributes of group {name!r}"
                    its = "fail their"
                    actual = None if stored is None else _attrs_digest(obj.attrs)
                else:
                    continue  # a group without attributes: its datasets are checked
                if stored is None:
                    raise ConfigError(f"{where}: {what} has no checksum; the file is damaged "
                                      "or was not written by hpcgrad")
                if actual != _text(stored):
                    raise ConfigError(f"{where}: {what} {its} SHA-256 check (stored "
                                      f"{_text(stored)[:12]}..., read {actual[:12]}...): the "
                                      "file is damaged; resume from another checkpoint")
    except ConfigError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise ConfigError(f"{where} is damaged: {str(exc).splitlines()[0]}") from None


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _first_difference(saved, now) -> str:
    for a, b in zip(saved, now):
        if a != b:
            return f" (first difference: {a[0]} {list(a[1])} vs {b[0]} {list(b[1])})"
    return ""


def read_run(directory) -> dict:
    """Rank 0's ``run`` attributes of a checkpoint: ``run_id``, ``part`` and ``log_path`` of the
    run that wrote it (empty for checkpoints written before they were recorded)."""
    try:
        with h5py.File(rank_file(directory, 0), "r") as f:
            if "run" not in f:
                return {}
            return {k: (v.item() if isinstance(v, np.generic) else v)
                    for k, v in f["run"].attrs.items() if k != ATTRS_DIGEST}
    except (OSError, KeyError, ValueError) as exc:
        raise ConfigError(f"checkpoint file {str(rank_file(directory, 0))!r} is damaged: "
                          f"{exc}") from None


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
                totals = {k: v.item() for k, v in f["totals"].attrs.items()
                          if k != ATTRS_DIGEST}
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
