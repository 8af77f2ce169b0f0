"""`DriverClient`: the client-side twin of a driver."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar

from jumpstarter.errors import JumpstarterError

if TYPE_CHECKING:
    from jumpstarter.client.aio_connection import AsyncConnection, AsyncStream
    from jumpstarter.client.connection import BlockingStream, Connection
    from jumpstarter.driver.interface import Interface


class Link:
    """The connections a client tree shares: blocking and/or asyncio."""

    def __init__(self, sync: Connection | None, aio: AsyncConnection | None = None) -> None:
        self._sync = sync
        self._aio = aio

    @property
    def sync(self) -> Connection:
        if self._sync is None:
            raise JumpstarterError("this client was opened with connect_async(): use the *_async methods")
        return self._sync

    @contextlib.asynccontextmanager
    async def aio(self) -> AsyncIterator[AsyncConnection]:
        """The asyncio connection; a blocking tree gets a short-lived one on the caller's loop.

        That one is closed when the call ends, never left to the garbage collector:
        a grpc.aio channel finalized after its loop is gone can hang the process.
        """
        if self._aio is not None:
            yield self._aio
            return
        from jumpstarter.client.aio_connection import AsyncConnection

        connection = AsyncConnection(self.sync.target)
        connection.pin = self.sync.pin
        try:
            yield connection
        finally:
            await connection.close()


class DriverClient:
    """Drives one driver of an exporter. Subclasses add typed methods and CLI commands.

    Generic access that works for any driver: `call(method, *args)`,
    `streamingcall(method, *args)`, `stream(method)`, and their `*_async` forms.
    """

    #: The hardware interface this client drives (its methods and result types), or None.
    interface: ClassVar[type[Interface] | None] = None

    def __init__(
        self,
        link: Link,
        uuid: str,
        *,
        name: str,
        path: str,
        labels: dict[str, str],
        description: str | None,
        methods_description: dict[str, str],
        children: dict[str, DriverClient],
    ) -> None:
        self.link = link
        self.uuid = uuid
        self.name = name
        self.path = path
        self.labels = labels
        self.description = description
        self.methods_description = methods_description
        self.children = children

    # -- generic calls -----------------------------------------------------

    def call(self, method: str, *args: Any) -> Any:
        """Call an exported unary method and return its result."""
        return self.link.sync.call(self.uuid, method, args)

    def streamingcall(self, method: str, *args: Any) -> Iterator[Any]:
        """Call an exported streaming method; yields each result."""
        return self.link.sync.streaming_call(self.uuid, method, args)

    def stream(self, method: str = "connect") -> BlockingStream:
        """Open an exported byte stream (a context manager with send/receive)."""
        return self.link.sync.open_stream({"kind": "driver", "uuid": self.uuid, "method": method})

    def upload(
        self, source: Iterable[bytes], encoding: str | None = None
    ) -> contextlib.AbstractContextManager[Any]:
        """Send bulk data as a resource; yields the handle to pass to a driver call."""
        return self.link.sync.upload(self.uuid, source, encoding)

    async def call_async(self, method: str, *args: Any) -> Any:
        """`call` for asyncio. A tree from `connect()` opens a new channel for each such call:
        for many async calls use `connect_async`, whose tree shares one."""
        async with self.link.aio() as connection:
            return await connection.call(self.uuid, method, args)

    async def streamingcall_async(self, method: str, *args: Any) -> AsyncIterator[Any]:
        async with self.link.aio() as connection:
            async for item in connection.streaming_call(self.uuid, method, args):
                yield item

    @contextlib.asynccontextmanager
    async def stream_async(self, method: str = "connect") -> AsyncIterator[AsyncStream]:
        async with self.link.aio() as connection:
            async with connection.open_stream(
                {"kind": "driver", "uuid": self.uuid, "method": method}
            ) as stream:
                yield stream

    # -- tree access ---------------------------------------------------------

    def __getattr__(self, name: str) -> Any:  # children: `board.power`
        children = self.__dict__.get("children")
        if children is not None and name in children:
            return children[name]  # type: ignore[no-any-return]
        raise AttributeError(self._missing(name))

    def _missing(self, name: str) -> str:
        children = self.__dict__.get("children") or {}
        where = self.__dict__.get("path") or "board"
        known = ", ".join(sorted(children)) or "none"
        return f"{where} has no driver or method {name!r} (drivers: {known})"

    def __getitem__(self, name: str) -> DriverClient:
        try:
            return self.children[name]
        except KeyError:
            raise KeyError(self._missing(name)) from None

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self.children))

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.path or '(root)'} {self.labels.get('jumpstarter.dev/client', '')}>"
        )

    def walk(self) -> Iterator[DriverClient]:
        yield self
        for child in self.children.values():
            yield from child.walk()

    # -- CLI -------------------------------------------------------------------

    def help_text(self) -> str:
        return self.description or (type(self).__doc__ or "").strip().splitlines()[0]

    def method_help(self, method: str, default: str) -> str:
        return self.methods_description.get(method, default)

    def offers(self, method: str) -> bool:
        """Does the driver have `method`? True when the exporter does not list its methods (upstream)."""
        return not self.methods_description or method in self.methods_description

    def add_cli(self, parser: argparse.ArgumentParser) -> None:
        """Add this driver's subcommands; each sets `func(args) -> int | None`."""
        from jumpstarter.client.drivers.generic import add_generic_cli

        add_generic_cli(self, parser)
