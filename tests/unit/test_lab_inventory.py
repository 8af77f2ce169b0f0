"""Inventory validation for the lab host: shared devices, match values, error format, digests."""

from __future__ import annotations

import textwrap

import pytest

from jumpstarter.config.inventory import load_inventory
from jumpstarter.errors import ConfigError

SERIAL = 'serial: {type: serial, config: {url: "${serial.devnode}"}}'


def inventory(tmp_path, boards: str, name: str = "inventory.yaml") -> str:
    path = tmp_path / name
    path.write_text("socket_dir: /run/x/boards\nboards:\n" + textwrap.indent(textwrap.dedent(boards), "  "))
    return str(path)


def board(name: str, match: str, export: str = SERIAL) -> str:
    return f"- name: {name}\n  match:\n    {match}\n  export:\n    {export}\n"


def refused(path: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_inventory(path)
    return str(info.value)


def test_two_boards_with_identical_rules_are_refused_naming_both(tmp_path):
    path = inventory(
        tmp_path,
        board("a", 'serial: {SUBSYSTEM: tty, ID_SERIAL_SHORT: "X1"}')
        + board("b", 'serial: {ID_SERIAL_SHORT: "X1", SUBSYSTEM: tty}'),
    )
    message = refused(path)
    assert message.startswith(
        f"{path}:10: board b: match.serial: matches the same device as board a's match.serial"
    )
    assert f"({path}:5)" in message


def test_a_rule_set_that_is_a_subset_of_another_boards_is_refused(tmp_path):
    path = inventory(
        tmp_path,
        board("wide", "serial: {SUBSYSTEM: tty}")
        + board("narrow", 'serial: {SUBSYSTEM: tty, ID_SERIAL_SHORT: "X1"}'),
    )
    assert "board narrow: match.serial: matches the same device as board wide's match.serial" in refused(path)


def test_an_ancestor_rule_covers_the_same_rule_on_the_device(tmp_path):
    path = inventory(
        tmp_path,
        board("a", 'serial: {SUBSYSTEM: tty, ID_SERIAL_SHORT: "X1"}')
        + board("b", 'serial: {SUBSYSTEM: tty, "@ID_SERIAL_SHORT": "X1"}'),
    )
    assert "board b: match.serial: matches the same device as board a's" in refused(path)


def test_two_devices_of_one_board_with_the_same_rules_are_refused(tmp_path):
    path = inventory(
        tmp_path,
        '- name: a\n  match:\n    serial: {ID_PATH: "p1"}\n    console: {ID_PATH: "p1"}\n'
        "  export:\n    " + SERIAL + "\n",
    )
    assert "board a: match.console: matches the same device as this board's match.serial" in refused(path)


def test_ports_of_one_adapter_and_different_kinds_are_told_apart(tmp_path):
    storage = 'storage: {type: storage.file, config: {path: "${storage.devnode}"}}'
    path = inventory(
        tmp_path,
        board("a", 'serial: {SUBSYSTEM: tty, ID_SERIAL_SHORT: "X1", ID_USB_INTERFACE_NUM: "00"}')
        + board("b", 'serial: {SUBSYSTEM: tty, ID_SERIAL_SHORT: "X1", ID_USB_INTERFACE_NUM: "01"}')
        + board("c", 'storage: {SUBSYSTEM: block, ID_SERIAL_SHORT: "X1"}', storage),
    )
    assert [b.name for b in load_inventory(path).boards] == ["a", "b", "c"]


def test_unquoted_numeric_match_values_are_refused(tmp_path):
    path = inventory(tmp_path, board("a", "serial: {ID_VENDOR_ID: 0403, SUBSYSTEM: tty}"))
    message = refused(path)
    assert f"{path}:5: board a: match.serial.ID_VENDOR_ID: quote the value" in message, message


def test_errors_inside_a_board_read_file_line_board_key_problem(tmp_path):
    path = inventory(tmp_path, "- name: a\n  export:\n    power: {type: power.bogus}\n")
    assert refused(path).startswith(
        f"{path}:5: board a: export.power.type: unknown driver type 'power.bogus'"
    )


def test_match_device_names_must_be_usable_in_substitutions(tmp_path):
    path = inventory(tmp_path, board("a", 'my-serial: {ID_PATH: "p"}'))
    assert "board a: match.my-serial: device names start with a letter" in refused(path)


def test_directories_default_and_can_be_set(tmp_path):
    path = inventory(tmp_path, board("a", 'serial: {ID_PATH: "p"}'))
    loaded = load_inventory(path)
    assert (loaded.device_dir, loaded.log_dir) == ("/run/jumpstarter/devices", "/var/log/jumpstarter")
    assert loaded.socket_path("a") == "/run/x/boards/a.sock"


def test_digest_changes_only_for_the_board_that_changed(tmp_path):
    first = load_inventory(
        inventory(tmp_path, board("a", 'serial: {ID_PATH: "p"}') + board("b", 'serial: {ID_PATH: "q"}'))
    )
    second = load_inventory(
        inventory(
            tmp_path,
            board("a", 'serial: {ID_PATH: "p"}')
            + board("b", 'serial: {ID_PATH: "q"}', SERIAL.replace("}}", ", baudrate: 9600}}")),
        )
    )
    assert first.digests["a"] == second.digests["a"]
    assert first.digests["b"] != second.digests["b"]
