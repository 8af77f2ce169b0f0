"""Hardware interfaces: the contract a driver and its client share (jumpstarter/interfaces/)."""

from __future__ import annotations

import doctest
import textwrap

import pytest

from jumpstarter.client.registry import client_class
from jumpstarter.config.exporter import load_exporter_config
from jumpstarter.driver import Driver, export
from jumpstarter.drivers import registry
from jumpstarter.errors import ConfigError
from jumpstarter.interfaces import INTERFACES, PowerInterface
from jumpstarter.interfaces.power import PowerReading
from jumpstarter.interfaces.shell import ShellChunk
from jumpstarter.interfaces.storage import FlashResult

# The `jumpstarter.dev/client` labels upstream clients pick their class from (PROTOCOL.md §8):
# written out here so that a change of the wire contract fails this test, not only interop.
WIRE_LABELS = {
    "power.mock": "jumpstarter_driver_power.client.PowerClient",
    "power.http": "jumpstarter_driver_power.client.PowerClient",
    "power.command": "jumpstarter_driver_power.client.PowerClient",
    "serial": "jumpstarter_driver_pyserial.client.PySerialClient",
    "network.tcp": "jumpstarter_driver_network.client.NetworkClient",
    "network.udp": "jumpstarter_driver_network.client.NetworkClient",
    "network.unix": "jumpstarter_driver_network.client.NetworkClient",
    "network.echo": "jumpstarter_driver_network.client.NetworkClient",
    "network.discard": "jumpstarter_driver_network.client.NetworkClient",
    "shell": "jumpstarter_driver_shell.client.ShellClient",
    "storage.file": "jumpstarter.client.flasher.FlasherClient",
    "power.gpio": "jumpstarter_driver_power.client.PowerClient",
    "video.still": "jumpstarter.client.drivers.video.VideoClient",
    "video.http": "jumpstarter.client.drivers.video.VideoClient",
    "video.v4l2": "jumpstarter.client.drivers.video.VideoClient",
}


@pytest.mark.parametrize("interface", INTERFACES, ids=lambda i: i.__name__)
def test_the_example_in_each_interface_docstring_runs_over_real_grpc(interface):
    tests = doctest.DocTestFinder(recurse=False).find(interface, interface.__name__)
    examples = [t for t in tests if t.examples]
    assert examples, f"{interface.__name__} has no runnable example in its docstring"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in examples:
        test.globs = {}
        output: list[str] = []
        result = runner.run(test, out=output.append)
        assert result.failed == 0, "".join(output)
        assert result.attempted == len(test.examples)


@pytest.mark.parametrize("type_name", sorted(WIRE_LABELS))
def test_each_driver_reports_its_interface_label_and_the_client_comes_from_the_interface(type_name):
    cls = registry.driver_class(type_name)
    interface = cls.interface
    assert interface is not None and interface in INTERFACES
    assert cls.client == interface.client == WIRE_LABELS[type_name]
    assert cls.kind == interface.kind
    client = client_class(interface.client)
    module, _, name = interface.client_class.partition(":")
    assert (client.__module__, client.__name__) == (module, name)
    assert client.interface is interface


def test_every_interface_has_a_driver_a_client_and_abstract_methods():
    implemented = {registry.driver_class(t).interface for t in registry.known_types()}
    for interface in INTERFACES:
        assert interface in implemented, f"no driver implements {interface.__name__}"
        assert interface.abstract_methods(), interface.__name__
        assert client_class(interface.client).interface is interface


class HalfPower(PowerInterface, Driver):
    """Switches on, but forgot `off`."""

    @export
    async def on(self) -> None:
        return None


@pytest.fixture
def half_power_type(monkeypatch):
    monkeypatch.setitem(registry.SHORT, "power.half", f"{__name__}:HalfPower")
    return "power.half"


def test_a_driver_missing_a_method_of_its_interface_is_refused_at_registration(half_power_type):
    with pytest.raises(ConfigError) as refused:
        registry.driver_class(half_power_type)
    message = str(refused.value)
    assert f"{__name__}.HalfPower does not implement PowerInterface" in message
    assert "missing off() (Switch the board off.)" in message
    assert "on()" not in message


def test_an_exporter_config_naming_such_a_driver_fails_with_file_and_line(half_power_type, tmp_path):
    path = tmp_path / "exporter.yaml"
    path.write_text("export:\n  power:\n    type: power.half\n")
    with pytest.raises(ConfigError, match=r":3: export\.power\.type: .*HalfPower.*missing off\(\)"):
        load_exporter_config(str(path)).build()


def test_building_such_a_driver_in_python_names_it_and_the_missing_method():
    with pytest.raises(TypeError, match=r"HalfPower does not implement PowerInterface: missing off\(\)"):
        HalfPower()


def test_an_interface_listed_after_driver_is_refused_when_the_class_is_defined():
    with pytest.raises(TypeError, match=r"class Backwards\(PowerInterface, Driver\)"):
        exec(
            textwrap.dedent(
                """
                class Backwards(Driver, PowerInterface):
                    async def on(self): ...
                    async def off(self): ...
                """
            ),
            {"Driver": Driver, "PowerInterface": PowerInterface},
        )


def test_a_renamed_export_in_an_interface_does_not_export_the_lifecycle_close():
    from jumpstarter.drivers.serial import Serial

    exported = Serial._exported
    assert exported["close"].function.__name__ == "close_port"  # `close` on the wire closes the port
    assert sorted(exported) == [
        "attach",
        "close",
        "connect",
        "console_logs",
        "read_console_log",
        "read_scrollback",
        "send_break",
        "set_dtr",
        "set_rts",
    ]


def test_result_types_round_trip_and_refuse_malformed_wire_values():
    reading = PowerReading(5, 2)
    assert reading.to_value() == {"voltage": 5.0, "current": 2.0}
    assert all(type(v) is float for v in reading.to_value().values())  # upstream checks strictly
    assert PowerReading.from_value(reading.to_value()) == PowerReading(5.0, 2.0)
    for bad in (
        {"voltage": True, "current": 1.0},
        {"voltage": 1.0},
        [5.0, 2.0],
        {"voltage": "5", "current": 1},
    ):
        with pytest.raises(ValueError, match="power reading"):
            PowerReading.from_value(bad)

    assert ShellChunk.from_value(["out", "", 0.0]) == ("out", "", 0)
    assert ShellChunk.from_value(["", None, None]).to_value() == ["", "", None]
    for bad in (["a", "b"], ["a", "b", "zero"], [1, "", None]):
        with pytest.raises(ValueError, match="shell output|returncode"):
            ShellChunk.from_value(bad)

    flashed = FlashResult.from_value({"bytes": 4096.0, "seconds": 0.5, "target": "default"})
    assert (flashed.bytes, flashed["bytes"], flashed.get("target")) == (4096, 4096, "default")
    with pytest.raises(ValueError, match="byte count"):
        FlashResult.from_value({"bytes": -1, "seconds": 0, "target": "x"})
