"""`jumpstarter lab reload` against a real supervisord: only what changed is restarted.

A malformed inventory is refused with `file:line: board NAME: key: problem` and
nothing changes: same include file, same exporterd PIDs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from jumpstarter.demo.lab import wait_for
from tests.harness.sandbox import LabSandbox, tty_event

BOARDS = """\
boards:
  - name: alpha
    match:
      serial: {SUBSYSTEM: tty, ID_SERIAL_SHORT: "AAA"}
    export:
      serial: {type: serial, config: {url: "${serial.devnode}"}}
  - name: sim1
    export:
      power: {type: power.mock}
  - name: sim2
    labels: {rack: "1"}
    export:
      power: {type: power.mock}
"""


@pytest.fixture
def lab() -> Iterator[LabSandbox]:
    """Three boards serving: alpha (hotplugged on a pty), sim1 and sim2 (always running)."""
    with LabSandbox() as sandbox:
        sandbox.write_inventory(BOARDS)
        sandbox.start()
        assert sandbox.hotplug(tty_event("add", sandbox.tty(), "AAA")).returncode == 0
        for board in ("alpha", "sim1", "sim2"):
            sandbox.wait_serving(board, 5)
        yield sandbox


def pids(lab: LabSandbox) -> dict[str, int]:
    return {board: lab.pid(board) for board in ("alpha", "sim1", "sim2")}


def test_reload_restarts_only_the_changed_board(lab):
    before = pids(lab)
    lab.write_inventory(BOARDS.replace('labels: {rack: "1"}', 'labels: {rack: "2"}'))
    result = lab.lab("reload")
    assert result.returncode == 0, result.stderr
    assert "changed  board-sim2" in result.stdout
    lab.wait_serving("sim2", 5)
    after = pids(lab)
    assert after["sim2"] not in (0, before["sim2"])
    assert (after["alpha"], after["sim1"]) == (before["alpha"], before["sim1"])


def test_a_changed_hotplugged_board_comes_back_because_its_device_is_present(lab):
    before = pids(lab)
    lab.write_inventory(
        BOARDS.replace(
            'config: {url: "${serial.devnode}"}', 'config: {url: "${serial.devnode}", baudrate: 9600}'
        )
    )
    result = lab.lab("reload")
    assert result.returncode == 0, result.stderr
    assert "start    board-alpha: started" in result.stdout
    lab.wait_serving("alpha", 5)
    after = pids(lab)
    assert after["alpha"] not in (0, before["alpha"])
    assert (after["sim1"], after["sim2"]) == (before["sim1"], before["sim2"])


def test_reload_adds_new_boards_and_removes_deleted_ones(lab):
    before = pids(lab)
    lab.write_inventory(BOARDS.replace("  - name: sim1\n", "  - name: sim3\n"))
    result = lab.lab("reload")
    assert result.returncode == 0, result.stderr
    assert "added    board-sim3" in result.stdout and "removed  board-sim1" in result.stdout
    lab.wait_serving("sim3", 5)
    assert lab.state("sim1") == ("NOT LOADED", 0)
    wait_for(lambda: not os.path.exists(lab.socket("sim1")), 3, "sim1 socket removed")
    assert (lab.pid("alpha"), lab.pid("sim2")) == (before["alpha"], before["sim2"])


@pytest.mark.parametrize(
    "broken, message",
    [
        (
            BOARDS.replace(
                "power: {type: power.mock}\n  - name: sim2", "power: {type: power.bogus}\n  - name: sim2"
            ),
            ":12: board sim1: export.power.type: unknown driver type 'power.bogus'",
        ),
        (
            BOARDS + '  - name: twin\n    match:\n      serial: {ID_SERIAL_SHORT: "AAA", SUBSYSTEM: tty}\n'
            "    export:\n      power: {type: power.mock}\n",
            ":19: board twin: match.serial: matches the same device as board alpha's match.serial",
        ),
    ],
    ids=["unknown-driver", "shared-device"],
)
def test_a_malformed_inventory_is_refused_and_nothing_changes(lab, broken, message):
    before = pids(lab)
    with open(lab.include) as handle:
        include = handle.read()
    lab.write_inventory(broken)
    result = lab.lab("reload")
    assert result.returncode == 2
    assert f"{lab.inventory}{message}" in result.stderr, result.stderr
    assert "nothing changed" in result.stderr
    with open(lab.include) as handle:
        assert handle.read() == include
    assert pids(lab) == before
    for board in ("alpha", "sim1", "sim2"):
        lab.wait_serving(board, 1)


def test_lab_check_validates_without_touching_anything(lab):
    result = lab.lab("check")
    assert result.returncode == 0 and "ok, 3 boards (1 started by hotplug, 2 always running)" in result.stdout
    lab.write_inventory(BOARDS.replace("sim2", "sim1"))
    result = lab.lab("check")
    assert result.returncode == 2 and "board sim1: duplicate board name" in result.stderr
