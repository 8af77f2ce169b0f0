"""The exporterd main loop: serve sessions on the board's socket, handle signals."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from typing import Any

import structlog

from jumpstarter.config.exporter import BoardConfig
from jumpstarter.errors import ConfigError
from jumpstarter.session import Session, serve_unix
from jumpstarter.session.server import SessionSlot
from jumpstarter.v1 import common_pb2

log = structlog.get_logger("exporterd")


class Daemon:
    def __init__(self, args: argparse.Namespace, config: BoardConfig, path: str) -> None:
        self.args = args
        self.config = config
        self.path = path
        self.stop = asyncio.Event()
        self.reload = asyncio.Event()

    def _signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        loop.add_signal_handler(signal.SIGINT, self.stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload.set)

    async def run(self) -> int:
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
                    serve_unix(slot, self.path, self.args.socket_mode) as server,
                    contextlib.AsyncExitStack() as direct,
                ):
                    log.info(
                        "serving",
                        socket=self.path,
                        drivers=len(slot.current.drivers),
                        pid=_pid(),
                        controller=self.config.endpoint if distributed else None,
                    )
                    await self._serve_direct(slot, direct)
                    if distributed:
                        from exporterd.controller_link import ControllerLink

                        link = ControllerLink(self, slot)
                        link_task = asyncio.create_task(link.run(), name="controller-link")
                        link_task.add_done_callback(lambda t: self.stop.set())
                    await self._wait()
                    if link_task is not None:
                        code = await self._stop_link(link_task) or link.exit_code
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

    async def _serve_direct(self, slot: SessionSlot, stack: contextlib.AsyncExitStack) -> None:
        """`--listen`: the same session on TCP with TLS and a passphrase (closed with `stack`)."""
        if not self.args.listen:
            return
        from jumpstarter import tls
        from jumpstarter.session.direct import serve_tcp

        credentials = None
        if not self.args.insecure_listener:
            host = self.args.listen.rpartition(":")[0]
            cert, key = tls.load_or_create(self.args.tls_cert, self.args.tls_key, [host])
            credentials = tls.server_credentials(cert, key)
        passphrase = None
        if self.args.passphrase_file:
            passphrase = _read_passphrase(self.args.passphrase_file)
        await stack.enter_async_context(serve_tcp(slot, self.args.listen, credentials, passphrase))
        log.info(
            "serving directly",
            listen=self.args.listen,
            tls=credentials is not None,
            passphrase=passphrase is not None,
            certificate=self.args.tls_cert,
        )

    def new_session(self, status: int, name: str = "local") -> Session:
        return Session(
            self.config.build(),
            labels=self.config.labels,
            motd=self.config.motd,
            status=status,  # type: ignore[arg-type]
            name=name,
        )

    async def _stop_link(self, task: asyncio.Task[int]) -> int:
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
        from exporterd.main import load

        try:
            self.config = load(self.args)
            log.info("config reloaded", source=self.config.source)
        except ConfigError as exc:
            log.error("config reload failed; keeping the previous config", error=str(exc))


def _read_passphrase(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            passphrase = handle.read(64 * 1024).decode().strip()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the passphrase file: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the passphrase file is not text") from None
    if not passphrase:
        raise ConfigError(f"{path}: empty passphrase")
    return passphrase


def _pid() -> int:
    import os

    return os.getpid()
