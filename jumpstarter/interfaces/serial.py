"""Serial console: a byte stream to the board's UART, shared by every attached client."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import AsyncIterator
from typing import Any

from jumpstarter.driver.decorators import export, exportstream
from jumpstarter.driver.interface import Interface


class SerialInterface(Interface):
    """A serial console: `connect` (byte stream), `close()`, `set_dtr(bool)`, `set_rts(bool)`.

    Serve a pyserial loopback port and expect what was typed to come back:

    >>> from jumpstarter.driver.serve import serve
    >>> from jumpstarter.drivers.serial import Serial
    >>> with serve(Serial(url="loop://")) as serial, serial.console() as console:
    ...     console.sendline("hello")
    ...     console.expect("hello", timeout=30)
    ...     console.after
    0
    'hello'
    """

    client = "jumpstarter_driver_pyserial.client.PySerialClient"
    client_class = "jumpstarter.client.drivers.serial:SerialClient"
    also_drives = ("jumpstarter.client.drivers.serial.SerialClient",)
    kind = "serial"

    @exportstream
    @abstractmethod
    async def connect(self) -> AsyncIterator[Any]:
        """Attach to the console: receive its output, send keystrokes."""
        yield  # pragma: no cover

    @export(name="close")
    @abstractmethod
    async def close_port(self) -> None:
        """Close the port now; it is reopened automatically."""

    @export
    @abstractmethod
    async def set_dtr(self, value: bool) -> None:
        """Set the DTR line."""

    @export
    @abstractmethod
    async def set_rts(self, value: bool) -> None:
        """Set the RTS line."""

    @export
    async def read_scrollback(self) -> bytes:
        """The most recent console output kept by the exporter."""
        raise NotImplementedError(f"{type(self).__name__} keeps no scrollback")
