"""Regenerate every table and figure of docs/experiments.md: run each group of
experiments/ablations.py that has runs still to do, then write the tables and figures.

    python experiments/regenerate.py                 # everything (hours on 2 cores)
    python experiments/regenerate.py --list          # the groups, their ranks and what is done
    python experiments/regenerate.py --dry-run       # the mpiexec line of every group
    python experiments/regenerate.py --only ef-n4 ef-n8    # those groups, then every table
    python experiments/regenerate.py --tables-only   # no training: tables and figures from logs

Each group runs as its own MPI job, ``mpiexec -n RANKS python -m mpi4py
experiments/ablations.py run --group G`` (every run of the group inside that one job; a run
whose log is complete is skipped, so an interrupted regeneration continues where it stopped).
Groups are discovered from ``ablations.GROUPS``: a group added there is run and tabled without
any change here.  Under Slurm, ``slurm/experiments.sbatch`` runs one group per array task and
then this script with ``--tables-only``.

Writing: docs/experiments.md holds regions

    <!-- regenerate: table GROUP -->  ...  <!-- /regenerate -->

whose contents this script replaces; a region none of whose runs has a complete log here (the
results of another machine) is kept as it is.  The kinds: ``table GROUP`` (the group's
accuracy table, ``ablations.group_table``); ``timing GROUP``, ``selection GROUP`` and ``losses
GROUP`` (``reports.timing``, ``reports.selection``, ``reports.losses``); ``bits-curve FILE.png
GROUP...`` (``reports.bits_curve``: writes docs/experiments/FILE.png); ``votes TABLE``
(``experiments/votes.py``'s ``workers``, ``adversaries``, ``k-rule`` or ``digits`` table over
the ``votes-*`` groups, and its figure).  A group with no
``table`` region has its table printed instead, so nothing is lost; a region naming an unknown
group or kind stops the script before it writes.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import ablations  # noqa: E402  (experiments/ is not a package)

DOC = ROOT / "docs" / "experiments.md"   # figures go to experiments/ beside it
REGION = re.compile(r"(<!-- regenerate: (?P<spec>[^>]*?) -->\n)(?P<body>.*?)"
                    r"(<!-- /regenerate -->)", re.S)
KINDS = ("table", "timing", "selection", "losses", "bits-curve", "votes")
#: ``votes TABLE``: experiments/votes.py's table TABLE, read from these groups' logs (and, for
#: ``workers`` and ``adversaries``, its figure redrawn).
VOTE_TABLES = {
    "workers": [f"votes-workers-m{m}" for m in ablations.VOTE_WORKERS],
    "adversaries": ["votes-adversaries"],
    "k-rule": [f"votes-k-rule-m{m}" for m in ablations.K_RULE_WORKERS],
    "digits": ["votes-digits-m15"],
}


def mpiexec_line(group, args) -> list[str]:
    """The one MPI job that runs every run of ``group`` still to do."""
    mpiexec = str(Path(sys.executable).parent / "mpiexec")
    line = [mpiexec, "-n", str(group.ranks), sys.executable, "-m", "mpi4py",
            str(HERE / "ablations.py"), "run", "--group", group.name,
            "--seeds", *map(str, args.seeds), "--runs", args.runs]
    return line


def todo(group, args) -> int:
    """Runs of ``group`` still to do: neither a complete log nor a divergence marker."""
    return sum(not ablations.done(ablations.log_of(group, name, Path(args.runs)))
               for name, _ in ablations.runs_of(group, args.seeds))


def selected(args) -> list:
    """The groups ``--only`` names (names, globs or indices), in GROUPS order; all without it."""
    if not args.only:
        return list(ablations.GROUPS)

    def matches(i, group, pattern):
        return pattern == str(i) or fnmatch.fnmatch(group.name, pattern)

    unknown = [p for p in args.only
               if not any(matches(i, g, p) for i, g in enumerate(ablations.GROUPS))]
    if unknown:
        raise SystemExit(f"regenerate.py: error: no group matches {', '.join(unknown)}; the "
                         f"groups are {', '.join(g.name for g in ablations.GROUPS)}")
    return [g for i, g in enumerate(ablations.GROUPS)
            if any(matches(i, g, p) for p in args.only)]


# ---- writing ---------------------------------------------------------------------------------


def group_names(spec: str) -> list[str]:
    kind, *operands = spec.split()
    if kind == "votes":
        return VOTE_TABLES.get(operands[0], []) if len(operands) == 1 else []
    return operands[1:] if kind == "bits-curve" else operands


def region_problem(spec: str) -> str | None:
    """What is wrong with a region's ``kind operands``, or None."""
    kind, *operands = spec.split() or [""]
    if kind not in KINDS:
        return f"unknown kind (kinds: {', '.join(KINDS)})"
    if kind == "bits-curve" and not (len(operands) > 1 and operands[0].endswith(".png")):
        return "bits-curve takes FILE.png and one or more groups"
    if kind == "votes" and (len(operands) != 1 or operands[0] not in VOTE_TABLES):
        return f"votes takes one of {', '.join(VOTE_TABLES)}"
    if kind != "bits-curve" and len(operands) != 1:
        return f"{kind} takes one group"
    for name in group_names(spec):
        try:
            ablations.group_named(name)
        except LookupError as exc:
            return exc.args[0]
    return None


def has_logs(spec: str, args) -> bool:
    """Whether any group the region reads has a complete log here."""
    root = Path(args.runs)
    return any(ablations.complete(ablations.log_of(group, name, root))
               for group in map(ablations.group_named, group_names(spec))
               for name, _ in ablations.runs_of(group, args.seeds))


def render(spec: str, args) -> str:
    """The Markdown of one region."""
    import reports

    kind, *operands = spec.split()
    root = Path(args.runs)
    if kind == "bits-curve":
        png, groups = operands[0], operands[1:]
        table = reports.bits_curve(groups, args.seeds, root,
                                   Path(args.doc).parent / "experiments" / png)
        return f"![accuracy against cumulative uplink bytes](experiments/{png})\n\n{table}"
    if kind == "votes":
        return vote_table(operands[0], args)
    group = ablations.group_named(operands[0])
    if kind == "table":
        return ablations.group_table(group, args.seeds, root)
    return getattr(reports, kind)(group.name, args.seeds, root)


def vote_table(name: str, args) -> str:
    """experiments/votes.py's table ``name`` (its printed Markdown, without the heading)."""
    import contextlib
    import io

    import votes

    root, figures = Path(args.runs), Path(args.doc).parent / "experiments"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        curves = getattr(votes, f"{name.replace('-', '_')}_table")(args, root)
    if name == "workers" and curves:
        votes.plot_workers(curves, figures / "votes-workers.png")
    if name == "adversaries" and any(rows for points in curves.values() for _, rows in points):
        votes.plot_adversaries(curves, figures / "votes-adversaries.png")
    lines = printed.getvalue().strip().splitlines()
    return "\n".join(line for line in lines if not line.startswith("#### ")).strip()


def write(args) -> int:
    doc = Path(args.doc)
    text = doc.read_text()
    regions = list(REGION.finditer(text))
    tabled = set()
    for m in regions:   # check every region before writing anything
        problem = region_problem(m["spec"])
        if problem:
            raise SystemExit(f"regenerate.py: error: {doc}: region '{m['spec']}': {problem}")
        kind, *operands = m["spec"].split()
        if kind == "table":
            tabled.add(operands[0])
    started = time.perf_counter()
    kept = [m["spec"] for m in regions if not has_logs(m["spec"], args)]

    def rewrite(m):
        if m["spec"] in kept:   # another machine's results: no log of them here to redo them
            return m[0]
        return f"{m[1]}{render(m['spec'], args)}\n{m[4]}"

    doc.write_text(REGION.sub(rewrite, text))
    print(f"wrote {len(regions) - len(kept)} regions of {doc} in "
          f"{time.perf_counter() - started:.1f} s", flush=True)
    for spec in kept:
        print(f"kept '{spec}' as it was: none of its runs has a complete log in {args.runs}")
    for group in ablations.GROUPS:
        if group.name not in tabled:
            print(f"\n#### {group.name} (no 'table {group.name}' region in {doc.name})\n")
            print(ablations.group_table(group, args.seeds, Path(args.runs)))
    return 0


# ---- main ------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list", action="store_true",
                        help="print every group: index, name, ranks, runs done")
    parser.add_argument("--dry-run", action="store_true",
                        help="print each group's mpiexec line and how many runs it has to do")
    parser.add_argument("--only", nargs="+", metavar="GROUP",
                        help="run only these groups (names, globs or indices); tables: all")
    parser.add_argument("--tables-only", action="store_true",
                        help="run nothing; write the tables and figures from the logs")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--runs", default=str(ablations.RUNS_DIR), help="where the logs are")
    parser.add_argument("--doc", default=str(DOC),
                        help="the Markdown file whose regions are rewritten (default: %(default)s)")
    args = parser.parse_args(argv)
    groups = selected(args)
    if args.list:
        for group in groups:
            total = len(ablations.runs_of(group, args.seeds))
            print(f"{ablations.GROUPS.index(group)} {group.name}: {group.ranks} ranks, "
                  f"{total - todo(group, args)} of {total} runs done; {group.what}")
        return 0
    if args.dry_run:
        for group in groups:
            left = todo(group, args)
            print(f"# {group.name}: {left} of {len(ablations.runs_of(group, args.seeds))} runs "
                  "to do" + ("" if left else " (skipped)"))
            print(" ".join(mpiexec_line(group, args)))
        print(f"# then: write the tables and figures of {args.doc}")
        return 0
    failed = []
    if not args.tables_only:
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        for group in groups:
            if not todo(group, args):
                print(f"{group.name}: every log complete, skipped", flush=True)
                continue
            line = mpiexec_line(group, args)
            left = todo(group, args)
            while True:
                print("$", " ".join(line), flush=True)
                started = time.perf_counter()
                rc = subprocess.run(line, env=env).returncode
                print(f"{group.name}: exit status {rc}, {time.perf_counter() - started:.0f} s",
                      flush=True)
                # a run that diverged aborts its job and leaves a marker: start the group
                # again for the runs after it, as long as each job gets further
                if rc == 0 or not 0 < todo(group, args) < left:
                    break
                left = todo(group, args)
            if todo(group, args):   # a job that ends on a diverged run still did everything
                failed.append(group.name)
    write(args)
    if failed:
        print(f"regenerate.py: groups that failed (their rows say 'not run' or show fewer "
              f"seeds): {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
