"""Fixture of the analysis tests: logs of real ``mpiexec`` runs of every algorithm.

``real_logs`` (session scope) runs ``hpcgrad train`` once per algorithm that has landed, on 3
ranks (2 workers), 20 steps, evaluation every 10: every run one after another in one 3-rank job
(tests/mpirun.py's ``train_several``; the ranks start once, not once per run). Synthetic logs:
``analysis_logs.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # analysis_logs, also for subprocesses

import mpirun  # noqa: E402

ITERATIONS = 20
#: name -> extra ``hpcgrad train`` arguments
REAL_RUNS = {
    "signum-mv": ["--algorithm", "signum-mv"],
    "signum-mv-tie-zero": ["--algorithm", "signum-mv", "--tie", "zero"],
    "s3gd-mv": ["--algorithm", "s3gd-mv"],
    "qsgd": ["--algorithm", "qsgd", "--bits", "3"],
    "dq-sgd": ["--algorithm", "dq-sgd"],
    "fp32-ps": ["--algorithm", "fp32-ps"],
    "fp16-ps": ["--algorithm", "fp16-ps"],
    "allreduce": ["--algorithm", "allreduce"],
}


#: pytest-timeout counts a session fixture's set-up against the first test that requests it;
#: on a loaded 2-core machine the launches alone can take minutes.
SETUP_TIMEOUT = 400


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if "real_logs" in getattr(item, "fixturenames", ()) and here in Path(item.path).parents:
            item.add_marker(pytest.mark.timeout(SETUP_TIMEOUT))


@pytest.fixture(scope="session")
def real_logs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("analysis-runs")
    paths = {name: root / f"{name}.h5" for name in REAL_RUNS}
    runs = {name: (root, [*REAL_RUNS[name], "--iterations", ITERATIONS, "--eval-every", 10,
                          "--flush-every", 10, "--log", paths[name], "--quiet"])
            for name in REAL_RUNS}
    done = mpirun.train_several(3, runs, timeout=SETUP_TIMEOUT - 60)
    for name, result in done.items():
        assert result.returncode == 0, (
            f"hpcgrad train ({name}) exited {result.returncode}\n{result.stderr[-3000:]}")
    return paths
