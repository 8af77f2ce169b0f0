"""ruff (lint and format) and mypy stay clean on the packages (STYLE.md)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGES = ["jumpstarter", "exporterd", "controllerd", "routerd"]


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "ruff", "check", *PACKAGES, "tools"],
        [sys.executable, "-m", "ruff", "format", "--check", *PACKAGES, "tools"],
        [sys.executable, "-m", "mypy", *PACKAGES],
    ],
    ids=["ruff-check", "ruff-format", "mypy"],
)
def test_static_checks_pass(command):
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
