"""The udev rules rendered from the inventory: only devices a `match` rule can pick run hotplug.

Evaluated with tests/udev_sim.py (udev's semantics for the keys the rules use:
globs, ATTRS over the parents on one same device, the database on `remove`).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from jumpstarter.config.inventory import load_inventory
from jumpstarter.errors import ConfigError
from jumpstarter.lab.udev_rules import apply_rules, render_rules
from tests.harness.sandbox import default_user
from tests.udev_sim import SimDevice, Udev, parse

HOTPLUG = ["/opt/js/bin/jumpstarter-hotplug", "--inventory", "/etc/js/inventory.yaml"]
RUN = [" ".join(HOTPLUG)]
BOARDS = """\
boards:
  - name: plain
    match:
      serial: {SUBSYSTEM: tty, ID_SERIAL_SHORT: "A10"}
    export: {power: {type: power.mock}}
  - name: ancestor
    match:
      serial: {SUBSYSTEM: tty, "@ID_SERIAL_SHORT": "B_20"}
    export: {power: {type: power.mock}}
  - name: sdmux
    match:
      storage: {SUBSYSTEM: block, ID_PATH: "pci-0000:00:14.0-usb-0:3:1.0-scsi-0:0:0:0"}
    export: {power: {type: power.mock}}
  - name: quad
    match:
      console: {SUBSYSTEM: tty, "@ID_VENDOR_ID": "0403", "@ID_SERIAL_SHORT": "FT4", "@ID_USB_INTERFACE_NUM": "01"}
      hub: {SUBSYSTEM: usb, ID_VENDOR_ID: "2001", ID_MODEL_ID: "f103"}
    export: {power: {type: power.mock}}
  - name: sim
    export: {power: {type: power.mock}}
"""


def inventory(tmp_path, text: str = BOARDS):  # type: ignore[no-untyped-def]
    path = tmp_path / "inventory.yaml"
    path.write_text(textwrap.dedent(text))
    return load_inventory(str(path))


def usb_tty(name: str, serial: str, interface: str = "00", vendor: str = "0403", **own: str) -> SimDevice:
    """A USB serial adapter's tty; `own` are the properties udev gave the tty itself."""
    usb = SimDevice(
        {"DEVPATH": "/devices/pci0/usb1/1-3", "SUBSYSTEM": "usb", "DEVTYPE": "usb_device"},
        {"idVendor": vendor, "idProduct": "6011", "serial": serial},
    )
    port = SimDevice(
        {"DEVPATH": f"/devices/pci0/usb1/1-3/1-3:1.{int(interface)}", "SUBSYSTEM": "usb"},
        {"bInterfaceNumber": interface},
        parents=[usb],
    )
    devpath = f"{port.properties['DEVPATH']}/{name}/tty/{name}"
    props = {"DEVPATH": devpath, "SUBSYSTEM": "tty", "DEVNAME": f"/dev/{name}", **own}
    return SimDevice(props, {"dev": "188:0"}, parents=[port, *port.parents])


def kernel_only(device: SimDevice) -> SimDevice:
    """The device as a `remove` uevent describes it: the kernel's keys, no sysfs, no udev properties."""
    keep = ("DEVPATH", "SUBSYSTEM", "DEVNAME", "DEVTYPE", "MAJOR", "MINOR")
    return SimDevice({k: v for k, v in device.properties.items() if k in keep})


def disk(path_id: str, devtype: str = "disk", name: str = "sda") -> SimDevice:
    devpath = "/devices/pci0/usb2/2-3/2-3:1.0/host0/target0:0:0/0:0:0:0/block/sda"
    if devtype == "partition":
        devpath += f"/{name}"
    return SimDevice({"DEVPATH": devpath, "SUBSYSTEM": "block", "DEVTYPE": devtype, "ID_PATH": path_id})


SDMUX_PATH = "pci-0000:00:14.0-usb-0:3:1.0-scsi-0:0:0:0"
HUB = {"SUBSYSTEM": "usb", "DEVTYPE": "usb_device", "ID_VENDOR_ID": "2001", "ID_MODEL_ID": "f103"}

# (device, the board it is for, or None: an unrelated device, which must start nothing)
ADDS = [
    (usb_tty("ttyUSB0", "A10", ID_SERIAL_SHORT="A10"), "plain"),
    (usb_tty("ttyUSB1", "A11", ID_SERIAL_SHORT="A11"), None),
    # the property only on the adapter: its raw serial "B 20" is ID_SERIAL_SHORT "B_20"
    (usb_tty("ttyUSB2", "B 20"), "ancestor"),
    (usb_tty("ttyUSB3", "B21"), None),
    (usb_tty("ttyUSB4", "FT4", interface="01"), "quad"),
    (usb_tty("ttyUSB5", "FT4", interface="00"), None),  # the board's other port is not its console
    (usb_tty("ttyUSB6", "FT5", interface="01", ID_SERIAL_SHORT="FT5", ID_VENDOR_ID="0403"), None),
    (disk(SDMUX_PATH), "sdmux"),
    (disk(SDMUX_PATH, "partition", "sda1"), None),
    (disk("pci-0000:00:17.0-ata-1"), None),
    (SimDevice({"DEVPATH": "/devices/pci0/usb1/1-4", **HUB}), "quad"),
    (SimDevice({"DEVPATH": "/devices/pci0/usb1/1-4/1-4:1.0", **HUB, "DEVTYPE": "usb_interface"}), None),
    (SimDevice({"DEVPATH": "/devices/virtual/tty/tty3", "SUBSYSTEM": "tty", "ID_SERIAL_SHORT": "A10"}), None),
    (SimDevice({"DEVPATH": "/devices/pci0/net/eth1", "SUBSYSTEM": "net", "ID_SERIAL_SHORT": "A10"}), None),
    (SimDevice({"DEVPATH": "/devices/pnp0/00:00/tty/ttyS0", "SUBSYSTEM": "tty"}), None),
]


@pytest.fixture
def udev(tmp_path) -> Udev:  # type: ignore[no-untyped-def]
    return Udev(render_rules(inventory(tmp_path), HOTPLUG))


@pytest.mark.parametrize(("device", "board"), ADDS, ids=[d.kernel + "-" + str(b) for d, b in ADDS])
def test_only_devices_a_match_rule_can_pick_run_hotplug_and_are_marked_with_their_board(
    udev: Udev, device: SimDevice, board: str | None
) -> None:
    result = udev.event("add", device)
    assert result.run == (RUN if board else [])
    assert result.properties.get("JUMPSTARTER_BOARD") == board


@pytest.mark.parametrize(("device", "board"), [a for a in ADDS if a[1]], ids=lambda x: str(x))
def test_remove_finds_the_board_by_the_mark_though_sysfs_and_properties_are_gone(
    udev: Udev, device: SimDevice, board: str
) -> None:
    udev.event("add", device)
    result = udev.event("remove", kernel_only(device))
    assert result.run == RUN
    assert result.properties["JUMPSTARTER_BOARD"] == board


def test_remove_of_an_unrelated_device_and_other_actions_start_nothing(udev: Udev) -> None:
    unrelated = usb_tty("ttyUSB1", "A11", ID_SERIAL_SHORT="A11")
    udev.event("add", unrelated)
    assert udev.event("remove", kernel_only(unrelated)).run == []
    plain = usb_tty("ttyUSB0", "A10", ID_SERIAL_SHORT="A10")
    for action in ("bind", "unbind", "move", "online"):
        assert udev.event(action, plain).run == []


def test_a_change_event_re_checks_properties_that_arrived_late(udev: Udev) -> None:
    early = usb_tty("ttyUSB0", "X", ID_BUS="usb")  # usb_id has not run yet: no ID_SERIAL_SHORT
    assert udev.event("add", early).run == []
    late = usb_tty("ttyUSB0", "X", ID_BUS="usb", ID_SERIAL_SHORT="A10")
    assert udev.event("change", late).run == RUN
    assert udev.event("remove", kernel_only(late)).run == RUN


def test_the_rendered_rules_say_what_they_match(tmp_path) -> None:
    text = render_rules(inventory(tmp_path), HOTPLUG)
    assert (
        'SUBSYSTEM=="tty", ENV{ID_SERIAL_SHORT}=="A10", ENV{JUMPSTARTER_BOARD}="plain", '
        'GOTO="jumpstarter_boards_run"'
    ) in text.splitlines()
    lines = text.splitlines()
    comment = lines.index('# board ancestor, match.serial: {"SUBSYSTEM": "tty", "@ID_SERIAL_SHORT": "B_20"}')
    assert lines[comment + 1 : comment + 4] == [
        'ENV{ID_SERIAL_SHORT}=="B_20", ENV{.jumpstarter_1_ID_SERIAL_SHORT}="1"',
        'ATTRS{serial}=="B*20", ENV{.jumpstarter_1_ID_SERIAL_SHORT}="1"',
        'SUBSYSTEM=="tty", ENV{.jumpstarter_1_ID_SERIAL_SHORT}=="1", ENV{JUMPSTARTER_BOARD}="ancestor", '
        'GOTO="jumpstarter_boards_run"',
    ]
    assert [line for line in text.splitlines() if line.startswith("RUN+=")] == [f'RUN+="{RUN[0]}"']
    assert "sim" not in text  # no match: always running, nothing for udev to do
    parse(text)  # every line is udev syntax the evaluator knows


@pytest.mark.parametrize("bad", ['A"B', "A,B", "A\nB", "A$B", "A%B", "A*B", "A|B", "A\\B", "Ä1", "x" * 201])
def test_a_serial_that_could_inject_udev_syntax_is_refused_with_a_clear_error(tmp_path, bad: str) -> None:
    quoted = bad.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    text = (
        f'boards:\n  - name: b1\n    match:\n      serial: {{SUBSYSTEM: tty, ID_SERIAL_SHORT: "{quoted}"}}\n'
    )
    text += "    export: {power: {type: power.mock}}\n"
    loaded = inventory(tmp_path, text)
    assert loaded.matches["b1"]["serial"]["ID_SERIAL_SHORT"] == bad  # the inventory took it
    with pytest.raises(
        ConfigError, match=r"board b1: match\.serial\.ID_SERIAL_SHORT: .*cannot go into a udev rule"
    ):
        render_rules(loaded, HOTPLUG)


@pytest.mark.parametrize("bad", ["/opt/my js/bin/hotplug", '/opt/"x', "/opt/$x", "/opt/%p"])
def test_a_program_path_that_udev_would_split_or_substitute_is_refused(tmp_path, bad: str) -> None:
    with pytest.raises(ConfigError, match="cannot go into a udev RUN"):
        render_rules(inventory(tmp_path), [bad])


def test_lab_render_refuses_an_unsafe_serial_and_writes_neither_file(tmp_path) -> None:
    text = 'boards:\n  - name: b1\n    match:\n      serial: {SUBSYSTEM: tty, ID_SERIAL_SHORT: "A\\"B"}\n'
    text += f"    export: {{power: {{type: power.mock}}}}\nuser: {default_user()}\n"
    path = tmp_path / "inventory.yaml"
    path.write_text(text)
    output, rules = tmp_path / "boards.conf", tmp_path / "rules.d" / "99-jumpstarter-boards.rules"
    result = subprocess.run(
        [sys.executable, "-m", "jumpstarter.lab.cli", "lab", "render", "--inventory", str(path)]
        + ["--output", str(output), "--udev-rules", str(rules)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "cannot go into a udev rule" in result.stderr
    assert not output.exists() and not rules.exists()


def test_apply_rules_writes_atomically_and_says_so_when_udev_is_absent(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no udevadm on this PATH
    target = tmp_path / "rules.d" / "99-jumpstarter-boards.rules"
    assert "udevadm not found" in apply_rules(str(target), "X\n")
    assert target.read_text() == "X\n" and oct(target.stat().st_mode & 0o777) == "0o644"
    assert "unchanged" in apply_rules(str(target), "X\n")
    assert "udevd does not run here" in apply_rules(None, "X\n")
