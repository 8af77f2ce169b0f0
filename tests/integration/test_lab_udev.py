"""`jumpstarter lab reload` renders the udev rules, and the rule's own RUN+= command starts the board.

A real supervisord (LabSandbox); the udev rules file `lab reload` writes is
evaluated with tests/udev_sim.py as udev would for a board's tty and for an
unrelated one, and the RUN+= command it gives is run exactly as udev runs it
(its whole environment the event's properties).
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Iterator

import pytest

from tests.harness.sandbox import LabSandbox, tty_event
from tests.udev_sim import SimDevice, Udev

BOARDS = """\
boards:
  - name: alpha
    match:
      serial: {SUBSYSTEM: tty, ID_SERIAL_SHORT: "AAA"}
    export:
      serial: {type: serial, config: {url: "${serial.devnode}"}}
  - name: sim
    export:
      power: {type: power.mock}
"""
GAMMA = """\
  - name: gamma
    match:
      serial: {SUBSYSTEM: tty, "@ID_SERIAL_SHORT": "GGG"}
    export:
      serial: {type: serial, config: {url: "${serial.devnode}"}}
"""


@pytest.fixture
def lab() -> Iterator[LabSandbox]:
    with LabSandbox() as sandbox:
        sandbox.write_inventory(BOARDS)
        sandbox.start()
        sandbox.wait_serving("sim", 30)
        yield sandbox


def rules_path(lab: LabSandbox) -> str:
    return os.path.join(lab.directory, "rules.d", "99-jumpstarter-boards.rules")


def reload(lab: LabSandbox) -> subprocess.CompletedProcess[str]:
    return lab.lab("reload", "--udev-rules", rules_path(lab))


def run_as_udev(programs: list[str], event: dict[str, str]) -> None:
    for program in programs:
        result = subprocess.run(shlex.split(program), env=event, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr


def test_reload_renders_rules_whose_run_command_starts_only_the_new_board(lab: LabSandbox) -> None:
    result = reload(lab)
    assert result.returncode == 0, result.stderr
    assert f"udev rules: {rules_path(lab)} written" in result.stderr
    with open(rules_path(lab)) as handle:
        assert "gamma" not in handle.read()

    lab.write_inventory(BOARDS + GAMMA)
    result = reload(lab)
    assert result.returncode == 0, result.stderr
    with open(rules_path(lab)) as handle:
        udev = Udev(handle.read())

    other = tty_event("add", lab.tty(), "ZZZ")
    assert udev.event("add", SimDevice(other)).run == []  # an unrelated adapter starts nothing

    plugged = tty_event("add", lab.tty(), "GGG")
    fired = udev.event("add", SimDevice(plugged))
    assert len(fired.run) == 1 and fired.properties["JUMPSTARTER_BOARD"] == "gamma"
    assert f"--supervisor {lab.url}" in fired.run[0]
    run_as_udev(fired.run, plugged)
    lab.wait_serving("gamma", 30)

    # remove: the kernel's keys only (sysfs and the ID_* are gone); udev's database has the mark
    keep = ("DEVPATH", "SUBSYSTEM", "DEVNAME", "MAJOR", "MINOR", "SEQNUM")
    removed = {k: v for k, v in plugged.items() if k in keep} | {"ACTION": "remove"}
    unplugged = udev.event("remove", SimDevice(removed))
    assert unplugged.run == fired.run
    run_as_udev(unplugged.run, {**unplugged.properties, "ACTION": "remove"})
    lab.wait_stopped("gamma", 30)


def test_reload_refuses_a_serial_that_would_inject_udev_syntax_and_changes_nothing(lab: LabSandbox) -> None:
    assert reload(lab).returncode == 0
    with open(rules_path(lab)) as handle:
        rules = handle.read()
    with open(lab.include) as handle:
        include = handle.read()
    lab.write_inventory(BOARDS + GAMMA.replace('"GGG"', '"G\\", RUN+=\\"/bin/touch /tmp/pwned\\""'))
    result = reload(lab)
    assert result.returncode == 2
    assert "board gamma: match.serial.@ID_SERIAL_SHORT" in result.stderr
    assert "cannot go into a udev rule" in result.stderr and "nothing changed" in result.stderr
    with open(rules_path(lab)) as handle:
        assert handle.read() == rules
    with open(lab.include) as handle:
        assert handle.read() == include
    assert lab.state("gamma") == ("NOT LOADED", 0)
