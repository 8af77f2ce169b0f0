"""Hotplug decisions, fed udev property sets directly (no supervisord, no udev)."""

from __future__ import annotations

import os
import textwrap

import pytest

from jumpstarter.config.inventory import load_board, load_inventory
from jumpstarter.errors import ConfigError
from jumpstarter.lab.devices import Device, ListLookup, read_devices, write_devices
from jumpstarter.lab.hotplug import plan_coldplug, plan_event
from tests.harness.sandbox import block_event, tty_event

BOARDS = """\
boards:
  - name: alpha
    match:
      serial: {SUBSYSTEM: tty, ID_SERIAL_SHORT: "AAA"}
    export:
      serial: {type: serial, config: {url: "${serial.devnode}"}}
  - name: beta
    match:
      serial: {SUBSYSTEM: tty, ID_SERIAL_SHORT: "BBB"}
      storage: {SUBSYSTEM: block, ID_SERIAL_SHORT: "DISK1"}
    export:
      serial: {type: serial, config: {url: "${serial.devnode}"}}
      storage: {type: storage.file, config: {path: "${storage.devnode}"}}
  - name: gamma
    match:
      serial: {SUBSYSTEM: tty, "@ID_VENDOR_ID": "10c4", ID_USB_INTERFACE_NUM: "00"}
    export:
      serial: {type: serial, config: {url: "${serial.devnode}"}}
  - name: sim
    export:
      power: {type: power.mock}
"""


@pytest.fixture
def inventory(tmp_path):
    path = tmp_path / "inventory.yaml"
    path.write_text(f"device_dir: {tmp_path / 'devices'}\n" + textwrap.dedent(BOARDS))
    return load_inventory(str(path))


@pytest.fixture
def node(tmp_path):
    """Device nodes: plain files (a record only counts while its node exists)."""

    def make(name: str) -> str:
        path = tmp_path / name
        path.write_text("")
        return str(path)

    return make


def event(env: dict[str, str], ancestors: list[dict[str, str]] | None = None) -> Device:
    device = Device.from_event(env)
    device._ancestors = ancestors or []
    return device


def test_an_event_is_its_udev_properties_with_devnode_and_syspath():
    env = {**tty_event("add", "/dev/ttyUSB0", "AAA"), "PATH": "/usr/bin", "JUMPSTARTER_X": "1"}
    device = Device.from_event(env)
    assert device.devnode == "/dev/ttyUSB0" and device.syspath.startswith("/sys/devices/platform/")
    assert device.properties["ID_SERIAL_SHORT"] == "AAA"
    assert not {"PATH", "JUMPSTARTER_X", "ACTION", "SEQNUM"} & set(device.properties)
    assert Device.from_event({"ACTION": "add", "DEVNAME": "ttyACM0"}).devnode == "/dev/ttyACM0"


def test_adding_the_only_device_of_a_board_starts_it_and_records_the_device(inventory, node):
    tty = node("tty0")
    plan = plan_event("add", event(tty_event("add", tty, "AAA")), inventory, ListLookup())
    assert (plan.start, plan.stop, plan.waiting) == (["alpha"], [], {})
    assert read_devices(inventory.device_dir, "alpha")["serial"].devnode == tty


def test_a_device_nobody_matches_changes_nothing(inventory, node):
    plan = plan_event("add", event(tty_event("add", node("tty9"), "ZZZ")), inventory, ListLookup())
    assert (plan.start, plan.stop, plan.waiting) == ([], [], {})
    assert not os.path.exists(inventory.device_dir) or os.listdir(inventory.device_dir) in ([], [".lock"])


def test_a_board_with_two_devices_waits_for_the_second(inventory, node):
    plan = plan_event("add", event(tty_event("add", node("tty1"), "BBB")), inventory, ListLookup())
    assert plan.start == [] and plan.waiting == {"beta": ["storage"]}
    plan = plan_event("add", event(block_event("add", node("disk1"), "DISK1")), inventory, ListLookup())
    assert plan.start == ["beta"]
    assert set(read_devices(inventory.device_dir, "beta")) == {"serial", "storage"}


def test_the_other_device_may_already_be_present_in_udev(inventory, node):
    disk = Device.from_event(block_event("add", node("disk1"), "DISK1"))
    plan = plan_event("add", event(tty_event("add", node("tty1"), "BBB")), inventory, ListLookup([disk]))
    assert plan.start == ["beta"]


def test_ancestor_rules_use_the_ancestors_udev_reports(inventory, node):
    env = tty_event("add", node("tty2"), "CCC")
    env["ID_USB_DRIVER"] = "cp210x"
    plan = plan_event("add", event(env, ancestors=[{"ID_VENDOR_ID": "10c4"}]), inventory, ListLookup())
    assert plan.start == ["gamma"]
    plan = plan_event("add", event(env, ancestors=[{"ID_VENDOR_ID": "0403"}]), inventory, ListLookup())
    assert plan.start == []


def test_removing_a_recorded_device_stops_its_board_even_once_its_node_is_gone(inventory, node):
    tty = node("tty0")
    plan_event("add", event(tty_event("add", tty, "AAA")), inventory, ListLookup())
    os.unlink(tty)
    removal = tty_event("remove", tty, "AAA")
    removal = {k: v for k, v in removal.items() if not k.startswith("ID_")}  # by DEVPATH alone
    plan = plan_event("remove", event(removal), inventory, ListLookup())
    assert plan.stop == ["alpha"] and read_devices(inventory.device_dir, "alpha") == {}


def test_removing_a_twin_that_is_not_the_recorded_device_leaves_the_board_alone(inventory, node):
    plan_event("add", event(tty_event("add", node("tty0"), "AAA")), inventory, ListLookup())
    plan = plan_event(
        "remove", event(tty_event("remove", node("tty5"), "AAA", "01")), inventory, ListLookup()
    )
    assert plan.stop == []


def test_removing_one_of_two_devices_stops_the_board_and_keeps_the_other_record(inventory, node):
    plan_event("add", event(tty_event("add", node("tty1"), "BBB")), inventory, ListLookup())
    disk = node("disk1")
    plan_event("add", event(block_event("add", disk, "DISK1")), inventory, ListLookup())
    plan = plan_event("remove", event(block_event("remove", disk, "DISK1")), inventory, ListLookup())
    assert plan.stop == ["beta"] and set(read_devices(inventory.device_dir, "beta")) == {"serial"}


def test_coldplug_starts_the_boards_whose_devices_are_all_present(inventory, node):
    present = [
        Device.from_event(tty_event("add", node("tty0"), "AAA")),
        Device.from_event(tty_event("add", node("tty1"), "BBB")),
    ]
    plan = plan_coldplug(inventory, ListLookup(present))
    assert plan.start == ["alpha"] and plan.waiting == {"beta": ["storage"], "gamma": ["serial"]}


def test_exporterd_gets_the_recorded_devices_before_asking_udev(inventory, node):
    tty = node("tty0")
    write_devices(inventory.device_dir, "alpha", {"serial": Device.from_event(tty_event("add", tty, "AAA"))})
    assert load_board(inventory.path, "alpha").build().children["serial"].url == tty


def test_a_stale_record_is_not_used(inventory, node):
    tty = node("tty0")
    write_devices(inventory.device_dir, "alpha", {"serial": Device.from_event(tty_event("add", tty, "AAA"))})
    os.unlink(tty)
    with pytest.raises(ConfigError, match="board alpha: device 'serial' is not present"):
        load_board(inventory.path, "alpha")
