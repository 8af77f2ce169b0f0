"""Driver `type:` names in configs -> driver classes.

Short names of ours, the upstream class paths of the standard drivers (so an
upstream `ExporterConfig` loads unchanged), and the `jumpstarter.drivers`
entry-point group for drivers from other installed packages. Nothing else is
imported. A driver that leaves a method of its interface unimplemented is refused here.
"""

from __future__ import annotations

import importlib
from functools import cache

from jumpstarter.driver.base import Driver
from jumpstarter.driver.interface import contract_error
from jumpstarter.errors import ConfigError

_M = "jumpstarter.drivers."
SHORT: dict[str, str] = {
    "composite": _M + "composite:Composite",
    "power.mock": _M + "power:MockPower",
    "power.http": _M + "power:HttpPower",
    "power.command": _M + "power:CommandPower",
    "serial": _M + "serial:Serial",
    "network.tcp": _M + "network:TcpNetwork",
    "network.udp": _M + "network:UdpNetwork",
    "network.unix": _M + "network:UnixNetwork",
    "network.echo": _M + "network:EchoNetwork",
    "network.discard": _M + "network:DiscardNetwork",
    "shell": _M + "shell:Shell",
    "storage.file": _M + "storage:FileFlasher",
    "video.still": _M + "video:StillVideo",
    "video.http": _M + "video_http:HttpVideo",
    "video.v4l2": _M + "video_v4l2:V4l2Video",
    "power.gpio": _M + "gpio:GpioPower",
    "storage.blockdev": _M + "storage:FileFlasher",
    "storage.usbsdmux": _M + "sdmux:UsbSdMux",
    "storage.sdwire": _M + "sdmux:SdWire",
    "qemu": _M + "qemu:Qemu",
}
UPSTREAM: dict[str, str] = {
    "jumpstarter_driver_composite.driver.Composite": "composite",
    "jumpstarter_driver_power.driver.MockPower": "power.mock",
    "jumpstarter_driver_power.driver.SyncMockPower": "power.mock",
    "jumpstarter_driver_pyserial.driver.PySerial": "serial",
    "jumpstarter_driver_network.driver.TcpNetwork": "network.tcp",
    "jumpstarter_driver_network.driver.UdpNetwork": "network.udp",
    "jumpstarter_driver_network.driver.UnixNetwork": "network.unix",
    "jumpstarter_driver_network.driver.EchoNetwork": "network.echo",
    "jumpstarter_driver_shell.driver.Shell": "shell",
}


@cache
def _entry_points() -> dict[str, str]:
    from importlib.metadata import entry_points

    return {ep.name: ep.value for ep in entry_points(group="jumpstarter.drivers")}


def known_types() -> list[str]:
    return sorted(SHORT)


def driver_class(type_name: str) -> type[Driver]:
    """The driver class for a config `type:` (ConfigError naming the known types otherwise)."""
    short = UPSTREAM.get(type_name, type_name)
    spec = SHORT.get(short) or _entry_points().get(short)
    if spec is None:
        raise ConfigError(f"unknown driver type {type_name!r} (known: {', '.join(known_types())})")
    module, _, name = spec.partition(":")
    cls = getattr(importlib.import_module(module), name)
    if not (isinstance(cls, type) and issubclass(cls, Driver)):
        raise ConfigError(f"driver type {type_name!r} does not name a Driver class")
    broken = contract_error(cls)  # at registration, not at the first call that reaches the gap
    if broken is not None:
        raise ConfigError(f"driver type {type_name!r}: {broken}")
    return cls
