"""`.ci/run` runs the README's test command, as written in the README's opening block."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```sh\n(.*?)```", text, re.S)
    assert block, "README.md opens with a ```sh block of commands"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_the_readme_opens_with_two_commands_demo_then_tests():
    assert readme_commands() == ["./scripts/demo", "./scripts/test"]


def test_ci_runs_the_readme_test_command_as_its_last_line():
    lines = [
        line.strip()
        for line in (ROOT / ".ci/run").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert lines[-1] == readme_commands()[1]


def test_the_readme_quotes_ci_run_whole():
    """The README shows `.ci/run` in full, so a reader sees it runs the test command and nothing else."""
    blocks = re.findall(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert (ROOT / ".ci/run").read_text() in blocks
