"""Serve a driver tree inside this process (the CLI's `--config`, `--env`, `--detect`).

The session runs on its own event loop in a background thread, on a unix
socket in a private temporary directory (mode 0700); the caller connects to it
like to any exporterd, so there is only one client path.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from typing import Any

from jumpstarter.driver.base import Driver


class LocalServer:
    """`with LocalServer(build) as socket_path:` serves until the block ends."""

    def __init__(
        self, build: Callable[[], Driver], *, labels: dict[str, str] | None = None, motd: str = ""
    ) -> None:
        self.build = build
        self.labels = labels or {}
        self.motd = motd
        self.directory = ""
        self.path = ""
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> str:
        base = (
            os.environ.get("XDG_RUNTIME_DIR")
            if os.path.isdir(os.environ.get("XDG_RUNTIME_DIR", ""))
            else None
        )
        self.directory = tempfile.mkdtemp(prefix="jumpstarter-", dir=base)
        self.path = os.path.join(self.directory, "session.sock")
        self._thread = threading.Thread(target=self._run, daemon=True, name="local-exporter")
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self.__exit__(None, None, None)
            raise self._error
        return self.path

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:
            if not self._ready.is_set():
                self._error = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        from jumpstarter.session.server import Session, serve_unix

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        session = Session(self.build(), labels=self.labels, motd=self.motd)
        await session.start()
        try:
            async with serve_unix(session, self.path, 0o600):
                self._ready.set()
                await self._stop.wait()
        finally:
            await session.stop()

    def __exit__(self, *exc: Any) -> None:
        if self._loop is not None and self._stop is not None:
            try:
                self._loop.call_soon_threadsafe(self._stop.set)
            except RuntimeError:  # the loop already ended
                pass
        if self._thread is not None:
            self._thread.join(timeout=10)
        shutil.rmtree(self.directory, ignore_errors=True)
