"""docs/architecture.md cannot go stale silently: every file and module it names exists, and
every row of its algorithm table is a registered algorithm.

The table need not list every registered algorithm (a new algorithm is one module, its tests
and its page: issue 15), so the other direction is checked on the code instead: every
registered algorithm's module says what it does (a module docstring) and a ``docs`` page it
names exists.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
from pathlib import Path

import pytest

from hpcgrad.algorithms import REGISTRY

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
TEXT = DOC.read_text(encoding="utf-8")

#: Repository paths the page names: ``hpcgrad/wire/header.py``, ``tests/wire/``, ``docs/x.md``.
PATH = re.compile(r"(?<![\w./-])((?:hpcgrad|tests|docs|launch|slurm|experiments)/[\w./*<>-]*)")
#: Dotted names under the package: ``hpcgrad.comm.transport``, ``hpcgrad.kernels.jit.njit``.
DOTTED = re.compile(r"(?<![\w.])hpcgrad(?:\.\w+)+")


def _named_paths() -> list[str]:
    found = set()
    for match in PATH.finditer(TEXT):
        path = match.group(1).rstrip(".")
        if "<" in path:  # a pattern: tests/algorithms/test_<name>.py
            continue
        found.add(path)
    return sorted(found)


def _tree_paths() -> list[str]:
    """The files and folders of the layout tree (the code block that starts with
    ``hpcgrad/``), two spaces of indentation per level."""
    blocks = re.findall(r"```\n(hpcgrad/\n.*?)```", TEXT, flags=re.S)
    assert len(blocks) == 1, "docs/architecture.md: expected one layout tree starting 'hpcgrad/'"
    stack: list[str] = []
    paths = []
    for line in blocks[0].splitlines():
        name = line.split()[0]
        depth = (len(line) - len(line.lstrip(" "))) // 2
        del stack[depth:]
        stack.append(name.rstrip("/"))
        paths.append("/".join(stack) + ("/" if name.endswith("/") else ""))
    return paths


@pytest.mark.parametrize("path", _named_paths())
def test_every_named_path_exists(path):
    matches = list(ROOT.glob(path)) if "*" in path else [ROOT / path]
    assert matches and all(p.exists() for p in matches), \
        f"docs/architecture.md names {path}, which does not exist"
    if path.endswith("/"):
        assert matches[0].is_dir(), f"docs/architecture.md names {path} as a folder"


def test_the_layout_tree_names_only_existing_files():
    paths = _tree_paths()
    assert len(paths) > 40  # the tree was parsed, not skipped
    missing = [p for p in paths if not (ROOT / p).exists()]
    assert not missing, f"docs/architecture.md's layout tree names missing files: {missing}"
    layers = [p for p in paths if p.count("/") == 2 and p.endswith("/")]
    assert {"hpcgrad/wire/", "hpcgrad/comm/", "hpcgrad/training/"} <= set(layers)


def _top_level_names(module_file: Path) -> set[str]:
    """Names a module binds at top level (defs, classes, assignments, imports, ``__all__``)."""
    tree = ast.parse(module_file.read_text(encoding="utf-8"))
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for leaf in ast.walk(target):
                    if isinstance(leaf, ast.Name):
                        names.add(leaf.id)
            if isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets) \
                    and isinstance(node.value, (ast.List, ast.Tuple)):
                names.update(e.value for e in node.value.elts if isinstance(e, ast.Constant))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def _module_file(name: str) -> Path | None:
    """The source file of module ``name`` under hpcgrad/ (a package's ``__init__.py``), found
    without importing it (only its parent packages, which are light)."""
    spec = importlib.util.find_spec(name)
    return Path(spec.origin) if spec is not None and spec.origin else None


@pytest.mark.parametrize("dotted", sorted(set(DOTTED.findall(TEXT))))
def test_every_named_module_exists(dotted):
    parts = dotted.split(".")
    module, rest = None, []
    for i in range(len(parts), 0, -1):
        try:
            origin = _module_file(".".join(parts[:i]))
        except ModuleNotFoundError:
            origin = None
        if origin is not None:
            module, rest = ".".join(parts[:i]), parts[i:]
            break
    assert module is not None, f"docs/architecture.md names {dotted}: no such module"
    if rest:  # an attribute of the module: defined (or re-exported) at its top level
        names = _top_level_names(_module_file(module))
        assert rest[0] in names, \
            f"docs/architecture.md names {dotted}: {module} defines no {rest[0]!r}"


def _algorithm_table_names() -> list[str]:
    section = TEXT.split("## Where each algorithm lives", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines()
            if line.startswith("| `") and not line.startswith("| `--algorithm`")]
    names = []
    for row in rows:
        names += re.findall(r"`([^`]+)`", row.split("|")[1])
    return names


def test_the_algorithm_table_lists_only_registered_algorithms():
    names = _algorithm_table_names()
    assert len(names) >= 5, names  # the table was found and parsed
    stale = [n for n in names if n not in REGISTRY]
    assert not stale, (f"docs/architecture.md's algorithm table has rows for {stale}, which "
                       f"are not registered (registered: {sorted(REGISTRY)})")


def test_the_algorithm_table_names_each_algorithms_own_module():
    section = TEXT.split("## Where each algorithm lives", 1)[1].split("\n## ", 1)[0]
    for row in section.splitlines():
        if not row.startswith("| `") or row.startswith("| `--algorithm`"):
            continue
        cells = row.split("|")
        for name in re.findall(r"`([^`]+)`", cells[1]):
            if name not in REGISTRY:  # a stale row: the test above names it
                continue
            module = REGISTRY[name].__module__.replace(".", "/") + ".py"
            assert f"`{module}`" in cells[2], \
                f"docs/architecture.md: {name} lives in {module}, the table says {cells[2]}"
            assert REGISTRY[name].__name__ in cells[2], \
                f"docs/architecture.md: {name} is class {REGISTRY[name].__name__}"


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_registered_algorithm_documents_itself(name):
    cls = REGISTRY[name]
    module = sys.modules[cls.__module__]
    doc = (module.__doc__ or "").strip()
    assert len(doc) > 80, f"{cls.__module__} ({name}) needs a module docstring saying its " \
                          "worker step, server step and wire format"
    assert cls.summary, f"{name}: no summary for --algorithm's help"
    if cls.docs:
        assert (ROOT / cls.docs).is_file(), f"{name}: its docs page {cls.docs} does not exist"


#: Algorithms without a paper of their own (baselines): no method page.
BASELINES = {"fp32-ps", "fp16-ps", "allreduce"}


@pytest.mark.parametrize("name", [n for n in REGISTRY if n not in BASELINES])
def test_every_paper_method_has_a_page_that_says_what_is_ours(name):
    """Issue 21: a page per method under docs/algorithms/, named by the algorithm (so --help
    points to it), that sets the paper's method apart from our reading and our inventions."""
    cls = REGISTRY[name]
    assert cls.docs.startswith("docs/algorithms/"), f"{name}: no method page in its docs"
    text = (ROOT / cls.docs).read_text().lower()
    assert "paper" in text and ("our reading" in text or "ours" in text), \
        f"{cls.docs}: says nothing of what is the paper's and what is ours"
