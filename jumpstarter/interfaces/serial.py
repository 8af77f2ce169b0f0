"""Serial console: a byte stream to the board's UART, shared by every attached client."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import AsyncIterator
from typing import Any

from jumpstarter.driver.decorators import export, exportstream
from jumpstarter.driver.interface import Interface


class SerialInterface(Interface):
    """A serial console: `connect` (byte stream), `close()`, `set_dtr(bool)`, `set_rts(bool)`;
    ours also: `attach` (stream starting with recent scrollback), `send_break`, console logs.

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

    @exportstream
    async def attach(self) -> AsyncIterator[Any]:
        """`connect`, starting with recent scrollback (drivers that keep none: just `connect`)."""
        async with self.connect() as stream:  # type: ignore[attr-defined]
            yield stream

    @export
    async def send_break(self, duration: float = 0.25) -> None:
        """Hold the line in the break condition for `duration` seconds."""
        raise NotImplementedError(f"{type(self).__name__} cannot send a break")

    @export
    async def console_logs(self) -> list[dict[str, Any]]:
        """The kept console logs: session (the lease name), started (UTC), size, current."""
        raise NotImplementedError(f"{type(self).__name__} keeps no console logs")

    @export
    async def read_console_log(self, session: str | None = None) -> AsyncIterator[bytes]:
        """A session's console log (the current one by default)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no console logs")
        yield b""  # pragma: no cover (makes this a generator: a streaming export)
