"""video.v4l2: a V4L2 capture device delivering MJPG, captured with `v4l2-ctl` (v4l-utils)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import AsyncIterator
from typing import Any

from jumpstarter.driver import Driver, export
from jumpstarter.drivers.video import READ_CHUNK, FrameSource, parsed_frames, seconds
from jumpstarter.interfaces.video import VideoInterface
from jumpstarter.mjpeg import DEFAULT_MAX_FRAME, JpegSplitter, check_limit


class V4l2Video(FrameSource, VideoInterface, Driver):
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
        self.timeout = seconds(timeout, "timeout")
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
            async for frame in parsed_frames(
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
