"""experiments/paper_claims.py: the run list, one task by index, and the tables and figures read
back from a log (a tiny real run: 3 ranks, 10 iterations)."""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

from mpirun import mpi_env

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "experiments" / "paper_claims.py"
EXPECTED = 30  # 14 IID lr-sweep runs, 2 x 4 non-IID, 2 x 3 + 2 with 7 workers


def script(*args, env=None, timeout=90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, text=True,
                          capture_output=True, env=mpi_env(env), timeout=timeout)


@functools.lru_cache(maxsize=None)
def listed() -> list[tuple[int, str, int]]:
    done = script("--list")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == f"{EXPECTED} runs: tasks 0-{EXPECTED - 1}"
    rows = [line.split() for line in lines[:-1]]
    return [(int(r[0]), r[1], int(r[3])) for r in rows]


def test_list_names_every_run_with_its_index_and_ranks():
    rows = listed()
    assert [index for index, _, _ in rows] == list(range(EXPECTED))
    names = [name for _, name, _ in rows]
    assert len(set(names)) == EXPECTED
    for name in ("iid-fp32-lr0.01", "iid-signsgd-lr0.0003", "iid-signum-lr0.0003",
                 "iid-s3gd-lr0.01", "classes2-s3gd-lr0.01", "dir0.3-signsgd-lr0.001",
                 "n8-signum-clean", "n8-signum-invert", "n8-fp32-invert", "n8-fp32-random"):
        assert name in names
    for _, name, ranks in rows:
        assert ranks == (8 if name.startswith("n8-") else 5), name
    # --ranks-of agrees with the list; a task beyond it is refused, naming the range
    assert script("--ranks-of", str(names.index("n8-fp32-clean"))).stdout.strip() == "8"
    bad = script("--task", str(EXPECTED))
    assert bad.returncode == 2 and f"tasks 0-{EXPECTED - 1}" in bad.stderr


def test_one_task_then_tables_and_figures(tmp_path):
    index = [name for _, name, _ in listed()].index("iid-signum-lr0.0003")
    quick = ["--iterations", "10", "--ranks", "3", "--runs", str(tmp_path / "runs"),
             "--figures", str(tmp_path / "figures")]
    # the task comes from $SLURM_ARRAY_TASK_ID when --task is not given
    done = script(*quick, env={"SLURM_ARRAY_TASK_ID": str(index)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "runs" / "iid-signum-lr0.0003.h5").is_file()
    assert len(list((tmp_path / "runs").iterdir())) == 1

    table = script("--table-only", *quick)
    assert table.returncode == 0, table.stderr
    row = next(line for line in table.stdout.splitlines()
               if line.startswith(f"| {index} | iid-signum-lr0.0003 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2:7] == ["signum-mv", "iid", "2", "0.0003", "0.9"]
    assert float(cells[8]) > 0 and 0 <= float(cells[10]) <= 100
    assert f"| {index + 1} | iid-signum-lr0.001 | (no log) |" in table.stdout
    png = tmp_path / "figures" / "paper_claims-lr-sweep.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_slurm_array_matches_the_list():
    path = ROOT / "slurm" / "paper_claims.sbatch"
    subprocess.run(["bash", "-n", str(path)], check=True)
    text = path.read_text()
    assert f"#SBATCH --array=0-{EXPECTED - 1}\n" in text
    assert "--task \"$TASK\" --launch none" in text and "--kill-on-bad-exit=1" in text
