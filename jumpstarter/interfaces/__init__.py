"""One small interface per kind of hardware, shared by its drivers and its client.

Each names the `jumpstarter.dev/client` label its drivers report, our client class
for it, its exported methods and its result types (`PowerReading`, `ShellChunk`...)
that both sides convert with `to_value()` / `from_value()`.
"""

from __future__ import annotations

from jumpstarter.driver.interface import Interface
from jumpstarter.interfaces.network import NetworkInterface
from jumpstarter.interfaces.power import PowerInterface
from jumpstarter.interfaces.serial import SerialInterface
from jumpstarter.interfaces.shell import ShellInterface
from jumpstarter.interfaces.storage import FlasherInterface, StorageMuxInterface
from jumpstarter.interfaces.video import VideoInterface

INTERFACES: tuple[type[Interface], ...] = (
    PowerInterface,
    SerialInterface,
    NetworkInterface,
    FlasherInterface,
    ShellInterface,
    VideoInterface,
    StorageMuxInterface,
)

__all__ = [
    "INTERFACES",
    "FlasherInterface",
    "Interface",
    "NetworkInterface",
    "PowerInterface",
    "SerialInterface",
    "ShellInterface",
    "VideoInterface",
    "StorageMuxInterface",
]
