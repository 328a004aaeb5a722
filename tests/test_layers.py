"""The package's layering (docs/architecture.md), checked on the source as it is.

* ``lint-imports`` checks the layers contract in ``pyproject.toml`` (a package imports only
  those below it), counting imports inside functions too;
* no two modules import each other, directly or through others (grimp's import graph);
* the command line's parsers and everything under ``hpcgrad analyze`` load neither Numba
  nor torch nor MPI: a typo in a setting is answered before any heavy import.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_layers_contract_is_kept():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or \
        shutil.which("lint-imports")
    assert exe, "lint-imports not installed (pip install -e '.[test]')"
    run = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "1 kept, 0 broken" in run.stdout


def _cycles(graph, modules) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in modules:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(modules):
        if module not in index:
            visit(module)
    return found


def test_no_module_imports_itself_through_others():
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("hpcgrad", cache_dir=None)
    modules = {m for m in graph.modules if m.startswith("hpcgrad")}
    assert len(modules) > 40
    # A package's __init__ importing its own submodules is how packages work, not a cycle.
    for package in [m for m in modules if graph.find_children(m)]:
        for child in graph.find_modules_directly_imported_by(package):
            if child.startswith(package + "."):
                graph.remove_import(importer=package, imported=child)
    assert _cycles(graph, modules) == []


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["analyze", "--help"],
                                  ["analyze", "summary", "--help"], ["bench", "--help"]])
def test_help_loads_no_numba_torch_or_mpi(argv):
    probe = ("import json, sys\nfrom hpcgrad.cli import build_parser\n"
             f"try:\n    build_parser().parse_args({argv!r})\nexcept SystemExit:\n    pass\n"
             "heavy = ('numba', 'torch', 'mpi4py.MPI', 'h5py', 'pandas', 'matplotlib')\n"
             "print(json.dumps([m for m in heavy if m in sys.modules]))\n")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1]) == []
    assert "usage:" in run.stdout
