"""Video drivers: what they share (frames checked and bounded, the exported MJPEG stream) and a still picture.

Every frame is parsed and bounded before it leaves the exporter (`jumpstarter.mjpeg`): a camera
that sends garbage, oversized frames or nothing at all ends the call with a clear error within
`timeout` seconds. The exported stream is multipart/x-mixed-replace, one JPEG per part. The
cameras: `video_http` (ustreamer and other HTTP cameras), `video_v4l2` (a V4L2 device).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from jumpstarter.driver import Driver, export, exportstream
from jumpstarter.interfaces.video import VideoInterface
from jumpstarter.mjpeg import DEFAULT_MAX_FRAME, BadFrame, jpeg_info, part

READ_CHUNK = 256 * 1024
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


def seconds(value: Any, what: str, at_most: float = 300.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= at_most:
        raise ValueError(
            f"{what}: expected a number of seconds above 0 and at most {at_most:g}, got {value!r}"
        )
    return float(value)


async def parsed_frames(
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


class FrameSource:
    """What the video drivers share: `stream` opens the frames and sends the first one first.

    Listed before the interface (`class X(FrameSource, VideoInterface, Driver)`) so that its
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


class StillVideo(FrameSource, VideoInterface, Driver):
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
    def snapshot(self) -> bytes:  # never waits: answered in the gRPC worker thread
        """The picture, as JPEG bytes."""
        return self.picture
