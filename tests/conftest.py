"""Shared test configuration: fixtures, and one honest report from a multi-rank pytest run.

Serial run (``python -m pytest tests``): nothing MPI-related happens here and ``mpi4py.MPI`` is
not imported; pytest-mpi skips the ``@pytest.mark.mpi`` tests ("need --with-mpi option to run").

Multi-rank run (``mpiexec -n N python -m mpi4py -m pytest --with-mpi -m mpi tests``, N > 1),
where every rank runs the same tests, the ``_MPIWorld`` plugin below:

* silences ranks > 0: their terminal reporter writes into a sink that drops what the main thread
  writes but passes through, each line prefixed ``[rank N]``, what other threads write, i.e.
  pytest-timeout's (``timeout_method = thread``) stack dump of a hung rank; their
  ``--junitxml`` is switched off (only rank 0 writes);
* gives every rank its own tmp_path root (ranks sharing one race when pruning old ones);
* checks that all ranks collected the same tests in the same order (and the same number of
  collection errors): the per-test collective below relies on it; on a mismatch every rank
  stops with a message instead of hanging;
* runs each test's protocol itself (setup, call, teardown, not logged yet), then does exactly one
  ``allgather`` per test, skipped and failing tests included, of every rank's phase outcomes
  (plus, for failures, the message, a clipped traceback and captured output); a phase that
  failed on any rank is then reported failed on every rank, and rank 0's report names the
  failing ranks and shows their tracebacks. Only then are the reports logged. So the printed
  counts, the junit xml and every rank's exit status agree;
* ends with a (bounded) barrier after rank 0 printed its summary: ``python -m mpi4py`` turns a
  non-zero pytest exit into ``MPI_Abort``, which would otherwise kill rank 0 mid-summary;
* loads a Hypothesis profile with ``derandomize=True`` (every rank draws the same examples, so
  collectives line up), no example database (ranks would race on ``.hypothesis/``) and no
  deadline (ranks share few cores).
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import threading
import time

import pytest

# Make ``import mpirun`` work from test modules whatever pytest's import mode.
_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

_TEXT_LIMIT = 6000  # characters of another rank's traceback sent to rank 0
_SECTION_LIMIT = 2000  # characters of each of its captured-output sections
_MESSAGE_LIMIT = 300
_FINAL_BARRIER_S = 30


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def comm():
    """``MPI.COMM_WORLD`` (``mpi4py.MPI`` is imported, and MPI initialised, only on use)."""
    from mpi4py import MPI

    return MPI.COMM_WORLD


# --------------------------------------------------------------------------- hooks


def _mpi_world(config):
    """COMM_WORLD for a ``--with-mpi``/``--only-mpi`` run on more than one rank, else None."""
    if not (
        config.getoption("with_mpi", default=False) or config.getoption("only_mpi", default=False)
    ):
        return None
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    return world if world.Get_size() > 1 else None


@pytest.hookimpl(tryfirst=True)  # before junitxml reads its option
def pytest_configure(config):
    world = _mpi_world(config)
    if world is None:
        return
    rank = world.Get_rank()
    _separate_tmp_roots(config, rank)
    if rank > 0:
        config.option.xmlpath = None  # only rank 0 writes --junitxml
        if getattr(config.option, "report_log", None):  # pytest-reportlog, if installed
            config.option.report_log = None
    config.pluginmanager.register(_MPIWorld(world), "hpcgrad-mpi-world")
    _load_hypothesis_profile()


def _separate_tmp_roots(config, rank):
    """Give each rank its own tmp_path root. Ranks sharing /tmp/pytest-of-<user> race when
    pruning old numbered directories (PytestWarning "(rm_rf) error removing ..."), and a shared
    --basetemp would be wiped by every rank at start. (pytest-mpi's mpi_tmp_path still hands
    all ranks rank 0's directory.)"""
    if config.option.basetemp:
        if rank > 0:
            config.option.basetemp = f"{config.option.basetemp}-rank{rank}"
    elif "PYTEST_DEBUG_TEMPROOT" not in os.environ:
        import tempfile

        os.environ["PYTEST_DEBUG_TEMPROOT"] = os.path.join(
            tempfile.gettempdir(), f"pytest-mpi-rank{rank}"
        )
        os.makedirs(os.environ["PYTEST_DEBUG_TEMPROOT"], exist_ok=True)


def _load_hypothesis_profile():
    try:
        from hypothesis import settings
    except ImportError:
        return
    settings.register_profile("hpcgrad-mpi", derandomize=True, database=None, deadline=None)
    settings.load_profile("hpcgrad-mpi")


# --------------------------------------------------------------------------- the MPI plugin


class _RankSink(io.TextIOBase):
    """Terminal output of a rank > 0: dropped, except what a non-main thread writes
    (pytest-timeout's dump of a hung rank), which goes to ``real`` with each line prefixed
    ``[rank N]`` (several ranks may dump at once)."""

    def __init__(self, real, rank):
        super().__init__()
        self._real = real
        self._prefix = f"[rank {rank}] "
        self._partial = ""
        self._lock = threading.Lock()

    def writable(self):
        return True

    def isatty(self):
        return False

    def write(self, text):
        if threading.current_thread() is not threading.main_thread():
            with self._lock:
                *lines, self._partial = (self._partial + text).split("\n")
                if lines:
                    self._real.write("".join(f"{self._prefix}{line}\n" for line in lines))
        return len(text)

    def flush(self):
        with self._lock:
            if self._partial and threading.current_thread() is not threading.main_thread():
                self._real.write(f"{self._prefix}{self._partial}\n")
                self._partial = ""
            self._real.flush()


class _CrashLine:
    """Stand-in for ``ReprFileLocation``: what ``-ra`` and junit xml show as the message."""

    def __init__(self, path, lineno, message):
        self.path, self.lineno, self.message = path, lineno, message


class _RanksFailed:
    """``longrepr`` of a report that passed on this rank but failed on others."""

    def __init__(self, header, blocks, message, location):
        self.header = header
        self.blocks = blocks  # [(title, text)]
        path, lineno = (location[0], location[1]) if location else ("", 0)
        self.reprcrash = _CrashLine(path, lineno, message)

    def toterminal(self, tw):
        tw.line(self.header, red=True, bold=True)
        for title, text in self.blocks:
            tw.sep("-", title)
            tw.line(text.rstrip("\n"))

    def __str__(self):
        parts = [self.header]
        for title, text in self.blocks:
            parts.append(f"----- {title} -----\n{text.rstrip()}")
        return "\n".join(parts)


def _clip(text, limit):
    text = text or ""
    return text if len(text) <= limit else f"... [{len(text) - limit} characters clipped]\n" + text[-limit:]


def _crash_message(report):
    message = getattr(getattr(report.longrepr, "reprcrash", None), "message", None)
    if not message:
        lines = [line for line in report.longreprtext.splitlines() if line.strip()]
        message = lines[-1] if lines else report.outcome
    message = " ".join(message.split())
    return message if len(message) <= _MESSAGE_LIMIT else message[: _MESSAGE_LIMIT - 3] + "..."


def _summary(report):
    """What one rank tells the others about one phase report (small, picklable)."""
    info = {"when": report.when, "outcome": report.outcome}
    if report.failed:
        info["message"] = _crash_message(report)
        info["text"] = _clip(report.longreprtext, _TEXT_LIMIT)
        info["sections"] = [(name, _clip(body, _SECTION_LIMIT)) for name, body in report.sections]
    return info


def _ranks_text(ranks):
    return ", ".join(str(r) for r in ranks)


class _MPIWorld:
    def __init__(self, world):
        # A private duplicate: the harness's collectives never mix with the tests' own traffic.
        self.comm = world.Dup()
        self.rank = world.Get_rank()
        self.size = world.Get_size()
        self._collect_errors = []

    # --- silence ranks > 0 -------------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)  # before the terminal reporter prints the header
    def pytest_sessionstart(self, session):
        if self.rank == 0:
            return
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None:
            return
        from _pytest.config import create_terminal_writer

        # pytest-timeout and others write through config.get_terminal_writer(), i.e. this one.
        reporter._tw = create_terminal_writer(
            session.config, _RankSink(sys.__stdout__, self.rank)
        )

    def pytest_internalerror(self, excrepr, excinfo):
        if self.rank > 0:  # the terminal reporter of this rank is silenced; say it anyway
            sys.stderr.write(f"[MPI rank {self.rank}] INTERNALERROR\n{excrepr}\n")
            sys.stderr.flush()

    # --- same tests everywhere -----------------------------------------------------------

    def pytest_collectreport(self, report):
        if report.failed:
            self._collect_errors.append(_clip(report.longreprtext, _SECTION_LIMIT))

    @pytest.hookimpl(trylast=True)
    def pytest_collection_finish(self, session):
        ids = [item.nodeid for item in session.items]
        digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()
        mine = (digest, len(ids), len(self._collect_errors))
        everyone = self.comm.allgather(mine)
        if len(set(everyone)) == 1:
            return
        # Every rank sees the same gathered data, so every rank takes this branch.
        all_ids = self.comm.allgather(ids)
        all_errors = self.comm.allgather(self._collect_errors)
        lines = ["MPI ranks collected different tests; stopping (every rank must run the same "
                 "tests in the same order)."]
        for r in range(self.size):
            _, count, nerr = everyone[r]
            lines.append(f"  rank {r}: {count} tests, {nerr} collection errors")
        for r in range(1, self.size):
            if all_ids[r] != all_ids[0]:
                first = next(
                    (i for i, (a, b) in enumerate(zip(all_ids[0], all_ids[r])) if a != b),
                    min(len(all_ids[0]), len(all_ids[r])),
                )
                a = all_ids[0][first] if first < len(all_ids[0]) else "<end>"
                b = all_ids[r][first] if first < len(all_ids[r]) else "<end>"
                lines.append(f"  first difference, rank 0 vs rank {r} at #{first}: {a} | {b}")
        for r in range(self.size):
            for text in all_errors[r][:2]:
                lines.append(f"  collection error on rank {r}:\n{text}")
        pytest.exit("\n".join(lines), returncode=pytest.ExitCode.INTERNAL_ERROR)

    # --- one report per test ---------------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item, nextitem):
        from _pytest.runner import runtestprotocol

        ihook = item.ihook
        ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        reports = runtestprotocol(item, nextitem=nextitem, log=False)
        # The one collective per test; every rank gets here once per test, whatever happened.
        everyone = self.comm.allgather([_summary(rep) for rep in reports])
        for rep in self._combine(reports, everyone, item):
            ihook.pytest_runtest_logreport(report=rep)
        ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
        return True

    def _combine(self, reports, everyone, item):
        """Mark this rank's reports failed where any rank failed; return the reports to log."""
        mine = {rep.when: rep for rep in reports}
        # phase report of this rank -> [(rank, info)] of failures to fold into it
        targets = {}
        for r, infos in enumerate(everyone):
            for info in infos:
                if info["outcome"] != "failed":
                    continue
                # A phase this rank did not run (call, after its setup did not pass) goes into
                # its setup report.
                when = info["when"] if info["when"] in mine else "setup"
                targets.setdefault(when, []).append((r, info))
        for when, failures in targets.items():
            rep = mine[when]
            others = [(r, info) for r, info in failures if r != self.rank]
            by_phase = {}
            for r, info in failures:
                by_phase.setdefault(info["when"], []).append(r)
            note = "; ".join(
                f"{phase} failed on MPI rank(s) {_ranks_text(rs)}" for phase, rs in by_phase.items()
            ) + f" of {self.size}"
            if rep.failed:
                for r, info in others:
                    rep.sections.append((f"rank {r}: {info['when']} failed", info["text"]))
                    for name, body in info.get("sections", []):
                        rep.sections.append((f"rank {r}: {name}", body))
            else:
                blocks = []
                for r, info in others:
                    blocks.append((f"rank {r}: {info['when']}", info["text"]))
                    for name, body in info.get("sections", []):
                        blocks.append((f"rank {r}: {name}", body))
                message = "; ".join(f"[rank {r}] {info['message']}" for r, info in others)
                if len(message) > _MESSAGE_LIMIT:
                    message = message[: _MESSAGE_LIMIT - 3] + "..."
                header = f"{note} ({rep.outcome} on rank {self.rank})"
                rep.outcome = "failed"
                rep.longrepr = _RanksFailed(header, blocks, message, item.location)
                if hasattr(rep, "wasxfail"):
                    del rep.wasxfail
            rep.sections.append(("MPI", note))
        if "setup" in targets and "call" in mine:
            # Setup failed somewhere: like pytest's own setup errors, report no call phase.
            return [rep for rep in reports if rep.when != "call"]
        return reports

    # --- let rank 0 finish printing before anyone aborts -----------------------------------

    @pytest.hookimpl(trylast=True)
    def pytest_unconfigure(self, config):
        sys.stdout.flush()
        sys.stderr.flush()
        # Bounded: a rank that left the test loop early (internal error) must still exit, so
        # that python -m mpi4py aborts the job, instead of waiting here for ranks that wait
        # for it in the per-test allgather.
        request = self.comm.Ibarrier()
        deadline = time.monotonic() + _FINAL_BARRIER_S
        while not request.Test():
            if time.monotonic() > deadline:
                sys.stderr.write(
                    f"[MPI rank {self.rank}] other ranks did not finish the session within "
                    f"{_FINAL_BARRIER_S} s; exiting without them\n"
                )
                return
            time.sleep(0.005)
        self.comm.Free()
