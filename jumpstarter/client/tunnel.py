"""The router tunnel to a leased board (PROTOCOL.md §5-6).

`Tunnel` is a private unix socket whose every connection is Dialed and spliced
through a router to the exporter's session; the socket is an ordinary
JUMPSTARTER_HOST for the CLI, pytest and `connect()`. The lease it serves is held
by `jumpstarter.client.session.RemoteSession`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from jumpstarter import channels
from jumpstarter.client.remote import DIAL_TIMEOUT, ControllerClient, RemoteError
from jumpstarter.splice import splice
from jumpstarter.v1 import router_pb2_grpc

ROUTER_CONNECT_WAIT = 10.0  # seconds for a new router channel to connect before its TLS is checked
DIALERS = 16  # connections Dialing at once (each Dial blocks a worker thread while it retries)


class Tunnel:
    """A private unix socket; each connection to it is Dialed and spliced to the exporter via a router.

    Runs on its own asyncio loop thread so blocking code (and subprocesses given
    the path as JUMPSTARTER_HOST) can use it. Failures to Dial are kept in
    `last_error` and printed through `on_error`.
    """

    def __init__(
        self,
        client: ControllerClient,
        lease_name: str,
        dial_timeout: float = DIAL_TIMEOUT,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self.client = client
        self.lease_name = lease_name
        self.dial_timeout = dial_timeout
        self.on_error = on_error or (lambda text: print(f"jumpstarter: {text}", file=sys.stderr))
        base = tempfile.gettempdir()
        self.directory = tempfile.mkdtemp(prefix="jmp-", dir=base if len(base) < 60 else "/tmp")
        self.path = os.path.join(self.directory, "tunnel.sock")
        self.last_error: RemoteError | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="jmp-tunnel")
        self._server: asyncio.AbstractServer | None = None
        self._routers: dict[str, grpc.aio.Channel] = {}
        # Dial goes through the client's one (blocking) controller channel, in these threads
        self._dialers = ThreadPoolExecutor(DIALERS, thread_name_prefix="jmp-dial")
        self._closing = threading.Event()  # cuts the pauses of running Dials short
        self.report_errors = True  # False while a session waits for the exporter: it raises last_error itself
        self._tasks: set[asyncio.Task[None]] = set()

    def __enter__(self) -> Tunnel:
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def _start(self) -> None:
        self._server = await asyncio.start_unix_server(self._accept, path=self.path)
        os.chmod(self.path, 0o600)

    def close(self) -> None:
        self._closing.set()
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._dialers.shutdown(wait=False, cancel_futures=True)
        if not self._loop.is_running() and not self._loop.is_closed():
            self._loop.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._tasks:  # connections whose local side closed end OK at the router in a moment
            await asyncio.wait(set(self._tasks), timeout=1)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)
        for channel in self._routers.values():
            await channel.close()
        # like asyncio.run(): let what is left (gRPC's own call tasks) finish before the loop stops
        leftovers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in leftovers:
            task.cancel()
        if leftovers:
            await asyncio.wait(leftovers, timeout=2)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        try:
            try:
                endpoint, token = await self._dial()
                channel = await self._router(endpoint)
            except RemoteError as exc:
                self.last_error = exc
                if self.report_errors:
                    self.on_error(str(exc))
                return
            call = router_pb2_grpc.RouterServiceStub(channel).Stream(
                metadata=(("authorization", f"Bearer {token}"),)
            )
            await splice(reader, writer, call)
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # e.g. the router's certificate cannot be fetched (tls.insecure)
            self.on_error(f"lease {self.lease_name}: tunnel to the router failed: {exc}")
        finally:
            writer.close()
            self._tasks.discard(task)  # type: ignore[arg-type]

    async def _dial(self) -> tuple[str, str]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._dialers, self.client.dial, self.lease_name, self.dial_timeout, self._closing
        )

    async def _router(self, endpoint: str) -> grpc.aio.Channel:
        """One channel per router endpoint, trusted with the client config's CA (or pinned on first use)."""
        if endpoint in self.client.tls_failures:  # a router whose TLS fails is not tried again
            raise self.client.tls_failures[endpoint]
        channel = self._routers.get(endpoint)
        if channel is None:
            if endpoint == self.client.endpoint:
                credentials = self.client.credentials
            else:
                config = self.client.config
                credentials = await asyncio.get_running_loop().run_in_executor(
                    None, channels.controller_credentials, endpoint, config.ca, config.insecure
                )
            channel = self._routers[endpoint] = channels.open_controller_aio(endpoint, credentials)
            state = await channels.connect_state(channel, ROUTER_CONNECT_WAIT)
            if state != grpc.ChannelConnectivity.READY:
                await self._check_tls(endpoint)
        return channel

    async def _check_tls(self, endpoint: str) -> None:
        """Raise TLSFailure (once found, at once) when TLS to this endpoint fails with the config's CA."""
        await asyncio.get_running_loop().run_in_executor(self._dialers, self.client.check_tls, endpoint)


def __getattr__(name: str) -> Any:
    """`hold` and `Held` moved to `jumpstarter.client.session`: imports from here keep working."""
    if name in ("hold", "Held"):
        from jumpstarter.client import session

        return session.hold if name == "hold" else session.RemoteSession
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
