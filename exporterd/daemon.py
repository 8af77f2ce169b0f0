"""The exporterd main loop: serve sessions on the board's socket, handle signals, reload.

The Daemon owns the board's socket, the slot holding the session served now, the
signals (SIGTERM/SIGINT stop, SIGHUP finishes the session and reloads the config), the
direct TCP listener and, in distributed mode, the `ControllerLink` it builds for each
config. It is built by `main` with explicit inputs and knows nothing of the command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable
from typing import Any

import structlog

from exporterd.controller_link import ControllerLink
from exporterd.direct import DirectListener, serve_direct
from exporterd.health import with_health_check
from exporterd.tunnels import TunnelLimits
from jumpstarter.config.exporter import BoardConfig
from jumpstarter.errors import ConfigError
from jumpstarter.session import Session, serve_unix
from jumpstarter.session.server import SessionSlot
from jumpstarter.v1 import common_pb2

log = structlog.get_logger("exporterd")


class Daemon:
    def __init__(
        self,
        config: BoardConfig,
        socket_path: str,
        *,
        load_config: Callable[[], BoardConfig],
        socket_mode: int = 0o660,
        direct: DirectListener | None = None,
        limits: TunnelLimits = TunnelLimits(),
    ) -> None:
        """`load_config` reads the config again on SIGHUP (raising ConfigError keeps the old one)."""
        self.config = config
        self.path = socket_path
        self.load_config = load_config
        self.socket_mode = socket_mode
        self.direct = direct
        self.limits = limits
        self.stop = asyncio.Event()
        self.reload = asyncio.Event()

    def _signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        loop.add_signal_handler(signal.SIGINT, self.stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload.set)

    async def run(self) -> int:
        """Serve until a signal stops it; the exit code (non-zero when the controller link failed)."""
        self._signals()
        structlog.contextvars.bind_contextvars(board=self.config.name)
        while True:
            distributed = bool(self.config.endpoint and self.config.token)
            status = (
                common_pb2.EXPORTER_STATUS_AVAILABLE
                if distributed
                else common_pb2.EXPORTER_STATUS_LEASE_READY
            )
            slot = SessionSlot(self.new_session(status))
            await slot.current.start()
            link_task: asyncio.Task[int] | None = None
            try:
                async with (
                    serve_unix(slot, self.path, self.socket_mode) as server,
                    contextlib.AsyncExitStack() as direct,
                ):
                    log.info(
                        "serving",
                        socket=self.path,
                        drivers=len(slot.current.drivers),
                        pid=os.getpid(),
                        controller=self.config.endpoint if distributed else None,
                    )
                    if self.direct is not None:
                        await serve_direct(slot, self.direct, direct)
                    if distributed:
                        link = ControllerLink(
                            self.config, slot, self.new_session, self.path, self.limits, stop=self.stop.set
                        )
                        link_task = asyncio.create_task(link.run(), name="controller-link")
                        link_task.add_done_callback(lambda t: self.stop.set())
                    await self._wait()
                    if link_task is not None:
                        code = await self._stop_link(link_task)
                        if code:
                            return code
                    if self.reload.is_set() and not self.stop.is_set():
                        await self._drain(server)
                    await slot.current.stop()  # end driver streams cleanly before the servers go
            finally:
                await slot.current.stop()
            if self.stop.is_set():
                log.info("stopped")
                return 0
            self.reload.clear()
            self._reload_config()

    def new_session(self, status: int, name: str = "local") -> Session:
        """A session with fresh drivers from the current config (not yet started)."""
        return Session(
            with_health_check(self.config.build(), self.config.health, self.path),
            labels=self.config.labels,
            motd=self.config.motd,
            status=status,  # type: ignore[arg-type]
            name=name,
        )

    async def _stop_link(self, task: asyncio.Task[int]) -> int:
        """The link's exit code: its own when it ended by itself, else 0 after cancelling it."""
        if task.done():
            return task.result() if not task.cancelled() and task.exception() is None else 1
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            return await task
        return 0

    async def _wait(self) -> None:
        waiters = [asyncio.ensure_future(self.stop.wait()), asyncio.ensure_future(self.reload.wait())]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            waiter.cancel()

    async def _drain(self, server: Any) -> None:
        """SIGHUP: stop accepting new calls, let the running ones finish (or SIGTERM)."""
        log.info("reload requested: finishing the current session")
        stopping = asyncio.ensure_future(server.stop(grace=None))
        stop = asyncio.ensure_future(self.stop.wait())
        await asyncio.wait([stopping, stop], return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()

    def _reload_config(self) -> None:
        try:
            self.config = self.load_config()
            log.info("config reloaded", source=self.config.source)
        except ConfigError as exc:
            log.error("config reload failed; keeping the previous config", error=str(exc))
