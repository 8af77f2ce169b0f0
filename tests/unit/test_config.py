"""Config loading: every mistake is reported as `file:line: key: problem`."""

from __future__ import annotations

import textwrap

import pytest

from jumpstarter.config.exporter import load_config, load_exporter_config
from jumpstarter.config.inventory import load_inventory, matches
from jumpstarter.drivers.composite import Composite, Proxy
from jumpstarter.drivers.power import HttpPower, MockPower
from jumpstarter.drivers.serial import Serial
from jumpstarter.errors import ConfigError


def write(tmp_path, text: str, name: str = "exporter.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_upstream_exporter_config_loads_with_upstream_type_names(tmp_path):
    path = write(
        tmp_path,
        """\
        apiVersion: jumpstarter.dev/v1alpha1
        kind: ExporterConfig
        metadata: {namespace: lab, name: rpi4-01}
        endpoint: grpc.lab.example:443
        token: abc
        tls: {ca: "", insecure: false}
        motd: hello
        export:
          power:
            type: jumpstarter_driver_power.driver.MockPower
          serial:
            type: jumpstarter_driver_pyserial.driver.PySerial
            config: {url: /dev/ttyUSB0, baudrate: 9600}
          dut:
            description: the board
            children:
              console: {ref: serial}
        hooks:
          beforeLease: {script: "j power on", timeout: 60, onFailure: endLease}
        """,
    )
    config = load_exporter_config(path)
    assert (config.name, config.namespace, config.endpoint, config.motd) == (
        "rpi4-01",
        "lab",
        "grpc.lab.example:443",
        "hello",
    )
    assert config.hooks["beforeLease"].on_failure == "endLease" and config.hooks["beforeLease"].timeout == 60
    root = config.build()
    assert isinstance(root, Composite)
    assert isinstance(root.children["power"], MockPower)
    serial = root.children["serial"]
    assert isinstance(serial, Serial) and serial.baudrate == 9600
    console = root.children["dut"].children["console"]
    assert isinstance(console, Proxy) and console.uuid == serial.uuid
    assert root.children["dut"].description == "the board"


def test_each_build_makes_fresh_driver_instances(tmp_path):
    config = load_exporter_config(write(tmp_path, "export:\n  power: {type: power.mock}\n"))
    assert config.build().children["power"].uuid != config.build().children["power"].uuid


def test_on_and_off_keys_are_names_not_booleans(tmp_path):
    path = write(
        tmp_path,
        """\
        export:
          power:
            type: power.http
            config:
              on: http://127.0.0.1:1/on
              off: http://127.0.0.1:1/off
        """,
    )
    power = load_exporter_config(path).build().children["power"]
    assert isinstance(power, HttpPower) and power.on_request["url"].endswith("/on")


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "export:\n  power:\n    type: power.bogus\n",
            ":3: export.power.type: unknown driver type 'power.bogus' (known: ",
        ),
        (
            "export:\n  serial:\n    type: serial\n    config:\n      url: /dev/x\n      baud: 9\n",
            ":6: export.serial.config.baud: unknown setting for serial (accepted: baudrate,",
        ),
        (
            "export:\n  serial:\n    type: serial\n",
            ":3: export.serial.config: serial needs the setting 'url'",
        ),
        ("export:\n  p:\n    type: power.mock\n    colour: red\n", ":4: export.p.colour: unknown key"),
        ("metadata: {name: x}\n", ":1: missing 'export'"),
        ("export:\n  a: {type: power.mock}\n  a: {type: power.mock}\n", ":3: duplicate key 'a'"),
        ("export:\n  - power\n", ":1: export: expected a mapping of names to drivers, got list"),
        ("export: {p: {type: power.mock\n", ":2: "),
        ("kind: ClientConfig\nexport: {}\n", ":1: kind: expected ExporterConfig"),
        (
            "export:\n  dut:\n    children:\n      c: {ref: nowhere}\n",
            ":4: export.dut.children.c.ref: ref 'nowhere': no driver 'nowhere'",
        ),
        ("export:\n  9bad: {type: power.mock}\n", ":2: export.9bad: driver names start with a letter"),
        (
            "export:\n  s:\n    type: shell\n    config: {methods: {}}\n",
            ":4: export.s.config: shell: methods: expected a mapping",
        ),
        (
            "export: {}\nhooks:\n  beforeLease: {script: x, onFailure: explode}\n",
            ":3: hooks.beforeLease.onFailure: expected one of warn, endLease, exit",
        ),
    ],
)
def test_mistakes_are_reported_with_file_line_and_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_exporter_config(path)
    assert f"{path}{message}" in str(info.value), str(info.value)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read: No such file"):
        load_exporter_config(str(tmp_path / "nope.yaml"))


INVENTORY = """\
controller: {endpoint: ctl.lab:443, namespace: lab}
socket_dir: /run/jumpstarter/boards
boards:
  - name: rpi4-01
    labels: {board: rpi4}
    match:
      serial: {ID_SERIAL_SHORT: A10KJ3XY, SUBSYSTEM: tty}
    export:
      serial: {type: serial, config: {url: "${serial.devnode}"}}
  - name: sim
    export:
      power: {type: power.mock}
"""


def test_inventory_boards_validate_with_placeholder_devices(tmp_path):
    inventory = load_inventory(write(tmp_path, INVENTORY, "inventory.yaml"))
    assert [b.name for b in inventory.boards] == ["rpi4-01", "sim"]
    board = inventory.board("rpi4-01")
    assert board.labels == {"board": "rpi4"} and board.endpoint == "ctl.lab:443" and board.namespace == "lab"
    assert inventory.matches["rpi4-01"]["serial"]["ID_SERIAL_SHORT"] == "A10KJ3XY"
    board.devices = {"serial": {"devnode": "/dev/ttyUSB3"}}
    assert board.build().children["serial"].url == "/dev/ttyUSB3"


def test_inventory_board_without_match_loads_through_load_config(tmp_path):
    path = write(tmp_path, INVENTORY, "inventory.yaml")
    assert load_config(path, "sim").build().children["power"].kind == "power"


@pytest.mark.parametrize(
    "text, message",
    [
        (
            INVENTORY + "  - name: sim\n    export: {}\n",
            "board sim: duplicate board name (first defined on line 10)",
        ),
        (
            INVENTORY.replace("${serial.devnode}", "${sd.devnode}"),
            "unknown substitution ${sd.devnode}: no matched device 'sd'",
        ),
        (
            INVENTORY.replace("labels: {board: rpi4}", "lables: {board: rpi4}"),
            ":5: board rpi4-01: lables: unknown key",
        ),
        ("boards:\n  - {name: x}\n", "board x: missing 'export'"),
    ],
)
def test_inventory_mistakes_name_the_board(tmp_path, text, message):
    with pytest.raises(ConfigError, match=None) as info:
        load_inventory(write(tmp_path, text, "inventory.yaml"))
    assert message in str(info.value), str(info.value)


def test_unknown_board_lists_the_boards(tmp_path):
    inventory = load_inventory(write(tmp_path, INVENTORY, "inventory.yaml"))
    with pytest.raises(ConfigError, match=r"no board 'x' \(boards: rpi4-01, sim\)"):
        inventory.board("x")


def test_udev_match_rules_with_ancestor_keys():
    props = {"SUBSYSTEM": "tty", "DEVNAME": "/dev/ttyUSB0"}
    parent = {"ID_SERIAL_SHORT": "A10", "ID_VENDOR_ID": "0403"}
    assert matches({"SUBSYSTEM": "tty", "@ID_SERIAL_SHORT": "A10"}, props, [parent])
    assert not matches({"SUBSYSTEM": "tty", "ID_SERIAL_SHORT": "A10"}, props, [parent])
    assert not matches({"@ID_SERIAL_SHORT": "B20"}, props, [parent])


def test_inventory_controller_section_gives_every_board_its_tls_ca(tmp_path):
    text = INVENTORY.replace("controller: {endpoint: ctl.lab:443, namespace: lab}",
                             "controller: {endpoint: ctl.lab:443, namespace: lab, tls: {ca: QUJD, insecure: true}}")
    board = load_inventory(write(tmp_path, text, "inventory.yaml")).board("sim")
    assert (board.tls_ca, board.tls_insecure) == ("QUJD", True)
    bad = INVENTORY.replace("namespace: lab}", "namespace: lab, tokens: x}")
    with pytest.raises(ConfigError, match=r"controller\.tokens: unknown key"):
        load_inventory(write(tmp_path, bad, "bad.yaml"))


def test_controller_and_router_find_the_router_key_in_the_same_place_by_default(tmp_path):
    # a controller writing the key where routerd does not look: every stream refused
    from controllerd.config import load_controller_config
    from routerd.config import DEFAULT_ROUTER_KEY

    config = tmp_path / "controllerd.yaml"
    config.write_text("routers: [router.lab:8083]\n")
    assert load_controller_config(str(config)).router_key_file == DEFAULT_ROUTER_KEY
    config.write_text(f"routers: [router.lab:8083]\nstate_dir: {tmp_path}/state\n")
    assert load_controller_config(str(config)).router_key_file == f"{tmp_path}/state/keys/router.key"
