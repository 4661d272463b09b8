"""The package's floors (``.importlinter``, ``../shared/DESIGN.md`` "Layout") hold: import-linter keeps
its contracts, breaks them when a lower floor imports a higher one, grimp finds no import cycle, and no
module hides an upward import inside a function."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "gatesearch"
LINT = Path(sys.executable).parent / "lint-imports"


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` on the package found first on ``cwd``'s path (its own copy, not the installed one)."""
    return subprocess.run([str(LINT), "--no-cache", "--config", str(cwd / ".importlinter")], cwd=cwd,
                          capture_output=True, text=True, env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"},
                          timeout=300)


def test_contracts_are_kept() -> None:
    r = _lint(ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "3 kept, 0 broken" in r.stdout


@pytest.mark.parametrize("module, planted, broken", [
    ("config.py", "import gatesearch.evaluate.table", "Each floor imports only from the floors below it"),
    ("devices/profiles.py", "from gatesearch.selection import pareto", "Each floor imports only from the floors below it"),
    ("train.py", "import mlflow", "Only gatesearch.tracking imports mlflow"),
    ("selection/select.py", "import optuna", "Only gatesearch.search imports Ray and Optuna"),
])
def test_a_planted_upward_import_breaks_a_contract(tmp_path: Path, module: str, planted: str, broken: str) -> None:
    shutil.copytree(PACKAGE, tmp_path / "gatesearch", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".importlinter", tmp_path / ".importlinter")
    target = tmp_path / "gatesearch" / module
    target.write_text(target.read_text() + f"\n{planted}  # planted by the test\n")
    r = _lint(tmp_path)
    assert r.returncode != 0
    assert f"{broken} BROKEN" in r.stdout, r.stdout[-3000:]


def test_no_import_cycle_among_the_package_modules() -> None:
    graph = grimp.build_graph("gatesearch", cache_dir=None)
    modules = sorted(graph.modules)
    edges = {m: sorted(i for i in graph.find_modules_directly_imported_by(m) if i in graph.modules) for m in modules}
    # Tarjan's strongly connected components: any component of more than one module is a cycle
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in edges[v]:
                cycles.append(sorted(comp))

    for m in modules:
        if m not in index:
            visit(m)
    assert cycles == []
    assert len(modules) > 50  # the graph really holds the package


def _function_level_imports(path: Path) -> list[str]:
    """``module`` of every ``from gatesearch... import`` / ``import gatesearch...`` inside a function."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom) and (inner.module or "").startswith("gatesearch"):
                    found.append(f"{path.relative_to(ROOT)}:{inner.lineno} {inner.module}")
                elif isinstance(inner, ast.Import) and any(a.name.startswith("gatesearch") for a in inner.names):
                    found.append(f"{path.relative_to(ROOT)}:{inner.lineno}")
    return found


def test_no_package_import_hides_inside_a_function() -> None:
    """Only the CLI imports the package lazily (its start-up time, documented in ``cli.py``); anywhere
    else an import inside a function would be dodging a cycle."""
    hidden = [hit for p in sorted(PACKAGE.rglob("*.py")) if p.name != "cli.py" for hit in _function_level_imports(p)]
    assert hidden == []
    assert _function_level_imports(PACKAGE / "cli.py")  # the check sees function-level imports at all
