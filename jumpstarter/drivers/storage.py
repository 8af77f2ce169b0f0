"""Storage: write (flash) an image to a file or block device, read (dump) it back.

Bulk data arrives as a resource stream (PROTOCOL.md §5) or an http(s) URL the exporter
fetches itself, is decompressed here (gzip/xz/bz2/zstd) and written through the
pipeline of `jumpstarter.drivers.flashing` (bounded memory, head last, read-back check).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

from jumpstarter import compression
from jumpstarter.driver import Driver, export
from jumpstarter.drivers.flashing import FlashOptions, flash_file
from jumpstarter.interfaces.storage import DumpResult, FlasherInterface, FlashResult, StorageStatus
from jumpstarter.session.resources import parse_handle

READ_BLOCK = 1024 * 1024
MAX_BYTES = 1 << 40  # a growable file target stops here; a block device stops at its size


class Flashing:
    """What every storage driver does with a handle: the pipeline, and the state it leaves."""

    max_bytes: int
    log: Any

    def _init_state(self, max_bytes: int, fetch_from: list[str] | None) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
            raise ValueError(f"max_bytes must be a positive byte count, got {max_bytes!r}")
        self.max_bytes = max_bytes
        self.fetch_from = [_url_prefix(p) for p in (fetch_from or [])]
        self.flash_state = "idle"
        self.flash_detail = ""

    def check_url(self, url: str) -> None:
        """Clients may have the exporter fetch only under the configured `fetch_from` prefixes
        (an open fetcher would let a lease holder read the lab's internal web services)."""
        parts = urllib.parse.urlsplit(url)
        # `..` (also percent-encoded) would climb out of an allowed folder on a server that resolves it
        segments = urllib.parse.unquote(parts.path).split("/")
        if "." not in segments and ".." not in segments:
            for scheme, netloc, path in self.fetch_from:
                if parts.scheme == scheme and parts.netloc.lower() == netloc and parts.path.startswith(path):
                    return
        allowed = ", ".join(f"{s}://{n}{p}" for s, n, p in self.fetch_from) or "none: set `fetch_from`"
        raise ValueError(f"this exporter does not fetch {url.split('?', 1)[0]} (allowed: {allowed})")

    @contextlib.asynccontextmanager
    async def _source(self, handle: Any) -> AsyncIterator[tuple[Any, str | None]]:
        """The raw stream of a handle and its encoding: we decode, with bounded memory."""
        spec = dict(parse_handle(handle))
        encoding = compression.check(spec.pop("x_jmp_content_encoding", None))
        async with self.resource(spec) as stream:  # type: ignore[attr-defined]
            yield stream, encoding

    async def _flash_path(self, path: str, source: Any, target: str, options: FlashOptions) -> FlashResult:
        self.flash_state, self.flash_detail = "flashing", f"writing {path}"
        touched = False
        try:
            async with self._source(source) as (stream, encoding):
                touched = True
                written, seconds = await flash_file(
                    path, stream, options, encoding or options.encoding, self.max_bytes
                )
        except BaseException as exc:
            cancelled = isinstance(exc, asyncio.CancelledError)
            reason = "cancelled (client gone or interrupted)" if cancelled else str(exc)
            if touched:
                self.flash_state, self.flash_detail = (
                    "incomplete",
                    f"{path}: {reason}; its first MiB is zeroed",
                )
            else:  # the source could not be opened: the card was not touched
                self.flash_state, self.flash_detail = "failed", f"{path} untouched: {reason}"
            self.log.warning("flash failed", path=path, state=self.flash_state, reason=reason)
            raise
        self.flash_state = "complete"
        self.flash_detail = f"{written.bytes} bytes, {'verified' if written.verified else 'not verified'}"
        self.log.info(
            "flashed", path=path, bytes=written.bytes, written=written.written, seconds=round(seconds, 3)
        )
        return FlashResult(written.bytes, seconds, target, written.written, written.verified)

    async def _dump_path(self, path: str, destination: Any, target: str) -> DumpResult:
        fd = await asyncio.to_thread(os.open, path, os.O_RDONLY | os.O_CLOEXEC)
        sent = 0
        try:
            async with self.resource(destination) as stream:  # type: ignore[attr-defined]
                while data := await asyncio.to_thread(os.read, fd, READ_BLOCK):
                    await stream.send(data)
                    sent += len(data)
                await stream.send_eof()
        finally:
            os.close(fd)
        return DumpResult(sent, target)


def _url_prefix(prefix: str) -> tuple[str, str, str]:
    """`https://host[:port]/path/` as (scheme, netloc, path); the path ends with / so hosts match whole."""
    parts = urllib.parse.urlsplit(str(prefix))
    if parts.scheme not in ("http", "https") or not parts.netloc or not parts.path.endswith("/"):
        raise ValueError(f"fetch_from: {prefix!r} must look like https://host[:port]/path/ (ending in /)")
    if parts.query or parts.fragment or "@" in parts.netloc:
        raise ValueError(f"fetch_from: {prefix!r} must not carry credentials, a query or a fragment")
    return parts.scheme, parts.netloc.lower(), parts.path


class FileFlasher(FlasherInterface, Flashing, Driver):
    """Flash into a file or block device on the lab host (a card reader, a disk image, a loop device).

    Config: `path` (default target), `targets` (name -> path, for `flash(..., target)`),
    `max_bytes` (largest image a growable file target takes; a block device's limit is its size),
    `fetch_from` (URL prefixes clients may have the exporter download images from; default none).
    """

    def __init__(
        self,
        *,
        path: str,
        targets: dict[str, str] | None = None,
        sync: bool = True,
        max_bytes: int = MAX_BYTES,
        fetch_from: list[str] | None = None,
        **base: Any,
    ) -> None:
        super().__init__(**base)
        self.path = str(path)
        self.targets = {str(k): str(v) for k, v in (targets or {}).items()}
        self._init_state(max_bytes, fetch_from)  # `sync` is accepted for old configs: flashing always syncs

    def _path(self, target: str | None) -> str:
        if target in (None, "", "default"):
            return self.path
        if target not in self.targets:
            raise ValueError(f"unknown target {target!r} (targets: {', '.join(['default', *self.targets])})")
        return self.targets[target]  # type: ignore[index]

    @export
    async def flash(
        self, source: Any, target: str | None = None, options: dict[str, Any] | None = None
    ) -> FlashResult:
        """Write the image from `source` (a resource handle) to the target; returns bytes written."""
        path = self._path(target)
        return await self._flash_path(path, source, target or "default", FlashOptions.from_value(options))

    @export
    async def dump(self, destination: Any, target: str | None = None) -> DumpResult:
        """Read the target and send it to `destination` (a resource handle)."""
        return await self._dump_path(self._path(target), destination, target or "default")

    @export
    async def status(self) -> StorageStatus:
        """How the last flash ended (`incomplete`: the target holds a partial image)."""
        return StorageStatus("none", self.flash_state, self.flash_detail)
