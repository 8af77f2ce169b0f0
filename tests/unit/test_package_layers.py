"""Imports run one way (README "Architecture"): the library never imports a daemon, daemons never
import each other. Every import counts, also one inside a function or under `TYPE_CHECKING`."""

from __future__ import annotations

import ast
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DAEMONS = ("exporterd", "controllerd", "routerd")
ALLOWED = {  # package -> the top-level packages of ours it may import
    "jumpstarter": {"jumpstarter"},
    **{daemon: {"jumpstarter", daemon} for daemon in DAEMONS},
}


def our_imports(package: str) -> set[tuple[str, str]]:
    """(file, imported top-level package of ours) for every import in `package`."""
    found: set[tuple[str, str]] = set()
    for folder, _, files in os.walk(os.path.join(ROOT, package)):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            with open(path, encoding="utf-8") as handle:
                tree = ast.parse(handle.read())
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level:
                    modules = [node.module or ""]
                else:
                    continue
                for module in modules:
                    top = module.split(".")[0]
                    if top in ALLOWED:
                        found.add((os.path.relpath(path, ROOT), top))
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_what_its_layer_allows(package: str) -> None:
    wrong = sorted(
        f"{path} imports {top}" for path, top in our_imports(package) if top not in ALLOWED[package]
    )
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_a_daemon_import(tmp_path, monkeypatch) -> None:
    """The scanner itself: a lazy import of a daemon inside a function is found."""
    fake = tmp_path / "jumpstarter"
    fake.mkdir()
    (fake / "x.py").write_text("def f():\n    from controllerd.scheduler import LeaseScheduler\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", str(tmp_path))
    assert our_imports("jumpstarter") == {("jumpstarter/x.py", "controllerd")}
