#!/usr/bin/env bash
# Run the whole test suite: the serial tests, then the multi-rank (MPI) tests at 3 and 5 ranks.
#
#   bash tests/run-all.sh [extra pytest args...]     e.g.  bash tests/run-all.sh -k codec -x
#
# Paths among the extra arguments replace the default `tests`.
# Run it with the environment that has hpcgrad installed active (or with `python` on PATH being
# that environment's; PYTHON=/path/to/python overrides). Extra arguments go to every pytest run.
#
# Stages:
#   serial  python -m pytest tests                     (mpi-marked tests are skipped there)
#   mpi-3   mpiexec -n 3 python -m mpi4py -m pytest --with-mpi -m mpi tests
#   mpi-5   the same on 5 ranks (odd world sizes catch padding bugs that 2 and 4 hide)
# * mpiexec is the one next to the environment's python (pip's MPICH). Debian's /usr/bin/mpiexec
#   may be Open MPI, which pip-MPICH ranks cannot use. HPCGRAD_TEST_MPIEXEC overrides it.
# * `python -m mpi4py` makes an unhandled exception on any rank abort the whole job.
# * Every stage runs under `timeout` (seconds: HPCGRAD_TEST_SERIAL_TIMEOUT, default 900, and
#   HPCGRAD_TEST_MPI_TIMEOUT per MPI stage, default 600), so a hang fails instead of blocking;
#   pytest-timeout (setup.cfg) already ends a single hung test. HPCGRAD_TEST_MPI_SIZES="3 5"
#   sets the world sizes ("" skips the MPI stages).
# * pytest exit status 5 (no tests collected) counts as a failure in every stage.
# * Counts come from a junit xml per stage (in the MPI stages rank 0 writes it with every rank's
#   outcome combined; see tests/conftest.py). The last line is `N passed, N failed`
#   (failed includes errors). Exit status is non-zero if any stage failed.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-python}"
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "run-all.sh: '$PYTHON' not found; activate the environment with hpcgrad installed" >&2
    exit 2
fi
PYEXE="$("$PYTHON" -c 'import sys; print(sys.executable)')" || exit 2
MPIEXEC="${HPCGRAD_TEST_MPIEXEC:-$(dirname "$PYEXE")/mpiexec}"
SERIAL_TIMEOUT="${HPCGRAD_TEST_SERIAL_TIMEOUT:-900}"
MPI_TIMEOUT="${HPCGRAD_TEST_MPI_TIMEOUT:-600}"
MPI_SIZES="${HPCGRAD_TEST_MPI_SIZES-3 5}"  # set to "" to skip the MPI stages

# Oversubscribed ranks: one thread each unless the caller chose otherwise, and MPICH ranks
# that wait in a collective sleep instead of spinning on sched_yield (they would otherwise
# take the cores from the ranks they wait for; docs/benchmarks.md measures the effect).
export MPIR_CVAR_ENABLE_HEAVY_YIELD="${MPIR_CVAR_ENABLE_HEAVY_YIELD:-1}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/hpcgrad-tests.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
trap 'echo "run-all.sh: interrupted" >&2; exit 130' INT

# Test selection: `tests`, unless the extra arguments name paths themselves
# (e.g. `bash tests/run-all.sh tests/test_harness.py`).
TARGET=(tests)
for arg in "$@"; do
    case "$arg" in
        -*) ;;
        *) if [ -e "${arg%%::*}" ]; then TARGET=(); fi ;;
    esac
done

# In a terminal, keep the stage in the foreground process group so that Ctrl-C reaches pytest
# and mpiexec (on a timeout only the stage's command is signalled then; mpiexec cleans up its
# ranks, and tests/mpirun.py's launches die with pytest). In CI, `timeout` signals the whole
# process group.
TIMEOUT_MODE=()
if [ -t 0 ] && [ -t 1 ]; then
    TIMEOUT_MODE=(--foreground)
fi

names=()
statuses=()

# run_stage NAME SECONDS COMMAND...: run one stage under `timeout`, record its exit status.
run_stage() {
    local name="$1" limit="$2"
    shift 2
    echo
    echo "==================== [$(date '+%H:%M:%S')] stage $name ===================="
    echo "+ $*"
    local start=$SECONDS rc=0
    timeout ${TIMEOUT_MODE[@]+"${TIMEOUT_MODE[@]}"} --kill-after=30 "$limit" "$@" </dev/null || rc=$?
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        echo "run-all.sh: stage $name timed out after $limit s (exit $rc)" >&2
    fi
    echo "==================== stage $name: exit $rc after $((SECONDS - start)) s ===================="
    names+=("$name")
    statuses+=("$rc")
}

run_stage serial "$SERIAL_TIMEOUT" "$PYTHON" -m pytest --durations=10 "$@" --junitxml="$WORK/serial.xml" ${TARGET[@]+"${TARGET[@]}"}

if [ -x "$MPIEXEC" ] || command -v "$MPIEXEC" >/dev/null 2>&1; then
    for n in $MPI_SIZES; do
        run_stage "mpi-$n" "$MPI_TIMEOUT" "$MPIEXEC" -n "$n" "$PYTHON" -m mpi4py -m pytest -p no:cacheprovider \
            "$@" --with-mpi -m mpi --junitxml="$WORK/mpi-$n.xml" ${TARGET[@]+"${TARGET[@]}"}
    done
else
    echo "run-all.sh: no mpiexec at $MPIEXEC (install the 'mpich' package or set HPCGRAD_TEST_MPIEXEC)" >&2
    for n in $MPI_SIZES; do
        names+=("mpi-$n")
        statuses+=(127)
    done
fi

# Summary: one line per stage, then the totals line.
echo
echo "==================== [$(date '+%H:%M:%S')] summary ===================="
"$PYTHON" - "$WORK" "${#names[@]}" "${names[@]}" "${statuses[@]}" <<'EOF'
import os
import sys
import xml.etree.ElementTree as ET

work, count = sys.argv[1], int(sys.argv[2])
names, statuses = sys.argv[3:3 + count], [int(s) for s in sys.argv[3 + count:3 + 2 * count]]
meaning = {1: "tests failed", 2: "interrupted", 3: "internal error", 4: "usage error",
           5: "no tests collected", 124: "timed out", 137: "killed after timeout",
           127: "mpiexec not found"}
total_passed = total_failed = 0
any_failed = False
for name, rc in zip(names, statuses):
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    path = os.path.join(work, name + ".xml")
    have_report = False
    try:
        root = ET.parse(path).getroot()
        suites = [root] if root.tag == "testsuite" else root.iter("testsuite")
        for suite in suites:
            for key in counts:
                counts[key] += int(suite.get(key, 0))
        have_report = True
    except (OSError, ET.ParseError, ValueError):
        pass
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    failed = counts["failures"] + counts["errors"]
    notes = []
    if rc != 0:
        any_failed = True
        notes.append(f"exit {rc}" + (f": {meaning[rc]}" if rc in meaning else ""))
        if failed == 0:
            # A crash, hang, abort or empty collection: count the stage itself as one failure.
            failed = 1
            notes.append("counted as 1 failure")
    if not have_report:
        notes.append("no junit report")
    status = "FAILED" if rc != 0 else "ok"
    print(f"{name:8s} {status:6s} {passed} passed, {failed} failed, {counts['skipped']} skipped"
          + (f" ({'; '.join(notes)})" if notes else ""))
    total_passed += passed
    total_failed += failed
print(f"{total_passed} passed, {total_failed} failed")
sys.exit(1 if any_failed else 0)
EOF
