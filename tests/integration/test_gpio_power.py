"""power.gpio in a real exporterd, against tests/fakes/gpiod (a stand-in for libgpiod's v2 binding).

gpio-sim (the kernel's simulated chip, configured through configfs) is not available in this
container, so exporterd imports the stand-in from PYTHONPATH; it records each line's physical level.
"""

from __future__ import annotations

import os
import signal
import sys

import pytest

from .conftest import exporter_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAKES = os.path.join(ROOT, "tests", "fakes")
RELAY_BOARD = exporter_config(
    "power:\n  type: power.gpio\n  config:\n    line: GPIO17\n    active_low: true\n    off_delay: 0.2\n"
)


@pytest.fixture
def chip(workdir, monkeypatch):  # type: ignore[no-untyped-def]
    """A stand-in /dev/gpiochip0; returns (env for exporterd, state reader)."""
    monkeypatch.syspath_prepend(FAKES)
    monkeypatch.delitem(sys.modules, "gpiod", raising=False)
    import gpiod

    state = os.path.join(workdir, "gpiochips.json")
    gpiod.new_chip(state, names={"GPIO17": 17})
    env = {"PYTHONPATH": os.pathsep.join([FAKES, ROOT]), "JUMPSTARTER_FAKE_GPIOD": state}
    yield env, lambda: gpiod.chip_state(state)
    monkeypatch.delitem(sys.modules, "gpiod", raising=False)


def test_relay_switches_and_exporterd_shutdown_leaves_it_off_and_released(cli, exporterd, chip):
    env, state = chip
    exporter = exporterd.start(RELAY_BOARD, env=env)

    on = cli("--host", exporter.socket, "power", "on")
    assert on.returncode == 0, on.stderr
    assert state()["levels"]["17"] == 0  # active low: the relay closes on a low level
    assert state()["holders"] == {"17": exporter.process.pid}
    cycle = cli("--host", exporter.socket, "power", "cycle", "--wait", "0")
    assert cycle.returncode == 0, cycle.stderr

    assert exporter.stop(signal.SIGTERM) == 0, exporter.log()[-2000:]

    assert state()["levels"]["17"] == 1  # off
    assert state()["holders"] == {}
    levels = [level for _, _, level in state()["timeline"]]
    assert levels == [0, 1, 0, 1]  # on, cycle off, cycle on, safe state at shutdown
    (_, _, _), (off_at, _, _), (on_at, _, _), _ = state()["timeline"]
    assert on_at - off_at >= 0.2  # the cycle kept the board off for off_delay


def test_exporterd_without_the_gpiod_binding_refuses_the_config_at_load(exporterd):
    exporter = exporterd.spawn(RELAY_BOARD, env={"PYTHONPATH": ROOT})

    assert exporter.process.wait(timeout=60) != 0
    log = exporter.log()
    assert (
        f"{exporter.config}:7: export.power.config: power.gpio: libgpiod's Python binding is not installed"
        in log
    ), log
