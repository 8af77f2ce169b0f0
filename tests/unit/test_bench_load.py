"""tests/bench/bench_load.py stays runnable: its --help, and how it reads controllerd's log."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_help_lists_the_run_flags():
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tests", "bench", "bench_load.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    for flag in ("--duration", "--exporters", "--clients", "--quick"):
        assert flag in result.stdout


def test_log_lines_are_counted_by_level_and_event():
    from tests.bench.bench_load import log_levels

    lines = [
        json.dumps({"level": "info", "event": "lease granted"}),
        json.dumps({"level": "warning", "event": "lease paused: exporter offline"}),
        json.dumps({"level": "warning", "event": "lease paused: exporter offline"}),
        json.dumps({"level": "error", "event": "refused a second active lease on one exporter"}),
        "Traceback (most recent call last):",
    ]
    levels, other = log_levels("\n".join(lines))
    assert levels == {
        ("warning", "lease paused: exporter offline"): 2,
        ("error", "refused a second active lease on one exporter"): 1,
    }
    assert other == 1
