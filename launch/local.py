#!/usr/bin/env python3
"""hpcgrad-local: run hpcgrad on one multi-GPU machine with mpiexec, one GPU per worker.

    python launch/local.py -n 5 --gpus 0,1,2,3 train --device cuda --iterations 300
    python launch/local.py -n 5 --gpus 0,1,2,3 --dry-run train --device cuda

Rank 0 (the parameter server) aggregates on the host and by default sees no GPU; worker rank r
(node-local rank r, 1..N-1) sees exactly one GPU, the (r-1)-th of --gpus, as its
CUDA_VISIBLE_DEVICES. mpiexec starts this file in its --bind mode on every rank; that mode reads
the node-local rank from the launcher's environment (MPI_LOCALRANKID for MPICH/Hydra,
OMPI_COMM_WORLD_LOCAL_RANK for Open MPI, SLURM_LOCALID under srun), sets CUDA_VISIBLE_DEVICES
and execs ``python -m mpi4py -m hpcgrad ...`` (``-m mpi4py``: an exception on any rank aborts
the whole job). Only the standard library is used here; the module can be imported and its
functions (gpu_map, build_command) tested without MPI or GPUs.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

PROG = "hpcgrad-local"

#: Environment variables that carry the node-local rank, most specific first.
LOCAL_RANK_VARIABLES = (
    "MPI_LOCALRANKID",             # MPICH / Hydra (the pip mpich wheel), Intel MPI
    "OMPI_COMM_WORLD_LOCAL_RANK",  # Open MPI
    "MV2_COMM_WORLD_LOCAL_RANK",   # MVAPICH2
    "PALS_LOCAL_RANKID",           # Cray PALS (aprun/mpiexec on HPE Cray EX)
    "SLURM_LOCALID",               # srun
)
#: Global-rank variables, used only as a fallback (correct on a single node, which is all this
#: launcher starts).
GLOBAL_RANK_VARIABLES = ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK")

#: --cuda-aware auto (with GPUs): settings that enable a CUDA-aware MPI's GPU path where the
#: library has one and are harmless where it does not. Set only when the user has not set them.
CUDA_AWARE_AUTO = {
    "MPIR_CVAR_ENABLE_GPU": "1",          # MPICH >= 4 (its default; 0 would disable GPU support)
    "OMPI_MCA_opal_cuda_support": "true",  # Open MPI built with CUDA
}
#: --cuda-aware on adds the vendor switches that fail on libraries built without GPU support.
CUDA_AWARE_ON = {
    **CUDA_AWARE_AUTO,
    "MPICH_GPU_SUPPORT_ENABLED": "1",  # Cray MPICH (needs the GTL library linked)
    "MV2_USE_CUDA": "1",               # MVAPICH2-GDR
}
CUDA_AWARE_OFF = {"MPIR_CVAR_ENABLE_GPU": "0", "OMPI_MCA_opal_cuda_support": "false"}

NO_GPU = "-"  # a --bind map entry: this rank sees no GPU (CUDA_VISIBLE_DEVICES="")


class LaunchError(Exception):
    """A problem with the launch request; the message says what to do."""


# --------------------------------------------------------------------------- pure functions


def parse_gpus(spec: str, environ=None) -> list[str] | None:
    """The GPUs named by --gpus: a list of ids, [] for ``none``, None for ``auto`` found none.

    ``auto``: the entries of CUDA_VISIBLE_DEVICES if set, else what nvidia-smi lists, else None
    (no GPU found: ranks keep the environment as it is).
    """
    environ = os.environ if environ is None else environ
    spec = spec.strip()
    if spec == "none":
        return []
    if spec == "auto":
        visible = environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None and visible.strip():
            return parse_gpus(visible, environ)
        if visible is not None:  # set but empty: the user hid every GPU
            return []
        return _nvidia_smi_gpus()
    gpus = [g.strip() for g in spec.split(",")]
    if any(not g for g in gpus):
        raise LaunchError(f"--gpus {spec!r} has an empty entry; give a comma-separated list of "
                          "GPU indices or UUIDs such as 0,1,2,3, or 'none' or 'auto'")
    if any(g == NO_GPU or any(c.isspace() for c in g) for g in gpus):
        raise LaunchError(f"--gpus {spec!r}: GPU ids cannot be '-' or contain spaces")
    duplicates = sorted({g for g in gpus if gpus.count(g) > 1})
    if duplicates:
        raise LaunchError(f"--gpus {spec!r} lists {', '.join(duplicates)} more than once; to "
                          "put several workers on one GPU use --share-gpus instead")
    return gpus


def _nvidia_smi_gpus() -> list[str] | None:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    gpus = [line.strip() for line in out.splitlines() if line.strip()]
    return gpus or None


def gpu_map(nranks: int, gpus: list[str], *, server_gpu: str = "none",
            share: bool = False) -> list[str]:
    """CUDA_VISIBLE_DEVICES for each node-local rank 0..nranks-1 ("" = no GPU).

    Rank 0 is the server: ``server_gpu="none"`` hides every GPU from it (it aggregates on the
    host), ``"shared"`` lets it see the first GPU, which worker 1 also uses. Worker r (1..N-1)
    gets ``gpus[(r-1) % len(gpus)]``; more workers than GPUs is an error unless ``share``.
    With ``gpus == []`` no rank sees a GPU.
    """
    if nranks < 2:
        raise LaunchError(f"-n {nranks}: hpcgrad needs at least 2 ranks (rank 0 is the server, "
                          "ranks 1..N-1 are workers), e.g. -n 5 for 4 workers")
    if server_gpu not in ("none", "shared"):
        raise LaunchError(f"server GPU {server_gpu!r}: choose none or shared")
    workers = nranks - 1
    if not gpus:
        return [""] * nranks
    if workers > len(gpus) and not share:
        raise LaunchError(
            f"-n {nranks} starts {workers} workers but --gpus gives {len(gpus)} GPU(s) "
            f"({','.join(gpus)}): use -n {len(gpus) + 1} or fewer, list more GPUs, or pass "
            "--share-gpus to put several workers on one GPU")
    server = gpus[0] if server_gpu == "shared" else ""
    return [server] + [gpus[(r - 1) % len(gpus)] for r in range(1, nranks)]


def encode_map(mapping: list[str]) -> str:
    return ",".join(g if g else NO_GPU for g in mapping)


def decode_map(text: str) -> list[str]:
    return ["" if g == NO_GPU else g for g in text.split(",")]


def local_rank(environ=None) -> int:
    """This process's node-local rank, from the launcher's environment."""
    environ = os.environ if environ is None else environ
    for name in LOCAL_RANK_VARIABLES + GLOBAL_RANK_VARIABLES:
        value = environ.get(name)
        if value is not None and value.strip().isdigit():
            return int(value)
    raise LaunchError("cannot tell this process's node-local rank: none of "
                      f"{', '.join(LOCAL_RANK_VARIABLES + GLOBAL_RANK_VARIABLES)} is set; "
                      "--bind runs under mpiexec (start jobs with launch/local.py -n N ...)")


def rank_environment(nranks: int, using_gpus: bool, cuda_aware: str, environ=None) -> dict:
    """Variables the launcher sets for every rank (never overriding the user's own)."""
    environ = os.environ if environ is None else environ
    env = {}
    if "OMP_NUM_THREADS" not in environ:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nranks))
    if cuda_aware == "off":
        chosen = CUDA_AWARE_OFF
    elif cuda_aware == "on":
        chosen = CUDA_AWARE_ON
    elif cuda_aware == "auto":
        chosen = CUDA_AWARE_AUTO if using_gpus else {}
    else:
        raise LaunchError(f"--cuda-aware {cuda_aware!r}: choose auto, on or off")
    env.update({k: v for k, v in chosen.items() if k not in environ})
    return env


def build_command(*, nranks: int, mapping: list[str] | None, program: list[str],
                  env: dict, mpiexec: str, python: str, launcher: str,
                  mpiexec_args: list[str] = ()) -> list[str]:
    """The exact argv the launcher runs: ``env K=V ... mpiexec -n N [bind wrapper] program``."""
    cmd = []
    if env:
        cmd += ["env"] + [f"{k}={v}" for k, v in env.items()]
    cmd += [mpiexec, "-n", str(nranks), *mpiexec_args]
    if mapping is not None:
        cmd += [python, launcher, f"--bind={encode_map(mapping)}", "--"]
    return cmd + program


# --------------------------------------------------------------------------- the per-rank mode


def bind_and_exec(map_text: str, program: list[str]) -> None:
    """Runs on every rank: set CUDA_VISIBLE_DEVICES from the map, then exec the program."""
    try:
        if not program:
            raise LaunchError("--bind needs a program after --")
        mapping = decode_map(map_text)
        rank = local_rank()
        if rank >= len(mapping):
            raise LaunchError(f"node-local rank {rank} is beyond the GPU map {map_text!r} "
                              f"({len(mapping)} ranks); was mpiexec started with more ranks "
                              "than the launcher planned for, or on several nodes?")
        os.environ["CUDA_VISIBLE_DEVICES"] = mapping[rank]
        os.execvp(program[0], program)
    except (LaunchError, OSError) as exc:
        where = next((f"{name}={os.environ[name]}" for name in
                      LOCAL_RANK_VARIABLES + GLOBAL_RANK_VARIABLES if name in os.environ), "")
        print(f"{PROG} --bind: error on the rank with {where or 'no rank variable'}: {exc}; "
              "aborting the job", file=sys.stderr, flush=True)
        _abort_job()


def _abort_job() -> None:
    """Fail the whole job: a rank that exits before MPI_Init would leave the others waiting in
    MPI_Init forever (Hydra only tears a job down for ranks that initialized MPI)."""
    try:
        from mpi4py import MPI
        MPI.COMM_WORLD.Abort(2)
    except Exception:  # noqa: BLE001 -- no mpi4py: exiting is all that is left
        pass
    os._exit(2)


# --------------------------------------------------------------------------- the launcher


def _default_mpiexec(python: str) -> str:
    beside = Path(python).parent / "mpiexec"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("mpiexec")
    if found is None:
        raise LaunchError(f"no mpiexec next to {python} and none on PATH: install the 'mpich' "
                          "package into the environment (pip install mpich) or pass --mpiexec")
    return found


def _check_python(python: str, module: str | None) -> None:
    if shutil.which(python) is None and not os.access(python, os.X_OK):
        raise LaunchError(f"--python {python!r} is not an executable")
    if module is None:
        return
    probe = ("import importlib.util, sys; "
             f"sys.exit(0 if importlib.util.find_spec({module!r}) and "
             "importlib.util.find_spec('mpi4py') else 1)")
    if subprocess.run([python, "-c", probe], stdin=subprocess.DEVNULL).returncode != 0:
        raise LaunchError(f"{python} cannot import {module} and mpi4py: activate the "
                          "environment hpcgrad is installed in, or pass --python PATH")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run hpcgrad on one machine with mpiexec, binding each worker rank to one "
                    "GPU.\nRank 0 (the parameter server) aggregates on the host and sees no "
                    "GPU unless --server-gpu shared;\nworker rank r (1..N-1) sees only GPU "
                    "number r-1 of --gpus (as its CUDA_VISIBLE_DEVICES, so\nhpcgrad's "
                    "--device cuda uses it as cuda:0). Everything after the options is passed "
                    "to\nhpcgrad (e.g. train --device cuda ...). If any rank fails, mpiexec "
                    "ends the whole job\nand the launcher exits non-zero.",
        epilog="examples:\n"
               "  python launch/local.py -n 5 --gpus 0,1,2,3 train --device cuda\n"
               "  python launch/local.py -n 9 --gpus 0,1,2,3 --share-gpus train --device cuda\n"
               "  python launch/local.py -n 3 --gpus none train --iterations 50   # CPU only\n"
               "  python launch/local.py -n 5 --dry-run train --device cuda      # print only\n"
               "exit status: mpiexec's (non-zero if any rank failed); 2 for a bad request; "
               "124 after --timeout.")
    p.add_argument("-n", "--np", dest="nranks", type=int, metavar="N",
                   help="number of MPI ranks: 1 server + N-1 workers (N >= 2)")
    p.add_argument("--gpus", default="auto", metavar="LIST",
                   help="GPUs for the workers: comma-separated indices or UUIDs (0,1,2,3), "
                        "'none' (hide all GPUs: CPU run), or 'auto' (default: "
                        "CUDA_VISIBLE_DEVICES if set, else nvidia-smi's list; with no GPU "
                        "found, ranks keep the environment unchanged)")
    p.add_argument("--server-gpu", choices=("none", "shared"), default="none",
                   help="rank 0 sees no GPU (none, default) or shares the first one (shared)")
    p.add_argument("--share-gpus", action="store_true",
                   help="allow more workers than GPUs (worker r gets GPU (r-1) mod count); "
                        "without it that is an error")
    p.add_argument("--cuda-aware", choices=("auto", "on", "off"), default="auto",
                   help="MPI GPU support environment: auto (default) sets "
                        "MPIR_CVAR_ENABLE_GPU=1 and OMPI_MCA_opal_cuda_support=true when GPUs "
                        "are used; on adds MPICH_GPU_SUPPORT_ENABLED=1 (Cray) and "
                        "MV2_USE_CUDA=1; off disables MPICH/Open MPI GPU support. Variables "
                        "you set yourself are kept. hpcgrad 0.1 stages messages through host "
                        "memory either way")
    p.add_argument("--mpiexec", metavar="PATH",
                   help="mpiexec to use (default: the one next to --python, else on PATH)")
    p.add_argument("--mpiexec-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for mpiexec, placed after -n N (repeatable; write "
                        "--mpiexec-arg=-flag for one that starts with a dash)")
    p.add_argument("--python", default=sys.executable, metavar="PATH",
                   help="Python with hpcgrad installed, run on every rank (default: the one "
                        "running this launcher, %(default)s)")
    p.add_argument("--script", metavar="FILE",
                   help="run this Python script on every rank instead of hpcgrad "
                        "(python -m mpi4py FILE ARGS...)")
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="stop the whole job after this many seconds (exit status 124)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the exact command (and each rank's CUDA_VISIBLE_DEVICES) and "
                        "exit without running it")
    p.add_argument("--bind", metavar="MAP",
                   help="internal, per rank: set CUDA_VISIBLE_DEVICES from MAP (one entry per "
                        "node-local rank, '-' = no GPU) and exec the command after --")
    p.add_argument("args", nargs=argparse.REMAINDER,
                   help="hpcgrad arguments, e.g. train --device cuda --iterations 300")
    return p


def plan(args, environ=None) -> tuple[list[str], list[str] | None]:
    """(command, per-rank CUDA_VISIBLE_DEVICES or None) for parsed launcher options."""
    environ = os.environ if environ is None else environ
    program_args = list(args.args)
    if program_args[:1] == ["--"]:
        program_args = program_args[1:]
    if args.script is None and not program_args:
        raise LaunchError("no hpcgrad command given: add e.g. 'train --device cuda' after the "
                          "launcher's options (see --help)")
    gpus = parse_gpus(args.gpus, environ)
    mapping = None
    if gpus is not None:
        mapping = gpu_map(args.nranks, gpus, server_gpu=args.server_gpu, share=args.share_gpus)
    elif args.nranks < 2:
        gpu_map(args.nranks, [])  # raises the message about -n
    python = args.python
    mpiexec = args.mpiexec or _default_mpiexec(python)
    if args.script is not None:
        program = [python, "-m", "mpi4py", args.script, *program_args]
    else:
        program = [python, "-m", "mpi4py", "-m", "hpcgrad", *program_args]
    env = rank_environment(args.nranks, bool(gpus), args.cuda_aware, environ)
    cmd = build_command(nranks=args.nranks, mapping=mapping, program=program, env=env,
                        mpiexec=mpiexec, python=python,
                        launcher=str(Path(__file__).resolve()),
                        mpiexec_args=args.mpiexec_arg)
    return cmd, mapping


def _run(cmd: list[str], timeout: float | None) -> int:
    """Run the job in its own process group; signals and the timeout stop all of it."""
    proc = subprocess.Popen(cmd, start_new_session=True)

    def forward(signum, _frame):
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"{PROG}: error: the job ran past --timeout {timeout:g} s; stopping every rank",
              file=sys.stderr, flush=True)
        for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
        return 124


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.bind is not None:
        program = list(args.args)
        if program[:1] == ["--"]:
            program = program[1:]
        bind_and_exec(args.bind, program)  # does not return
    if args.nranks is None:
        parser.error("-n N is required (the number of MPI ranks: 1 server + N-1 workers)")
    try:
        cmd, mapping = plan(args)
        if not args.dry_run:
            _check_python(args.python, None if args.script else "hpcgrad")
    except LaunchError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    program_args = [a for a in args.args if a != "--"]
    if (mapping and any(mapping) and program_args[:1] == ["train"]
            and "--device" not in program_args and args.script is None):
        print(f"{PROG}: note: GPUs are bound to the workers, but hpcgrad train computes on "
              "the CPU unless you pass --device cuda", file=sys.stderr)
    if args.dry_run:
        if mapping is None:
            print("# no GPU found (--gpus auto): ranks keep CUDA_VISIBLE_DEVICES as it is")
        else:
            for rank, gpu in enumerate(mapping):
                role = "server" if rank == 0 else "worker"
                print(f"# rank {rank} ({role}): CUDA_VISIBLE_DEVICES={gpu!r}"
                      if gpu else f"# rank {rank} ({role}): no GPU (CUDA_VISIBLE_DEVICES='')")
        print(shlex.join(cmd))
        return 0
    return _run(cmd, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
