"""Video drivers: a camera behind an HTTP server (ustreamer, mjpg-streamer), a V4L2 device, a still image.

Every frame is parsed and bounded before it leaves the exporter (`jumpstarter.mjpeg`): a camera
that sends garbage, oversized frames or nothing at all ends the call with a clear error within
`timeout` seconds. The exported stream is multipart/x-mixed-replace, one JPEG per part.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import urlsplit

from jumpstarter.driver import Driver, export, exportstream
from jumpstarter.interfaces.video import VideoInterface
from jumpstarter.mjpeg import (
    DEFAULT_MAX_FRAME,
    BadFrame,
    JpegSplitter,
    MultipartParser,
    boundary_of,
    check_limit,
    jpeg_info,
    part,
)

READ_CHUNK = 256 * 1024
MAX_RESPONSE_HEAD = 16 * 1024
MAX_URL = 2048
# A 16x8 test card (red, white top row): what StillVideo shows when given no picture.
PLACEHOLDER = base64.b64decode(
    "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDABQODxIPDRQSEBIXFRQYHjIhHhwcHj0sLiQySUBMS0dARkVQWnNiUFVtVkVGZIhl"
    "bXd7gYKBTmCNl4x9lnN+gXz/2wBDARUXFx4aHjshITt8U0ZTfHx8fHx8fHx8fHx8fHx8fHx8fHx8fHx8fHx8fHx8fHx8fHx8"
    "fHx8fHx8fHx8fHx8fHz/wAARCAAIABADASIAAhEBAxEB/8QAHwAAAQUBAQEBAQEAAAAAAAAAAAECAwQFBgcICQoL/8QAtRAA"
    "AgEDAwIEAwUFBAQAAAF9AQIDAAQRBRIhMUEGE1FhByJxFDKBkaEII0KxwRVS0fAkM2JyggkKFhcYGRolJicoKSo0NTY3ODk6"
    "Q0RFRkdISUpTVFVWV1hZWmNkZWZnaGlqc3R1dnd4eXqDhIWGh4iJipKTlJWWl5iZmqKjpKWmp6ipqrKztLW2t7i5usLDxMXG"
    "x8jJytLT1NXW19jZ2uHi4+Tl5ufo6erx8vP09fb3+Pn6/8QAHwEAAwEBAQEBAQEBAQAAAAAAAAECAwQFBgcICQoL/8QAtREA"
    "AgECBAQDBAcFBAQAAQJ3AAECAxEEBSExBhJBUQdhcRMiMoEIFEKRobHBCSMzUvAVYnLRChYkNOEl8RcYGRomJygpKjU2Nzg5"
    "OkNERUZHSElKU1RVVldYWVpjZGVmZ2hpanN0dXZ3eHl6goOEhYaHiImKkpOUlZaXmJmaoqOkpaanqKmqsrO0tba3uLm6wsPE"
    "xcbHyMnK0tPU1dbX2Nna4uPk5ebn6Onq8vP09fb3+Pn6/9oADAMBAAIRAxEAPwCv/aF5/wA/c/8A38P+NH9oXn/P3P8A9/D/"
    "AI0UVyXZ9FyR7H//2Q=="
)


class _Parser(Protocol):
    @property
    def pending(self) -> Any: ...

    def feed(self, data: bytes) -> list[bytes]: ...


def _seconds(value: Any, what: str, at_most: float = 300.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= at_most:
        raise ValueError(
            f"{what}: expected a number of seconds above 0 and at most {at_most:g}, got {value!r}"
        )
    return float(value)


async def _frames(
    read: Callable[[], Awaitable[bytes]], parser: _Parser, timeout: float, source: str
) -> AsyncIterator[bytes]:
    """Frames parsed from `read()` chunks; each frame must complete within `timeout` seconds."""
    while True:
        frames: list[bytes] = []
        try:
            async with asyncio.timeout(timeout):
                while not frames:
                    data = await read()
                    if not data:
                        if parser.pending:
                            raise ConnectionError(f"{source} ended the stream in the middle of a frame")
                        return
                    frames = parser.feed(data)
        except TimeoutError:
            raise TimeoutError(f"{source} sent no complete frame within {timeout:g}s") from None
        except BadFrame as exc:
            raise ConnectionError(f"{source}: {exc}") from None
        for frame in frames:
            yield frame


class _FrameStream:
    """The exported byte stream: one multipart part per frame; what the client sends is ignored."""

    def __init__(self, first: bytes, frames: AsyncIterator[bytes]) -> None:
        self._next: bytes | None = first
        self._frames = frames
        self._ended = False

    async def receive(self) -> bytes:
        if self._ended:
            return b""
        if self._next is None:
            try:
                self._next = await anext(self._frames)
            except StopAsyncIteration:
                self._ended = True
                return b""
        frame, self._next = self._next, None
        return part(frame)

    async def send(self, data: bytes) -> None:
        return None

    async def send_eof(self) -> None:
        return None

    async def aclose(self) -> None:
        self._ended = True


class _FrameSource:
    """What the video drivers share: `stream` opens the frames and sends the first one first.

    Listed before the interface (`class X(_FrameSource, VideoInterface, Driver)`) so that its
    `stream` implements the interface's.
    """

    def _frame_iterator(self) -> AsyncIterator[bytes]:
        raise NotImplementedError

    def _source(self) -> str:
        return type(self).__name__

    async def _open(self) -> tuple[bytes, AsyncIterator[bytes]]:
        frames = self._frame_iterator()
        try:
            first = await anext(frames)  # errors (unreachable, not MJPEG, stalled) surface when opening
        except StopAsyncIteration:
            await frames.aclose()  # type: ignore[attr-defined]
            raise ConnectionError(f"{self._source()} ended the stream before the first frame") from None
        except BaseException:
            await frames.aclose()  # type: ignore[attr-defined]
            raise
        return first, frames

    async def _first_frame(self) -> bytes:
        first, frames = await self._open()
        await frames.aclose()  # type: ignore[attr-defined]
        return first

    @exportstream
    async def stream(self) -> AsyncIterator[_FrameStream]:
        """Frames as an MJPEG (multipart/x-mixed-replace) byte stream, until the client closes it."""
        first, frames = await self._open()
        try:
            yield _FrameStream(first, frames)
        finally:
            await frames.aclose()  # type: ignore[attr-defined]


class StillVideo(_FrameSource, VideoInterface, Driver):
    """A still picture as a camera: a placeholder for boards without one, and for tests and demos.

    Config: `path` (a JPEG file on the lab host; a 16x8 test card by default), `fps` (stream rate, default 1).
    """

    def __init__(self, *, path: str | None = None, fps: float = 1.0, **base: Any) -> None:
        super().__init__(**base)
        if path is None:
            self.picture = PLACEHOLDER
        else:
            try:
                with open(str(path), "rb") as handle:
                    self.picture = handle.read(DEFAULT_MAX_FRAME + 1)
            except OSError as exc:
                raise ValueError(f"path: cannot read {path}: {exc.strerror or exc}") from None
            try:
                jpeg_info(self.picture)
            except BadFrame as exc:
                raise ValueError(f"path: {path}: {exc}") from None
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps <= 60:
            raise ValueError(f"fps: expected frames per second above 0 and at most 60, got {fps!r}")
        self.interval = 1 / fps

    async def _still(self) -> AsyncIterator[bytes]:
        while True:
            yield self.picture
            await asyncio.sleep(self.interval)

    def _frame_iterator(self) -> AsyncIterator[bytes]:
        return self._still()

    @export
    async def snapshot(self) -> bytes:
        """The picture, as JPEG bytes."""
        return self.picture


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


class HttpVideo(_FrameSource, VideoInterface, Driver):
    """A camera behind an HTTP server such as ustreamer: `/snapshot` (image/jpeg), `/stream` (MJPEG).

    Config: `snapshot_url` and/or `stream_url` (http or https; a snapshot without `snapshot_url` is
    the stream's first frame), `timeout` (seconds for a snapshot, and between two frames; default 10),
    `max_frame` (bytes, default 2 MiB, at most 3 MiB), `username`/`password` (basic auth).

    >>> import threading
    >>> from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    >>> from jumpstarter.driver.serve import serve
    >>> from jumpstarter.drivers.video import PLACEHOLDER, HttpVideo
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
        self.timeout = _seconds(timeout, "timeout")
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
            async for frame in _frames(
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


class V4l2Video(_FrameSource, VideoInterface, Driver):
    """A V4L2 capture device (/dev/videoN) delivering MJPG, captured with `v4l2-ctl` (v4l-utils).

    Runs `v4l2-ctl --device=DEV --set-fmt-video=[width=W,height=H,]pixelformat=MJPG --stream-mmap
    [--stream-count=1] --stream-to=-` and splits the JPEGs it writes to stdout.
    Config: `device`, `width`/`height` (both or neither), `timeout`, `max_frame` (as video.http).
    """

    tool = "v4l2-ctl"

    def __init__(
        self,
        *,
        device: str,
        width: int | None = None,
        height: int | None = None,
        timeout: float = 10.0,
        max_frame: int = DEFAULT_MAX_FRAME,
        **base: Any,
    ) -> None:
        super().__init__(**base)
        if (
            not isinstance(device, str)
            or not re.fullmatch(r"/dev/[A-Za-z0-9_./:+-]{1,200}", device)
            or ".." in device
        ):
            raise ValueError(f"device: expected a device path under /dev/, got {device!r}")
        self.device = device
        if (width is None) != (height is None):
            raise ValueError("width and height: give both or neither")
        for key, value in (("width", width), ("height", height)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 8192
            ):
                raise ValueError(f"{key}: expected a whole number of pixels from 1 to 8192, got {value!r}")
        self.size = None if width is None else (width, height)
        self.timeout = _seconds(timeout, "timeout")
        self.max_frame = check_limit(max_frame)

    def argv(self, count: int | None) -> list[str]:
        """The capture command line (documented options of v4l2-ctl's --help-streaming)."""
        size = f"width={self.size[0]},height={self.size[1]}," if self.size else ""
        argv = [
            self.tool,
            f"--device={self.device}",
            f"--set-fmt-video={size}pixelformat=MJPG",
            "--stream-mmap",
        ]
        if count is not None:
            argv.append(f"--stream-count={count}")
        return [*argv, "--stream-to=-"]

    def _source(self) -> str:
        return f"{self.tool} on {self.device}"

    async def _capture(self, count: int | None) -> AsyncIterator[bytes]:
        try:
            process = await asyncio.create_subprocess_exec(
                *self.argv(count),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except FileNotFoundError:
            raise ConnectionError(
                f"{self.tool} is not installed on the lab host (apt-get install v4l-utils)"
            ) from None
        assert process.stdout is not None and process.stderr is not None
        errors = asyncio.ensure_future(_tail(process.stderr))
        sent = 0
        try:
            async for frame in _frames(
                lambda: process.stdout.read(READ_CHUNK),  # type: ignore[union-attr]
                JpegSplitter(self.max_frame),
                self.timeout,
                self._source(),
            ):
                sent += 1
                yield frame
            code = await process.wait()
            if code != 0 or sent == 0:
                tail: list[str] = []
                with contextlib.suppress(Exception):
                    tail = (
                        (await asyncio.wait_for(errors, 5))
                        .decode("utf-8", "replace")
                        .strip()
                        .splitlines()[-3:]
                    )
                raise ConnectionError(
                    f"{self._source()} exited with {code}: {' / '.join(tail) or 'no message'}"
                )
        finally:
            errors.cancel()
            await _end(process)

    def _frame_iterator(self) -> AsyncIterator[bytes]:
        return self._capture(None)

    @export
    async def snapshot(self) -> bytes:
        """One frame as JPEG bytes."""
        frames = self._capture(1)
        try:
            return await anext(frames)
        except StopAsyncIteration:
            raise ConnectionError(f"{self._source()} captured no frame") from None
        finally:
            await frames.aclose()  # type: ignore[attr-defined]


async def _tail(stream: asyncio.StreamReader, keep: int = 4096) -> bytes:
    """Drain a pipe (a full pipe would stall the tool), keeping its last `keep` bytes for errors."""
    tail = b""
    while chunk := await stream.read(READ_CHUNK):
        tail = (tail + chunk)[-keep:]
    return tail


async def _end(process: asyncio.subprocess.Process) -> None:
    """Stop the capture tool (its whole session: it may have started helpers) and reap it."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 15)
        try:
            await asyncio.wait_for(process.wait(), 5)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, 9)
            await process.wait()
