"""Flasher client: `board.storage.flash("image.raw.xz")`, `dump("backup.img")`, with progress."""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import IO

from jumpstarter import compression
from jumpstarter.client.base import DriverClient
from jumpstarter.interfaces.storage import FlasherInterface, FlashResult

CHUNK = 1024 * 1024


class Progress:
    """A one-line progress report on stderr (only on a terminal unless forced)."""

    def __init__(self, what: str, total: int | None, enabled: bool | None = None) -> None:
        self.what = what
        self.total = total
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.done = 0
        self.started = time.monotonic()
        self.last = 0.0

    def update(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if self.enabled and now - self.last >= 0.25:
            self.last = now
            self._show(now)

    def _show(self, now: float) -> None:
        rate = self.done / max(now - self.started, 1e-6) / 1e6
        percent = f" {100 * self.done / self.total:5.1f}%" if self.total else ""
        sys.stderr.write(f"\r{self.what}:{percent} {self.done / 1e6:,.1f} MB at {rate:,.1f} MB/s ")
        sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled:
            self._show(time.monotonic())
            sys.stderr.write("\n")


def _chunks(handle: IO[bytes], progress: Progress) -> Iterator[bytes]:
    while data := handle.read(CHUNK):
        progress.update(len(data))
        yield data


class FlasherClient(DriverClient):
    """Flash images to the board's storage and dump them back."""

    interface = FlasherInterface

    def flash(
        self,
        path: str,
        target: str | None = None,
        compression_name: str | None = "auto",
        progress: bool | None = None,
    ) -> FlashResult:
        """Write a local image (or an http(s) URL the exporter downloads itself) to the target.

        Compressed images (.gz .xz .bz2 .zst) travel compressed and are unpacked by the exporter.
        """
        if path.startswith(("http://", "https://")):
            request = {"kind": "presigned_request", "url": path, "method": "GET", "headers": {}}
            return FlashResult.from_value(self.call("flash", request, target))
        encoding = (
            compression.guess(path) if compression_name == "auto" else compression.check(compression_name)
        )
        size = os.path.getsize(path)
        meter = Progress(f"flashing {os.path.basename(path)}", size, progress)
        with open(path, "rb") as handle, self.upload(_chunks(handle, meter), encoding) as resource:
            result = self.call("flash", resource, target)
        meter.finish()
        return FlashResult.from_value(result)

    def dump(self, path: str, target: str | None = None, progress: bool | None = None) -> int:
        """Read the target into a local file; returns the bytes received."""
        meter = Progress(f"dumping to {os.path.basename(path)}", None, progress)
        failure: list[BaseException] = []
        with self.link.sync.download(self.uuid) as (resource, stream):

            def run() -> None:
                try:
                    self.call("dump", resource, target)
                except BaseException as exc:
                    failure.append(exc)
                    stream.close()

            caller = threading.Thread(target=run, daemon=True)
            caller.start()
            with open(path, "wb") as out:
                for data in stream:
                    out.write(data)
                    meter.update(len(data))
            caller.join()
        meter.finish()
        if failure:
            raise failure[0]
        return meter.done

    def add_cli(self, parser: argparse.ArgumentParser) -> None:
        sub = parser.add_subparsers(title="commands", metavar="COMMAND")
        flash = sub.add_parser("flash", help="write an image to the board's storage")
        flash.add_argument(
            "image", help="local image file (.gz/.xz/.bz2/.zst are unpacked on the exporter) or URL"
        )
        flash.add_argument("-t", "--target", help="storage target name (default: the default target)")
        flash.add_argument("--compression", choices=["auto", "none", *compression.ENCODINGS], default="auto")
        flash.add_argument(
            "--progress",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="show progress (default: when stderr is a terminal)",
        )

        def run_flash(a: argparse.Namespace) -> None:
            name = None if a.compression == "none" else a.compression
            result = self.flash(a.image, a.target, name, a.progress)
            rate = f" ({result.bytes / result.seconds / 1e6:,.1f} MB/s)" if result.seconds else ""
            print(f"flashed {result.bytes:,} bytes to {result.target}{rate}")

        flash.set_defaults(func=run_flash)
        dump = sub.add_parser("dump", help="read the board's storage into a local file")
        dump.add_argument("output", help="local file to write")
        dump.add_argument("-t", "--target", help="storage target name")
        dump.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
        dump.set_defaults(func=lambda a: print(f"dumped {self.dump(a.output, a.target, a.progress):,} bytes"))
