"""experiments/ablations.py: its run list, two tiny real runs inside one mpiexec job (3 ranks,
4 iterations), and the table read back from their logs: the lr chosen on validation, the test
accuracy as mean ± std over the seeds, and rows not run said so."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from mpirun import mpi_env, run_mpi

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "experiments" / "ablations.py"


def script(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, text=True,
                          capture_output=True, env=mpi_env(), timeout=90)


def test_list_names_the_groups_and_their_runs():
    done = script("--list", "--seeds", "0", "1", "2")
    assert done.returncode == 0, done.stderr
    assert "0 s3gd-residual:" in done.stdout and "1 digits:" in done.stdout
    for name in ("classes2-s3gd-nores-lr0.01-s2", "s3gd-lr0.003-s0", "dq-eps-lr0.1-s1",
                 "saef-lr0.03-s2"):
        assert f"    {name}: " in done.stdout, name
    assert '"residual": 0.0' in done.stdout and '"validation_fraction": 0.2' in done.stdout


def test_runs_in_one_job_then_the_table_chooses_on_validation(tmp_path):
    runs = tmp_path / "runs"
    done = run_mpi(3, [str(SCRIPT), "run", "--group", "digits", "--seeds", "0", "1",
                       "--only", "fp32-lr0.1-*", "--iterations", "4", "--runs", str(runs)],
                   module=None, timeout=100, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in (runs / "digits").iterdir()) == \
        ["fp32-lr0.1-s0.h5", "fp32-lr0.1-s1.h5"]
    assert "group digits: ran 2 of its 52 runs in" in done.stdout
    table = script("table", "--group", "digits", "--seeds", "0", "1", "--runs", str(runs))
    assert table.returncode == 0, table.stderr
    row = next(line for line in table.stdout.splitlines() if line.startswith("| fp32 SGD"))
    # lr 0.1 is the only one run; two seeds give a mean and a sample std
    mean_std = r"[\d.]+ ± [\d.]+"
    assert re.search(rf"\| 0\.1 \(0\.1, 0\.03\) \| {mean_std} \| {mean_std} \|", row), row
    assert "| QSGD 4 bits | iid | not run |" in table.stdout
    assert "2 of 52 runs complete" in " ".join(table.stdout.split())
    # a run that diverged (its marker, as the rank that saw the NaN writes it) rules its lr out
    (runs / "digits" / "qsgd-2-lr0.03-s1.diverged").write_text("loss is nan at step 3\n")
    marked = script("table", "--group", "digits", "--seeds", "0", "1", "--runs", str(runs))
    assert "| QSGD 2 bits | iid | diverged at 0.03 (seed 1) |" in marked.stdout
    (runs / "digits" / "qsgd-2-lr0.03-s1.diverged").unlink()
    # regenerate.py writes the same table into a document's region, the rest left alone
    doc = tmp_path / "experiments.md"
    doc.write_text("# E\n<!-- regenerate: table digits -->\nold\n<!-- /regenerate -->\nend\n")
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "regenerate.py"),
                           "--tables-only", "--doc", str(doc), "--seeds", "0", "1",
                           "--runs", str(runs)], cwd=ROOT, text=True, capture_output=True,
                          env=mpi_env(), timeout=90)
    assert done.returncode == 0, done.stderr
    text = doc.read_text()
    assert text.startswith("# E\n<!-- regenerate: table digits -->\n2 seeds (0, 1), 4 workers")
    assert row in text and "\nold\n" not in text and text.endswith("<!-- /regenerate -->\nend\n")


def test_list_has_the_vote_groups_with_their_world_sizes():
    done = script("--list", "--seeds", "0", "1", "2")
    assert done.returncode == 0, done.stderr
    for name, runs in (("votes-workers-m1", 18), ("votes-workers-m15", 18),
                       ("votes-k-rule-m8", 12), ("votes-k-rule-m15", 12),
                       ("votes-digits-m15", 30)):
        assert re.search(rf"^\d+ {name}: .* \({runs} runs\)$", done.stdout, re.M), name
    assert "    s3gd-auto-lr0.01-s2: " in done.stdout
    line = next(ln for ln in done.stdout.splitlines()
                if ln.startswith("    signum-a3-random-lr"))
    assert '"adversaries": 3, "attack": "random"' in line and '"momentum": 0.9' in line


def test_votes_tables_say_what_was_not_run(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "votes.py"), "--runs",
                           str(tmp_path / "runs"), "--figures", str(tmp_path / "fig")],
                          cwd=ROOT, text=True, capture_output=True, timeout=90)
    assert done.returncode == 0, done.stderr
    assert "| 15 | Signum-MV (momentum 0.9) | not run |" in done.stdout
    assert "| 8 | d/M | not run |" in done.stdout
    assert list((tmp_path / "fig").iterdir()) == []
