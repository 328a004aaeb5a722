"""experiments/regenerate.py: one mpiexec line per group of ablations.GROUPS, discovered
(--dry-run, --list, --only), the regions of a Markdown file rewritten from the logs (and a bad
region refused before anything is written); slurm/experiments.sbatch's array covers the groups.
The groups' runs themselves are tried in tests/test_ablations_script.py (a tiny real run)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from mpirun import mpi_env

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "experiments" / "regenerate.py"
SBATCH = ROOT / "slurm" / "experiments.sbatch"


def script(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=ROOT, text=True,
                          capture_output=True, env=mpi_env(), timeout=90)


def groups() -> list[tuple[int, str, int]]:
    """(index, name, ranks) of every group, as --list prints them."""
    done = script("--list", "--runs", "/nonexistent-runs")
    assert done.returncode == 0, done.stderr
    found = [re.match(r"(\d+) (\S+): (\d+) ranks, 0 of \d+ runs done; ", line)
             for line in done.stdout.splitlines()]
    assert all(found), done.stdout
    return [(int(m[1]), m[2], int(m[3])) for m in found]


def test_dry_run_prints_every_groups_mpiexec_line(tmp_path):
    listed = groups()
    assert [i for i, _, _ in listed] == list(range(len(listed)))
    names = {name for _, name, _ in listed}
    assert {"dq-sgd", "dq-ramp", "ef-n4", "ef-n8", "topk-n4"} <= names
    done = script("--dry-run", "--runs", tmp_path)
    assert done.returncode == 0, done.stderr
    for _, name, ranks in listed:
        line = re.search(rf"^\S*mpiexec -n {ranks} \S*python\S* -m mpi4py \S*ablations\.py run "
                         rf"--group {re.escape(name)} --seeds 0 1 2 --runs {tmp_path}$",
                         done.stdout, re.M)
        assert line, f"no mpiexec line for {name}:\n{done.stdout}"
        assert re.search(rf"^# {re.escape(name)}: (\d+) of \1 runs to do$", done.stdout, re.M)
    assert done.stdout.count("mpiexec -n") == len(listed)


def test_only_takes_names_globs_and_indices_and_names_an_unknown_group(tmp_path):
    done = script("--dry-run", "--only", "ef-*", "2", "--runs", tmp_path)
    assert done.returncode == 0, done.stderr
    assert re.findall(r"--group (\S+)", done.stdout) == ["dq-sgd", "ef-n4", "ef-n8"]
    bad = script("--dry-run", "--only", "no-such-group")
    assert bad.returncode != 0
    assert bad.stderr.strip().splitlines()[-1].startswith(
        "regenerate.py: error: no group matches no-such-group; the groups are ")


def test_regions_without_logs_are_kept_and_a_bad_region_writes_nothing(tmp_path):
    """(A region rewritten from real logs: tests/test_ablations_script.py.)"""
    doc = tmp_path / "experiments.md"
    before = ("# Experiments\n\n<!-- regenerate: table ef-n8 -->\npublished table\n"
              "<!-- /regenerate -->\nkept too\n<!-- regenerate: votes k-rule -->\n"
              "published vote table\n<!-- /regenerate -->\n")
    doc.write_text(before)
    done = script("--tables-only", "--doc", doc, "--runs", tmp_path / "no-runs")
    assert done.returncode == 0, done.stderr
    assert doc.read_text() == before
    assert "kept 'table ef-n8' as it was: none of its runs has a complete log" in done.stdout
    assert "kept 'votes k-rule' as it was" in done.stdout
    # a group without a table region is printed, not lost
    assert "#### dq-sgd (no 'table dq-sgd' region in experiments.md)" in done.stdout
    for region, problem in [("table no-such-group", "no group 'no-such-group'"),
                            ("timing ef-n4 ef-n8", "timing takes one group"),
                            ("bits-curve dq-sgd", "bits-curve takes FILE.png and one or more"),
                            ("votes ef-n4", "votes takes one of workers, adversaries"),
                            ("plot ef-n4", "unknown kind")]:
        doc.write_text(before + f"<!-- regenerate: {region} -->\n<!-- /regenerate -->\n")
        bad = script("--tables-only", "--doc", doc, "--runs", tmp_path / "no-runs")
        assert bad.returncode != 0
        assert bad.stderr.strip() == f"regenerate.py: error: {doc}: region '{region}': " \
            + bad.stderr.strip().split(f"'{region}': ", 1)[1]
        assert problem in bad.stderr and "published table" in doc.read_text()


def test_the_slurm_array_covers_every_group_and_the_script_is_bash():
    subprocess.run(["bash", "-n", str(SBATCH)], check=True)
    text = SBATCH.read_text()
    first, last = map(int, re.search(r"^#SBATCH --array=(\d+)-(\d+)$", text, re.M).groups())
    listed = groups()
    assert (first, last) == (0, len(listed) - 1), \
        "slurm/experiments.sbatch: set '#SBATCH --array=0-N' to the groups regenerate.py lists"
    most = max(ranks for _, _, ranks in listed)
    tasks = int(re.search(r"^#SBATCH --ntasks-per-node=(\d+)$", text, re.M)[1])
    assert tasks >= most, f"the largest group needs {most} ranks; the allocation has {tasks}"
    assert '-m mpi4py "$SCRIPT" run --group "$TASK"' in text
