"""Network: byte streams to a TCP/UDP/unix service near the board, reached through the exporter."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import AsyncIterator
from typing import Any

from jumpstarter.driver.decorators import exportstream
from jumpstarter.driver.interface import Interface


class NetworkInterface(Interface):
    """A network service: `connect` (one connection as a byte stream).

    TCP and UDP drivers also export `address()` -> `tcp://host:port` (PROTOCOL.md §8);
    clients forward a local port over `connect`. Serve an echo service and talk to it:

    >>> from jumpstarter.driver.serve import serve
    >>> from jumpstarter.drivers.network import EchoNetwork
    >>> with serve(EchoNetwork()) as echo, echo.open() as stream:
    ...     stream.send(b"ping")
    ...     stream.receive()
    b'ping'
    """

    client = "jumpstarter_driver_network.client.NetworkClient"
    client_class = "jumpstarter.client.drivers.network:NetworkClient"
    also_drives = ("jumpstarter.client.drivers.network.NetworkClient",)
    kind = "network"

    @exportstream
    @abstractmethod
    async def connect(self) -> AsyncIterator[Any]:
        """Open one connection to the service."""
        yield  # pragma: no cover
