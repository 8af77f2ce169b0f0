"""`jumpstarter lab suggest`: match rules that tell the plugged-in devices apart."""

from __future__ import annotations

import textwrap

from jumpstarter.config.inventory import load_inventory
from jumpstarter.lab.devices import Device
from jumpstarter.lab.suggest import format_suggestions, suggest
from tests.harness.sandbox import block_event, tty_event


def device(env: dict[str, str], **changes: str | None) -> Device:
    props = {**env, **changes}
    return Device.from_event({k: v for k, v in props.items() if v is not None})


def test_ports_of_a_multi_port_adapter_are_told_apart_by_interface_number():
    found = suggest([device(tty_event("add", f"/dev/ttyUSB{i}", "FT4X", f"0{i}")) for i in range(2)])
    assert [s.rules for s in found] == [
        {"SUBSYSTEM": "tty", "ID_SERIAL_SHORT": "FT4X", "ID_USB_INTERFACE_NUM": "00"},
        {"SUBSYSTEM": "tty", "ID_SERIAL_SHORT": "FT4X", "ID_USB_INTERFACE_NUM": "01"},
    ]


def test_a_single_port_adapter_is_matched_by_serial_number_alone():
    (only,) = suggest([device(tty_event("add", "/dev/ttyUSB0", "A10"))])
    assert only.rules == {"SUBSYSTEM": "tty", "ID_SERIAL_SHORT": "A10"} and only.device == "serial"


def test_adapters_without_a_serial_number_fall_back_to_the_port_path():
    first = device(
        tty_event("add", "/dev/ttyUSB0", "X"), ID_SERIAL_SHORT=None, ID_PATH="pci-0:14.0-usb-0:1:1.0"
    )
    second = device(
        tty_event("add", "/dev/ttyUSB1", "X"), ID_SERIAL_SHORT=None, ID_PATH="pci-0:14.0-usb-0:2:1.0"
    )
    assert [s.rules.get("ID_PATH") for s in suggest([first, second])] == [
        "pci-0:14.0-usb-0:1:1.0",
        "pci-0:14.0-usb-0:2:1.0",
    ]


def test_usb_disks_are_suggested_as_storage_and_partitions_and_other_devices_skipped():
    disk = device(block_event("add", "/dev/sda", "SDW1"))
    partition = device(block_event("add", "/dev/sda1", "SDW1"), DEVTYPE="partition")
    builtin = device(tty_event("add", "/dev/ttyS0", "S"), ID_BUS=None)
    found = suggest([disk, partition, builtin])
    assert [(s.device, s.devnode) for s in found] == [("storage", "/dev/sda")]


def test_suggested_blocks_paste_into_an_inventory_that_loads(tmp_path):
    text = format_suggestions(suggest([device(tty_event("add", "/dev/ttyUSB0", "0403"))]))
    assert 'ID_SERIAL_SHORT: "0403"' in text  # quoted: a YAML number would lose the leading zero
    lines = [line for line in text.splitlines() if not line.startswith("#") and line.strip()]
    body = textwrap.indent("\n".join(lines), "    ")
    path = tmp_path / "inventory.yaml"
    path.write_text(f"boards:\n  - name: pasted\n{body}\n")
    assert load_inventory(str(path)).matches["pasted"]["serial"]["ID_SERIAL_SHORT"] == "0403"


def test_nothing_plugged_in_says_so():
    assert "no USB serial adapter" in format_suggestions([])
