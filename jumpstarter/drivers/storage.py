"""Storage: write (flash) an image to a file or block device, read (dump) it back.

Bulk data arrives as a resource stream (PROTOCOL.md §5), decompressed on the
fly (gzip/xz/bz2/zstd), written in large blocks; nothing is held in memory.
"""

from __future__ import annotations

import asyncio
import os
import stat
import time
from typing import Any

from jumpstarter.driver import Driver, export
from jumpstarter.interfaces.storage import DumpResult, FlasherInterface, FlashResult

WRITE_BLOCK = 4 * 1024 * 1024
READ_BLOCK = 1024 * 1024


class FileFlasher(FlasherInterface, Driver):
    """Flash into a file or block device on the lab host (an SD card behind a mux, a disk image).

    Config: `path` (default target), `targets` (name -> path, for `flash(..., target)`),
    `sync` (fsync when done, default true).
    """

    def __init__(
        self, *, path: str, targets: dict[str, str] | None = None, sync: bool = True, **base: Any
    ) -> None:
        super().__init__(**base)
        self.path = str(path)
        self.targets = {str(k): str(v) for k, v in (targets or {}).items()}
        self.sync = bool(sync)

    def _path(self, target: str | None) -> str:
        if target in (None, "", "default"):
            return self.path
        if target not in self.targets:
            raise ValueError(f"unknown target {target!r} (targets: {', '.join(['default', *self.targets])})")
        return self.targets[target]  # type: ignore[index]

    @export
    async def flash(self, source: Any, target: str | None = None) -> FlashResult:
        """Write the image from `source` (a resource handle) to the target; returns bytes written."""
        path = self._path(target)
        is_block = os.path.exists(path) and stat.S_ISBLK(os.stat(path).st_mode)
        flags = os.O_WRONLY | os.O_CREAT | (0 if is_block else os.O_TRUNC)
        started = time.monotonic()
        fd = await asyncio.to_thread(os.open, path, flags, 0o644)
        written = 0
        try:
            async with self.resource(source) as stream:
                pending = bytearray()
                while data := await stream.receive():
                    pending += data
                    if len(pending) >= WRITE_BLOCK:
                        written += await asyncio.to_thread(_write_all, fd, bytes(pending))
                        pending.clear()
                if pending:
                    written += await asyncio.to_thread(_write_all, fd, bytes(pending))
            if self.sync:
                await asyncio.to_thread(os.fsync, fd)
        finally:
            os.close(fd)
        seconds = time.monotonic() - started
        self.log.info("flashed", path=path, bytes=written, seconds=round(seconds, 3))
        return FlashResult(written, seconds, target or "default")

    @export
    async def dump(self, destination: Any, target: str | None = None) -> DumpResult:
        """Read the target and send it to `destination` (a resource handle)."""
        path = self._path(target)
        fd = await asyncio.to_thread(os.open, path, os.O_RDONLY)
        sent = 0
        try:
            async with self.resource(destination) as stream:
                while data := await asyncio.to_thread(os.read, fd, READ_BLOCK):
                    await stream.send(data)
                    sent += len(data)
                await stream.send_eof()
        finally:
            os.close(fd)
        return DumpResult(sent, target or "default")


def _write_all(fd: int, data: bytes) -> int:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    return len(data)
