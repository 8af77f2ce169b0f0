"""Video client: `board.video.snapshot()`, `frames(count)`, and `jumpstarter video snapshot out.jpg`."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Iterator

from jumpstarter.client.base import DriverClient
from jumpstarter.errors import DriverUnavailable
from jumpstarter.interfaces.video import VideoInterface
from jumpstarter.mjpeg import BOUNDARY, HARD_MAX_FRAME, BadFrame, JpegInfo, MultipartParser, jpeg_info

__all__ = ["JpegInfo", "VideoClient"]


class VideoClient(DriverClient):
    """A camera on the board: snapshots and a stream of JPEG frames."""

    interface = VideoInterface

    def snapshot(self) -> bytes:
        """One frame as JPEG bytes (checked: a complete JPEG)."""
        from jumpstarter.values import b64decode

        frame = b64decode(self.call("snapshot"))
        try:
            jpeg_info(frame)
        except BadFrame as exc:
            raise DriverUnavailable(
                f"{self.path}: the exporter sent a snapshot that is not a JPEG: {exc}"
            ) from None
        return frame

    def save_snapshot(self, path: str) -> JpegInfo:
        """Take a snapshot and write it to `path` (atomically); returns its dimensions."""
        from jumpstarter.files import write_atomic

        frame = self.snapshot()
        write_atomic(path, frame, 0o644)
        return jpeg_info(frame)

    def frames(self, count: int | None = None) -> Iterator[bytes]:
        """JPEG frames from the stream: `count` of them (an error if the stream ends sooner), or until closed."""
        if count is not None and count < 1:
            raise ValueError(f"count: expected at least 1 frame, got {count}")
        received = 0
        with self.stream("stream") as stream:
            parser = MultipartParser(BOUNDARY, HARD_MAX_FRAME)
            while count is None or received < count:
                data = stream.receive()
                if not data:
                    if count is not None:
                        raise DriverUnavailable(
                            f"{self.path}: the video stream ended after {received} frames"
                        )
                    return
                try:
                    frames = parser.feed(data)
                except BadFrame as exc:
                    raise DriverUnavailable(f"{self.path}: bad video stream: {exc}") from None
                for frame in frames[: None if count is None else count - received]:
                    received += 1
                    yield frame

    def add_cli(self, parser: argparse.ArgumentParser) -> None:
        sub = parser.add_subparsers(title="commands", metavar="COMMAND")
        snapshot = sub.add_parser(
            "snapshot", help=self.method_help("snapshot", "save one frame as a JPEG file")
        )
        snapshot.add_argument("output", metavar="OUT.jpg", help="file to write ('-' for stdout)")
        snapshot.set_defaults(func=lambda a: run_snapshot(self, a))
        stream = sub.add_parser("stream", help="save frames of the stream as DIR/frame-0001.jpg ...")
        stream.add_argument("directory", metavar="DIR", help="directory for the frames (created if missing)")
        stream.add_argument(
            "-n", "--frames", type=positive, default=10, metavar="N", help="number of frames (default 10)"
        )
        stream.set_defaults(func=lambda a: run_stream(self, a))


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value


def run_snapshot(client: VideoClient, args: argparse.Namespace) -> int:
    if args.output == "-":
        sys.stdout.buffer.write(client.snapshot())
        sys.stdout.buffer.flush()
        return 0
    info = client.save_snapshot(args.output)
    print(f"{args.output}: {info.width}x{info.height} JPEG, {info.size} bytes", file=sys.stderr)
    return 0


def run_stream(client: VideoClient, args: argparse.Namespace) -> int:
    from jumpstarter.files import make_dirs, write_atomic

    make_dirs(args.directory, 0o755)
    saved = 0
    for saved, frame in enumerate(client.frames(args.frames), start=1):
        write_atomic(os.path.join(args.directory, f"frame-{saved:04d}.jpg"), frame, 0o644)
    print(f"{args.directory}: {saved} frames", file=sys.stderr)
    return 0


def failure_snapshots(
    root: DriverClient, directory: str, test_id: str
) -> Iterator[tuple[str, str, bytes | None]]:
    """For a failed test: (title, text, JPEG or None) per video driver of the board, each saved in `directory`.

    A camera that fails gives its error as the text: the test's own failure stays the report's subject.
    """
    from jumpstarter.files import write_atomic

    if not isinstance(root, DriverClient):  # a test's own fixture that happens to be called `board`
        return
    for client in root.walk():
        if not isinstance(client, VideoClient):
            continue
        title = f"jumpstarter snapshot {client.path or 'video'}"
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{test_id}-{client.path or 'video'}")[-150:] + ".jpg"
        path = os.path.abspath(os.path.join(directory, name))
        try:
            frame = client.snapshot()
            write_atomic(path, frame, 0o644)
        except Exception as exc:
            yield title, f"no snapshot: {exc}", None
            continue
        info = jpeg_info(frame)
        yield title, f"{path} ({info.width}x{info.height} JPEG, {info.size} bytes)", frame
