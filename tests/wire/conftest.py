"""The 5-rank training runs of the wire-format decoder tests, all in one job.

test_wire_format_doc.py, test_topk_wire_format_doc.py, test_quantized_wire_format_doc.py and
test_sparse_wire_format_doc.py each name their runs (``RUNS``: name -> extra options) and their
command line (``_args(work directory, extra options)``); ``doc_runs5`` (session scope) runs all
of them one after another in one 5-rank job (tests/mpirun.py's ``train_several``), so the ranks
start once for the four files (a 5-rank start costs about 25 s of CPU on the shared 2-core
machine, a further run in the same job about 1 s). Each file reads its own runs' logs.
"""

from __future__ import annotations

import importlib

import pytest

from mpirun import train_several

#: The decoder test modules whose runs share the job, in the order they run in it.
FIVE_RANK_FILES = ("test_wire_format_doc", "test_topk_wire_format_doc",
                   "test_quantized_wire_format_doc", "test_sparse_wire_format_doc")
#: The job's limit; pytest-timeout counts it against the first test that reads a run.
SETUP_TIMEOUT = 400


@pytest.fixture(scope="session")
def doc_runs5(tmp_path_factory):
    """(module name, run name) -> (work directory, finished ``hpcgrad train`` run)."""
    runs, work = {}, {}
    for module_name in FIVE_RANK_FILES:
        module = importlib.import_module(module_name)
        assert module.RANKS == 5, module_name
        for name, extra in module.RUNS.items():
            key = (module_name, name)
            work[key] = tmp_path_factory.mktemp(f"{module_name.removeprefix('test_')}-{name}")
            runs[f"{module_name}:{name}"] = (work[key], module._args(work[key], extra))
    done = train_several(5, runs, timeout=SETUP_TIMEOUT - 60)
    return {key: (work[key], done[f"{key[0]}:{key[1]}"]) for key in work}

