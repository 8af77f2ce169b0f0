"""video.http: a camera behind an HTTP server such as ustreamer (`/snapshot`, `/stream`)."""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

from jumpstarter.driver import Driver, export
from jumpstarter.drivers.video import READ_CHUNK, FrameSource, parsed_frames, seconds
from jumpstarter.interfaces.video import VideoInterface
from jumpstarter.mjpeg import (
    DEFAULT_MAX_FRAME,
    BadFrame,
    MultipartParser,
    boundary_of,
    check_limit,
    jpeg_info,
)

MAX_RESPONSE_HEAD = 16 * 1024
MAX_URL = 2048


def _url(value: Any, what: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_URL or not re.fullmatch(r"[\x21-\x7e]+", value):
        raise ValueError(f"{what}: expected an http(s) URL of printable characters without spaces")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{what}: expected an http:// or https:// URL with a host, got {value[:80]!r}")
    if "@" in parts.netloc:
        raise ValueError(f"{what}: put credentials in username/password, not in the URL")
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise ValueError(f"{what}: bad port in {value[:80]!r}") from None
    return value


class HttpVideo(FrameSource, VideoInterface, Driver):
    """A camera behind an HTTP server such as ustreamer: `/snapshot` (image/jpeg), `/stream` (MJPEG).

    Config: `snapshot_url` and/or `stream_url` (http or https; a snapshot without `snapshot_url` is
    the stream's first frame), `timeout` (seconds for a snapshot, and between two frames; default 10),
    `max_frame` (bytes, default 2 MiB, at most 3 MiB), `username`/`password` (basic auth).

    >>> import threading
    >>> from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    >>> from jumpstarter.driver.serve import serve
    >>> from jumpstarter.drivers.video import PLACEHOLDER
    >>> from jumpstarter.drivers.video_http import HttpVideo
    >>> class Camera(BaseHTTPRequestHandler):
    ...     def do_GET(self):
    ...         self.send_response(200)
    ...         self.send_header("Content-Type", "image/jpeg")
    ...         self.send_header("Content-Length", str(len(PLACEHOLDER)))
    ...         self.end_headers()
    ...         self.wfile.write(PLACEHOLDER)
    ...     def log_message(self, *args): pass
    >>> camera = ThreadingHTTPServer(("127.0.0.1", 0), Camera)
    >>> threading.Thread(target=camera.serve_forever, daemon=True).start()
    >>> url = f"http://127.0.0.1:{camera.server_port}/snapshot"
    >>> with serve(HttpVideo(snapshot_url=url, timeout=30)) as video:
    ...     video.snapshot() == PLACEHOLDER
    True
    >>> camera.shutdown(); camera.server_close()
    """

    def __init__(
        self,
        *,
        snapshot_url: str | None = None,
        stream_url: str | None = None,
        timeout: float = 10.0,
        max_frame: int = DEFAULT_MAX_FRAME,
        username: str | None = None,
        password: str | None = None,
        **base: Any,
    ) -> None:
        super().__init__(**base)
        if snapshot_url is None and stream_url is None:
            raise ValueError("needs snapshot_url or stream_url (or both)")
        self.snapshot_url = None if snapshot_url is None else _url(snapshot_url, "snapshot_url")
        self.stream_url = None if stream_url is None else _url(stream_url, "stream_url")
        self.timeout = seconds(timeout, "timeout")
        self.max_frame = check_limit(max_frame)
        self.authorization: str | None = None
        if username is not None:
            if (
                not isinstance(username, str)
                or ":" in username
                or not isinstance(password, (str, type(None)))
            ):
                raise ValueError("username: expected text without ':' (and password text)")
            token = base64.b64encode(f"{username}:{password or ''}".encode()).decode()
            self.authorization = f"Basic {token}"

    @staticmethod
    def _shown(url: str) -> str:
        return url.split("?", 1)[0]  # query strings may carry tokens: never echoed

    async def _get(self, url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, dict[str, str]]:
        """Send GET (HTTP/1.0: never a chunked answer) and read the status and headers."""
        parts = urlsplit(url)
        https = parts.scheme == "https"
        port = parts.port or (443 if https else 80)
        try:
            reader, writer = await asyncio.open_connection(
                parts.hostname,
                port,
                ssl=ssl.create_default_context() if https else None,
                limit=MAX_RESPONSE_HEAD,
            )
        except OSError as exc:
            raise ConnectionError(
                f"camera unreachable at {self._shown(url)}: {exc.strerror or exc}"
            ) from None
        try:
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            lines = [
                f"GET {target} HTTP/1.0",
                f"Host: {parts.netloc}",
                "User-Agent: jumpstarter",
                "Accept: */*",
            ]
            if self.authorization:
                lines.append(f"Authorization: {self.authorization}")
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("ascii"))
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.LimitOverrunError:
                raise ConnectionError(
                    f"{self._shown(url)} answered with headers over {MAX_RESPONSE_HEAD} bytes"
                ) from None
            except asyncio.IncompleteReadError:
                raise ConnectionError(f"{self._shown(url)} closed the connection without an answer") from None
            status, *header_lines = head.decode("latin-1").split("\r\n")
            fields = status.split(" ", 2)
            if len(fields) < 2 or not fields[0].startswith("HTTP/") or not fields[1].isdigit():
                raise ConnectionError(f"{self._shown(url)} did not answer HTTP: {status[:60]!r}")
            if fields[1] != "200":
                raise ConnectionError(f"camera answered HTTP {fields[1]} to GET {self._shown(url)}")
            headers: dict[str, str] = {}
            for line in header_lines:
                name, _, value = line.partition(":")
                if name:
                    headers[name.strip().lower()] = value.strip()
            if "chunked" in headers.get("transfer-encoding", "").lower():
                raise ConnectionError(f"{self._shown(url)} sent a chunked answer to an HTTP/1.0 request")
            return reader, writer, headers
        except BaseException:
            writer.close()
            raise

    async def _http_snapshot(self, url: str) -> bytes:
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer, headers = await self._get(url)
                try:
                    kind = headers.get("content-type", "image/jpeg").split(";")[0].strip().lower()
                    if kind not in ("image/jpeg", "image/jpg"):
                        raise ConnectionError(f"{self._shown(url)} answered {kind[:40]!r}, not image/jpeg")
                    length = headers.get("content-length")
                    if length is not None:
                        if not length.isdigit() or int(length) > self.max_frame:
                            raise ConnectionError(
                                f"{self._shown(url)}: snapshot of {length[:20]} bytes refused "
                                f"(limit {self.max_frame} bytes, see max_frame)"
                            )
                        body = await reader.readexactly(int(length))
                    else:
                        body = await reader.read(self.max_frame + 1)
                        while chunk := await reader.read(self.max_frame + 1 - len(body)):
                            body += chunk
                        if len(body) > self.max_frame:
                            raise ConnectionError(
                                f"{self._shown(url)}: snapshot larger than {self.max_frame} bytes refused"
                            )
                finally:
                    writer.close()
        except TimeoutError:
            raise TimeoutError(
                f"camera at {self._shown(url)} sent no snapshot within {self.timeout:g}s"
            ) from None
        except asyncio.IncompleteReadError:
            raise ConnectionError(
                f"{self._shown(url)} closed the connection in the middle of the snapshot"
            ) from None
        try:
            jpeg_info(body)
        except BadFrame as exc:
            raise ConnectionError(f"{self._shown(url)}: {exc}") from None
        return body

    async def _http_stream(self, url: str) -> AsyncIterator[bytes]:
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer, headers = await self._get(url)
        except TimeoutError:
            raise TimeoutError(
                f"camera at {self._shown(url)} did not answer within {self.timeout:g}s"
            ) from None
        try:
            try:
                parser = MultipartParser(boundary_of(headers.get("content-type", "")), self.max_frame)
            except BadFrame as exc:
                raise ConnectionError(f"{self._shown(url)}: {exc}") from None
            async for frame in parsed_frames(
                lambda: reader.read(READ_CHUNK), parser, self.timeout, self._shown(url)
            ):
                yield frame
        finally:
            writer.close()

    def _source(self) -> str:
        return self._shown(self.stream_url or "")

    def _frame_iterator(self) -> AsyncIterator[bytes]:
        if self.stream_url is None:
            raise NotImplementedError("this camera has no stream_url configured (only snapshots)")
        return self._http_stream(self.stream_url)

    @export
    async def snapshot(self) -> bytes:
        """One frame as JPEG bytes (from snapshot_url, else the stream's next frame)."""
        if self.snapshot_url is not None:
            return await self._http_snapshot(self.snapshot_url)
        return await self._first_frame()
