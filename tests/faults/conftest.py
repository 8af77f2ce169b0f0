"""Shared parts of the fault tests: real daemons on loopback, faults injected from the test.

- `fault_seed` / `fault_scale`: a fixed, printed random seed (JUMPSTARTER_FAULT_SEED overrides
  it) and a load factor (JUMPSTARTER_FAULT_SCALE, default 1) for the long-running tests.
- `centrals`: starts controllerd (+ routerd) stacks from tests/integration/central.py and
  closes them after the test.
- `LightExporter`: an exporter made of real ControllerService calls over TLS (Register,
  ReportStatus, Status) in one thread, cheaper than an exporterd process, that reconnects
  whenever the controller goes away, as exporterd does.
- `spawn_exporterd`: a real exporterd for an admin-written identity, optionally pointed at
  another controller endpoint (a proxy).
- `StallProxy`: an asyncio TCP proxy on loopback that can stop forwarding both directions
  without closing either socket (a network partition) and resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from jumpstarter.v1 import jumpstarter_pb2, jumpstarter_pb2_grpc
from tests.integration.central import Central, Identity, S, close_central, start_central

DEFAULT_SEED = 20261201


def fault_seed() -> int:
    """The run's random seed: JUMPSTARTER_FAULT_SEED, else a fixed one; printed so a failure can be replayed."""
    seed = int(os.environ.get("JUMPSTARTER_FAULT_SEED", DEFAULT_SEED))
    print(f"fault seed: {seed} (replay with JUMPSTARTER_FAULT_SEED={seed})")
    return seed


def fault_scale() -> float:
    """How much more load than the default the long fault tests apply (JUMPSTARTER_FAULT_SCALE)."""
    return max(0.05, float(os.environ.get("JUMPSTARTER_FAULT_SCALE", "1")))


@pytest.fixture
def centrals() -> Iterator[Callable[..., Central]]:
    """`centrals(**controllerd_settings)` starts a Central; every one is closed after the test."""
    started: list[Central] = []

    def start(prefix: str = "jsf-", router: bool = True, **settings: Any) -> Central:
        central = start_central(prefix=prefix, router=router, **settings)
        started.append(central)
        return central

    try:
        yield start
    finally:
        for central in started:
            close_central(central)


# -- a light-weight exporter ---------------------------------------------------------------------


class LightExporter:
    """Register + ReportStatus + Status over TLS in a thread; reconnects after every loss.

    Like exporterd without drivers: `leased=true` is answered with LEASE_READY, `leased=false`
    with AVAILABLE. `connects` counts Status streams opened, `told` is what it was last told.
    """

    def __init__(self, central: Central, identity: Identity, labels: dict[str, str] | None = None) -> None:
        self.central = central
        self.identity = identity
        self.labels = {"jumpstarter.dev/name": identity.name, **(labels or {})}
        self.md = identity.metadata()
        self.connects = 0
        self.told: tuple[bool, str] = (False, "")
        self.errors: list[str] = []  # anything but the controller being away
        self._stopping = threading.Event()
        self._channel: grpc.Channel | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"exporter {identity.name}", daemon=True)

    @property
    def name(self) -> str:
        return self.identity.name

    def start(self) -> LightExporter:
        self._thread.start()
        return self

    def _report(self, stub: Any, status: int) -> None:
        request = jumpstarter_pb2.ReportStatusRequest(status=status, message="light")  # type: ignore[arg-type]
        stub.ReportStatus(request, metadata=self.md, timeout=5)

    def _run(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                if self._stopping.is_set():
                    return
                self._channel = channel = self.central.channel()
            stub = jumpstarter_pb2_grpc.ControllerServiceStub(channel)
            try:
                stub.Register(
                    jumpstarter_pb2.RegisterRequest(labels=self.labels), metadata=self.md, timeout=5
                )
                self._report(stub, S.EXPORTER_STATUS_AVAILABLE)
                call = stub.Status(jumpstarter_pb2.StatusRequest(), metadata=self.md)
                self.connects += 1
                for status in call:
                    self.told = (status.leased, status.lease_name if status.leased else "")
                    ready = S.EXPORTER_STATUS_LEASE_READY if status.leased else S.EXPORTER_STATUS_AVAILABLE
                    self._report(stub, ready)
            except grpc.RpcError as exc:
                if exc.code() not in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.CANCELLED,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                ):
                    self.errors.append(f"{exc.code().name}: {exc.details()}")
            except ValueError:  # the channel was closed under us: we are stopping
                pass
            finally:
                channel.close()
            self._stopping.wait(0.2)  # like exporterd's first back-off step

    def close(self) -> None:
        with self._lock:
            self._stopping.set()
            if self._channel is not None:
                self._channel.close()
        self._thread.join(10)


# -- a real exporterd ----------------------------------------------------------------------------


def spawn_exporterd(
    central: Central, identity: Identity, tag: str, *, endpoint: str | None = None
) -> subprocess.Popen[bytes]:
    """A real exporterd for an admin-written `identity` (echo driver), logging to `exporterd-TAG.log`.

    `endpoint` replaces the controller endpoint of its config (e.g. a StallProxy in between).
    The process is added to `central.extra`, so closing the Central stops it.
    """
    config = identity.config
    if endpoint is not None:
        document = yaml.safe_load(Path(config).read_text())
        document["endpoint"] = endpoint
        config = os.path.join(central.directory, f"exporterd-{tag}.yaml")
        Path(config).write_text(yaml.safe_dump(document))
    socket = os.path.join(central.directory, f"{tag}.sock")
    return central.spawn_exporterd(f"exporterd-{tag}", config, {"echo": {"type": "network.echo"}}, socket)


# -- a TCP proxy that can stall ------------------------------------------------------------------


class StallProxy:
    """Forwards loopback TCP connections to `target`; `stall()` stops both directions, sockets open.

    While stalled the proxy reads at most one chunk per direction and holds it, so the kernel's
    buffers fill and TCP applies back-pressure, as on a link that silently drops everything;
    a close seen meanwhile is only passed on after `resume()`.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._flowing = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, name="stall proxy", daemon=True)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> StallProxy:
        self._thread.start()
        self._call(self._start())
        return self

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    async def _start(self) -> None:
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
            await self._flowing.wait()
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    def stall(self) -> None:
        self._loop.call_soon_threadsafe(self._flowing.clear)

    def resume(self) -> None:
        self._loop.call_soon_threadsafe(self._flowing.set)

    async def _close(self) -> None:
        self._flowing.set()
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()

    def close(self) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                self._call(self._close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)


@pytest.fixture
def stall_proxy() -> Iterator[Callable[[str, int], StallProxy]]:
    """`stall_proxy(host, port)` starts a StallProxy to that target; all are closed after the test."""
    proxies: list[StallProxy] = []

    def start(host: str, port: int) -> StallProxy:
        proxy = StallProxy(host, port).start()
        proxies.append(proxy)
        return proxy

    try:
        yield start
    finally:
        for proxy in proxies:
            proxy.close()
