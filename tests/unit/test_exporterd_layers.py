"""exporterd's modules know each other in one direction only (issue 9): main builds the Daemon,
the Daemon builds the ControllerLink, the link builds each LeaseRun; nothing imports back up.

Every import counts, also one inside a function or under `TYPE_CHECKING`: a lazy import back
up is the same knowledge, only hidden until it runs."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGE = "exporterd"
FOLDER = os.path.join(ROOT, PACKAGE)
MODULES = sorted(name[:-3] for name in os.listdir(FOLDER) if name.endswith(".py") and name != "__init__.py")


def imports_of(module: str) -> set[str]:
    """The exporterd modules that `module` imports anywhere in its source."""
    with open(os.path.join(FOLDER, f"{module}.py"), encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: `from . import x`, `from .x import y`
                base = node.module or ""
                names = [f"{PACKAGE}.{base}"] if base else [f"{PACKAGE}.{a.name}" for a in node.names]
            elif node.module == PACKAGE:  # `from exporterd import x`
                names = [f"{PACKAGE}.{alias.name}" for alias in node.names]
            else:
                names = [node.module or ""]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == PACKAGE and len(parts) > 1 and parts[1] in MODULES and parts[1] != module:
                found.add(parts[1])
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path (first module repeated at its end), or None."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return path[path.index(module) :] + [module]
        if module in done:
            return None
        for target in sorted(graph[module]):
            cycle = visit(target, [*path, module])
            if cycle:
                return cycle
        done.add(module)
        return None

    for module in sorted(graph):
        cycle = visit(module, [])
        if cycle:
            return cycle
    return None


def test_find_cycle_sees_a_lazy_circle():
    """The checker itself: a circle through any edge is found, a chain is not."""
    assert find_cycle({"main": {"daemon"}, "daemon": {"main"}}) == ["daemon", "main", "daemon"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_exporterd_import_graph_has_no_cycle():
    graph = {module: imports_of(module) for module in MODULES}
    assert graph["main"], "the checker must see main's imports (else the graph is empty, not clean)"
    cycle = find_cycle(graph)
    assert cycle is None, "exporterd import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("module", MODULES)
def test_each_exporterd_module_imports_alone_in_a_fresh_interpreter(module: str):
    result = subprocess.run(
        [sys.executable, "-c", f"import {PACKAGE}.{module}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("module", MODULES)
def test_each_exporterd_module_says_what_it_owns(module: str):
    with open(os.path.join(FOLDER, f"{module}.py"), encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    assert ast.get_docstring(tree), f"exporterd/{module}.py needs a module docstring saying what it owns"
