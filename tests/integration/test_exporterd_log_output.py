"""exporterd's log output: every line arrives, in order, and none is lost at exit (SIGTERM)."""

from __future__ import annotations

import json
import signal

import jumpstarter
from jumpstarter.demo.lab import wait_for

from .conftest import exporter_config

MOCK_BOARD = exporter_config("""
    power:
      type: power.mock
""")


def events(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_every_driver_log_line_reaches_the_output_in_order_and_the_last_ones_survive_a_stop(exporterd):
    exporter = exporterd.start(MOCK_BOARD)

    with jumpstarter.connect(exporter.socket) as client:
        for _ in range(100):
            client.power.on()
            client.power.off()
        wait_for(
            lambda: exporter.log().count('"power off"') == 100, 20, "100 power off lines", exporter.process
        )
        client.power.on()  # logged just before the stop: still pending in the batch
    assert exporter.stop(signal.SIGTERM) == 0

    lines = [e for e in events(exporter.log()) if e.get("logger") == "driver.MockPower"]
    assert [e["event"] for e in lines] == ["power on", "power off"] * 100 + ["power on"]
    assert set(lines[0]) == {"driver_type", "event", "level", "logger", "timestamp"}
    assert events(exporter.log())[-1]["event"] == "stopped"
