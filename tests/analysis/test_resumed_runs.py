"""Analysis of resumed runs (issue 23): the logs of a run's parts are stitched by step, so a
resumed run plotted, summarised, compared and exported counts every step once and its bytes
sum to the uninterrupted run's; evaluations are placed by step, not by row.

One real 3-rank run of 30 steps (checkpoints every 10, evaluations every 10) is the
uninterrupted run and also the first part: its rows past step 10 are the ones an interrupted
run would have logged after its last checkpoint.  Part 2 resumes it from step 10 (and writes
checkpoints of its own), part 3 resumes part 2 from step 20."""

import json

import numpy as np
import pytest

from hpcgrad.analysis import plots, reader, summary
from hpcgrad.analysis.cli import run as analyze_run
from hpcgrad.cli import build_parser
from mpirun import train_several

pytestmark = pytest.mark.timeout(400)

COMMON = ["--iterations", "30", "--quiet", "--hidden", "16", "--eval-every", "10",
          "--flush-every", "4", "--algorithm", "ef-sgd", "--compressor", "topk"]


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("resumed")
    launches = [
        ("whole.h5", ["--checkpoint-every", "10", "--checkpoint-dir", str(root / "ck")]),
        ("part2.h5", ["--resume", str(root / "ck" / "step-00000010"),
                      "--checkpoint-every", "10", "--checkpoint-dir", str(root / "ck2")]),
        ("part3.h5", ["--resume", str(root / "ck2" / "step-00000020")]),
    ]
    # One after another in one 3-rank job (tests/mpirun.py's train_several): each part
    # resumes from the checkpoint the one before it wrote.
    done = train_several(3, {name: (root, [*COMMON, "--log", str(root / name), *options])
                             for name, options in launches}, timeout=350)
    for name, _ in launches:
        assert done[name].returncode == 0, done[name].stderr[-3000:]
    return root


def analyze(*argv):
    args = build_parser().parse_args(["analyze", *map(str, argv)])
    return analyze_run(args)


def test_parts_record_the_run_and_where_they_start(parts):
    logs = reader.open_logs([parts / n for n in ("whole.h5", "part2.h5", "part3.h5")])
    try:
        whole, part2, part3 = logs
        assert [log.meta["part"] for log in logs] == [0, 1, 2]
        assert [log.first_step for log in logs] == [0, 10, 20]
        assert len({log.meta["run_id"] for log in logs}) == 1
        assert part2.meta["previous_log"] == str(parts / "whole.h5")
        assert part3.meta["previous_log"] == str(parts / "part2.h5")
        assert part3.meta["resumed_from"].endswith("step-00000020")
        assert list(part2.array("iteration")) == list(range(10, 30))
        assert list(part2.evals()["iteration"]) == [20, 30]
    finally:
        for log in logs:
            log.close()


def test_stitched_run_counts_every_step_once(parts):
    (whole,) = reader.open_runs([parts / "whole.h5"])
    (run,) = reader.open_runs([parts / n for n in ("part3.h5", "whole.h5", "part2.h5")])
    try:
        assert isinstance(run, reader.StitchedRun) and len(run.parts) == 3
        assert list(run.array("iteration")) == list(range(30))
        assert run.complete and run.missing_steps() == 0
        # Resume is exact: every step's bytes and losses equal the uninterrupted run's.
        for name in ("bytes_up", "bytes_down", "loss"):
            np.testing.assert_array_equal(run.array(name), whole.array(name))
        assert list(run.evals()["iteration"]) == [10, 20, 30]
        np.testing.assert_array_equal(run.evals()["accuracy"], whole.evals()["accuracy"])
        row, ref = summary.summarize(run), summary.summarize(whole)
        for column in ("steps", "MB up/worker", "MB down/worker", "final accuracy"):
            assert row[column] == ref[column], column
        # Adding up the parts' own totals would count steps 10-29 twice (issue 23).
        naive = sum(part.array("bytes_up").sum() for part in run.parts)
        assert naive > run.array("bytes_up").sum() == whole.array("bytes_up").sum()
    finally:
        whole.close()
        run.close()


def test_evals_are_placed_by_step(parts):
    (part2,) = reader.open_runs([parts / "part2.h5"])  # a part alone: rows from step 10
    try:
        cum, at_eval = plots._cumulative_mb_at_evals(part2)
        it = part2.array("iteration")
        # the evaluation after 20 steps sits at the row of iteration 19, not row 19
        assert at_eval[0] == cum[list(it).index(19)] and at_eval[1] == cum[-1]
    finally:
        part2.close()


def test_cli_plot_summary_compare_export(parts, tmp_path, capsys):
    logs = [parts / n for n in ("whole.h5", "part2.h5", "part3.h5")]
    assert analyze("plot", parts / "part2.h5", "-o", tmp_path / "alone") == 0
    assert analyze("plot", *logs, "-o", tmp_path / "stitched") == 0
    assert (tmp_path / "stitched" / "cumulative_bytes_accuracy.png").stat().st_size > 0
    capsys.readouterr()
    assert analyze("summary", parts / "part2.h5") == 0
    assert "part from step 10" in capsys.readouterr().out
    assert analyze("summary", *logs, "--format", "json") == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["steps"] == 30 and row["run"] == "whole (3 parts)"
    assert analyze("compare", *logs, "--format", "json") == 0
    assert len(json.loads(capsys.readouterr().out)) == 1  # the three parts are one run
    assert analyze("export", *logs, "--csv", tmp_path / "csv") == 0
    steps = (tmp_path / "csv" / "steps.csv").read_text().splitlines()
    assert len(steps) == 31 and steps[1].startswith("0,")
    assert analyze("export", parts / "whole.h5", parts / "nope.h5", "--csv", tmp_path / "x") == 2
