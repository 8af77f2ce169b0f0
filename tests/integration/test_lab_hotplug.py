"""udev events fed to jumpstarter-hotplug start and stop exporterds under a real supervisord.

Every process is real: supervisord from PyPI with a generated config, one
exporterd per board, `jumpstarter-hotplug` run with exactly the environment udev
gives a `RUN+=` program. The boards' serial devices are pseudo-terminals, the
storage device a plain file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from jumpstarter.demo.lab import wait_for
from tests.harness.sandbox import LabSandbox, block_event, tty_event

BOARDS = """\
boards:
  - name: alpha
    labels: {board: rpi4}
    match:
      serial: {SUBSYSTEM: tty, ID_SERIAL_SHORT: "AAA"}
    export:
      serial: {type: serial, config: {url: "${serial.devnode}"}}
      power: {type: power.mock}
  - name: beta
    match:
      serial: {SUBSYSTEM: tty, ID_SERIAL_SHORT: "BBB"}
      storage: {SUBSYSTEM: block, ID_SERIAL_SHORT: "DISK1"}
    export:
      serial: {type: serial, config: {url: "${serial.devnode}"}}
      storage: {type: storage.file, config: {path: "${storage.devnode}"}}
  - name: sim
    export:
      power: {type: power.mock}
"""


@pytest.fixture
def lab() -> Iterator[LabSandbox]:
    with LabSandbox() as sandbox:
        sandbox.write_inventory(BOARDS)
        yield sandbox


@pytest.fixture
def running(lab: LabSandbox) -> LabSandbox:
    lab.start()
    lab.wait_serving("sim", 30)
    # Past the start-up burst: the status listener has written its first snapshot.
    wait_for(lambda: os.path.exists(lab.status_file), 30, "status snapshot")
    return lab


def plug(lab: LabSandbox, event: dict[str, str]) -> None:
    """Run the hotplug for one event (it must exit 0); its speed is measured by tests/bench/bench_hotplug.py."""
    result = lab.hotplug(event)
    assert result.returncode == 0, result.stderr


def test_the_rendered_boards_are_loaded_and_only_the_board_without_match_runs(running):
    with running.client() as client:
        states = {name: info.state for name, info in client.processes().items()}
    assert set(states) == {
        "board-alpha",
        "board-beta",
        "board-sim",
        "jumpstarter-coldplug",
        "jumpstarter-status",
    }
    assert states["board-sim"] in ("STARTING", "RUNNING")
    assert states["board-alpha"] == states["board-beta"] == "STOPPED"

    def coldplug_state() -> str:
        with running.client() as client:
            info = client.process("jumpstarter-coldplug")
        return info.state if info else ""

    wait_for(lambda: coldplug_state() == "EXITED", 30, "coldplug")
    with open(os.path.join(running.log_dir, "jumpstarter-coldplug.log")) as handle:
        assert '"coldplug done"' in handle.read()


def test_plugging_a_serial_adapter_serves_its_board_and_unplugging_stops_it(running):
    sim = running.pid("sim")
    tty = running.tty()
    plug(running, tty_event("add", tty, "AAA"))
    running.wait_serving("alpha", 30)
    assert running.state("beta")[0] == "STOPPED"

    plug(running, tty_event("remove", tty, "AAA"))
    running.wait_stopped("alpha", 3)
    assert running.pid("sim") == sim  # the other boards are untouched


def test_a_board_with_two_devices_starts_only_when_both_are_present(running):
    plug(running, tty_event("add", running.tty(), "BBB"))
    # hotplug returned: had it asked for a start, supervisord would already say STARTING
    assert running.state("beta")[0] == "STOPPED"
    disk = running.disk("disk1.img")
    plug(running, block_event("add", disk, "DISK1"))
    running.wait_serving("beta", 30)
    plug(running, block_event("remove", disk, "DISK1"))
    running.wait_stopped("beta", 3)


def test_simultaneous_events_for_both_devices_of_a_board_start_it(running):
    """udev runs events in parallel: the device records must not lose one of them."""
    events = [tty_event("add", running.tty(), "BBB"), block_event("add", running.disk("disk1.img"), "DISK1")]
    hotplugs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jumpstarter.lab.hotplug",
                "--inventory",
                running.inventory,
                "--supervisor",
                running.url,
            ],
            env=event,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for event in events
    ]
    assert [p.wait(timeout=10) for p in hotplugs] == [0, 0]
    running.wait_serving("beta", 30)


def test_a_killed_exporterd_is_restarted_by_supervisord(running):
    plug(running, tty_event("add", running.tty(), "AAA"))
    running.wait_serving("alpha", 30)
    wait_for(lambda: running.state("alpha")[0] == "RUNNING", 30, "alpha RUNNING")  # past startsecs
    old = running.pid("alpha")
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: running.pid("alpha") not in (0, old), 30, "a new exporterd")
    running.wait_serving("alpha", 30)


def test_an_unknown_device_exits_zero_and_changes_nothing(running):
    def snapshot() -> dict[str, tuple[str, int]]:
        with running.client() as client:
            return {name: (info.state, info.pid) for name, info in client.processes().items()}

    wait_for(lambda: snapshot()["board-sim"][0] == "RUNNING", 30, "sim RUNNING")
    wait_for(lambda: snapshot()["jumpstarter-coldplug"][0] == "EXITED", 30, "coldplug done")
    before = snapshot()
    plug(running, tty_event("add", running.tty(), "NOBODY"))
    after = snapshot()
    assert after == before
    assert [f for f in os.listdir(running.device_dir) if f.endswith(".json")] == []


def test_events_before_supervisord_runs_are_caught_up_by_coldplug(lab):
    result = lab.hotplug(tty_event("add", lab.tty(), "AAA"))
    assert result.returncode == 0 and "supervisord is not running" in result.stderr
    lab.start()  # the jumpstarter-coldplug program starts the boards whose devices were seen
    lab.wait_serving("alpha", 30)
    assert lab.state("beta")[0] == "STOPPED"


def test_lab_status_lists_each_board_with_state_socket_and_answer(running):
    plug(running, tty_event("add", running.tty(), "AAA"))
    running.wait_serving("alpha", 30)
    wait_for(lambda: running.state("alpha")[0] == running.state("sim")[0] == "RUNNING", 30, "past startsecs")
    result = running.lab("status")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert set(rows) == {"alpha", "beta", "sim"}
    assert rows["alpha"].split()[1] == "running" and rows["alpha"].split()[3:5] == [
        running.socket("alpha"),
        "answers",
    ]
    assert "waiting for device" in rows["beta"] and "missing: serial, storage" in rows["beta"]
    assert rows["sim"].split()[1] == "running" and "answers" in rows["sim"]
