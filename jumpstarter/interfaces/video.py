"""Video: what the board's screen shows, as JPEG snapshots and an MJPEG stream."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import AsyncIterator
from typing import Any

from jumpstarter.driver.decorators import export, exportstream
from jumpstarter.driver.interface import Interface


class VideoInterface(Interface):
    """A camera or capture device: `snapshot()` -> JPEG bytes, `stream` -> an MJPEG byte stream.

    The stream is `multipart/x-mixed-replace` (boundary `jumpstarterframe`), one JPEG per part:
    what ustreamer serves and browsers show. Serve a still image and take frames from it:

    >>> from jumpstarter.driver.serve import serve
    >>> from jumpstarter.drivers.video import StillVideo
    >>> from jumpstarter.mjpeg import jpeg_info
    >>> with serve(StillVideo(fps=50)) as video:
    ...     jpeg_info(video.snapshot())
    ...     [jpeg_info(frame).width for frame in video.frames(count=3)]
    JpegInfo(width=16, height=8, size=661)
    [16, 16, 16]
    """

    client = "jumpstarter.client.drivers.video.VideoClient"  # upstream has no video interface to match
    client_class = "jumpstarter.client.drivers.video:VideoClient"
    kind = "video"

    @export
    @abstractmethod
    async def snapshot(self) -> bytes:
        """One frame as JPEG bytes."""

    @exportstream
    @abstractmethod
    async def stream(self) -> AsyncIterator[Any]:
        """Frames as an MJPEG (multipart/x-mixed-replace) byte stream, until the client closes it."""
        yield  # pragma: no cover
