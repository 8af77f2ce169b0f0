"""Storage clients: `board.storage.flash("image.raw.xz", bmap="image.bmap")`, `dump("backup.img")`;
an SD-card mux adds `host()`, `dut()`, `off()` and `status()`."""

from __future__ import annotations

import argparse
import os
import select
import stat
import sys
import threading
import time
from collections.abc import Iterator
from typing import IO, Any

from jumpstarter import compression
from jumpstarter.client.base import DriverClient
from jumpstarter.interfaces.storage import FlasherInterface, FlashResult, StorageMuxInterface, StorageStatus

CHUNK = 1024 * 1024
MAX_BMAP = 16 * 1024 * 1024


class Progress:
    """A one-line progress report on stderr: bytes, rate, ETA (only on a terminal unless forced)."""

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

    def line(self, now: float) -> str:
        rate = self.done / max(now - self.started, 1e-6)
        text = f"{self.what}: {self.done / 1e6:,.1f} MB"
        if self.total:
            left = max(self.total - self.done, 0) / rate if rate > 0 else 0.0
            text += f" of {self.total / 1e6:,.1f} MB ({100 * self.done / self.total:.0f}%)"
            text += f" at {rate / 1e6:,.1f} MB/s, ETA {int(left) // 60}:{int(left) % 60:02d}"
        else:
            text += f" at {rate / 1e6:,.1f} MB/s"
        return text

    def _show(self, now: float) -> None:
        sys.stderr.write(f"\r{self.line(now)}\x1b[K")
        sys.stderr.flush()

    def finish(self, note: str = "") -> None:
        if self.enabled:
            self._show(time.monotonic())
            sys.stderr.write(f"{note}\n")
            sys.stderr.flush()


def _chunks(handle: IO[bytes], progress: Progress, stop: threading.Event) -> Iterator[bytes]:
    """The file's bytes; a pipe or FIFO is polled, so that a Ctrl-C never waits for its writer."""
    regular = stat.S_ISREG(os.fstat(handle.fileno()).st_mode)
    while not stop.is_set():
        if not regular and not select.select([handle], [], [], 0.2)[0]:
            continue
        data = handle.read(CHUNK) if regular else os.read(handle.fileno(), CHUNK)
        if not data:
            return
        progress.update(len(data))
        yield data


def _read_bmap(path: str) -> str:
    with open(path, "rb") as handle:
        data = handle.read(MAX_BMAP + 1)
    if len(data) > MAX_BMAP:
        raise ValueError(f"{path}: larger than {MAX_BMAP} bytes: not a .bmap file")
    return data.decode()


class FlasherClient(DriverClient):
    """Flash images to the board's storage and dump them back."""

    interface = FlasherInterface

    def flash(
        self,
        path: str,
        target: str | None = None,
        compression_name: str | None = "auto",
        progress: bool | None = None,
        verify: bool = True,
        bmap: str | None = None,
    ) -> FlashResult:
        """Write a local image (or an http(s) URL the exporter downloads itself) to the target.

        Compressed images (.gz .xz .bz2 .zst) travel compressed and are unpacked by the exporter;
        with `bmap` (a bmaptools .bmap file) only its mapped ranges are written and verified;
        the exporter reads everything back and compares sha256 unless `verify=False`.
        """
        options: dict[str, Any] = {"verify": bool(verify)}
        if bmap is not None:
            options["bmap"] = _read_bmap(bmap)
        encoding = (
            compression.guess(path) if compression_name == "auto" else compression.check(compression_name)
        )
        if path.startswith(("http://", "https://")):
            options["encoding"] = encoding
            request = {"kind": "presigned_request", "url": path, "method": "GET", "headers": {}}
            return FlashResult.from_value(self.call("flash", request, target, options))
        size = os.path.getsize(path) if stat.S_ISREG(os.stat(path).st_mode) else None
        if size is not None:
            options["size"] = size  # the exporter then tells a dropped client from the end of the image
        meter = Progress(f"flashing {os.path.basename(path)}", size, progress)
        stop = threading.Event()
        with open(path, "rb") as handle, self.upload(_chunks(handle, meter, stop), encoding) as resource:
            try:
                result = self.call("flash", resource, target, options)
            except BaseException as exc:
                stop.set()
                meter.finish(" - failed")
                if isinstance(exc, KeyboardInterrupt):  # the exporter sees the call cancelled
                    print("flash interrupted: the card holds an incomplete image", file=sys.stderr)
                raise
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

    def status(self) -> StorageStatus:
        """How the last flash ended (and, on a mux, where the card is)."""
        return StorageStatus.from_value(self.call("status"))

    def add_cli(self, parser: argparse.ArgumentParser) -> None:
        sub = parser.add_subparsers(title="commands", metavar="COMMAND")
        self._add_storage_cli(sub)

    def _add_storage_cli(self, sub: Any) -> None:
        flash = sub.add_parser("flash", help="write an image to the board's storage")
        flash.add_argument(
            "image", help="local image file (.gz/.xz/.bz2/.zst are unpacked on the exporter) or http(s) URL"
        )
        flash.add_argument("-t", "--target", help="storage target name (default: the default target)")
        flash.add_argument("--compression", choices=["auto", "none", *compression.ENCODINGS], default="auto")
        flash.add_argument(
            "--bmap", metavar="FILE", help="a bmaptools .bmap: write and verify only mapped ranges"
        )
        flash.add_argument("--no-verify", action="store_true", help="skip reading the image back")
        flash.add_argument(
            "--progress",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="show progress (default: when stderr is a terminal)",
        )

        def run_flash(a: argparse.Namespace) -> None:
            name = None if a.compression == "none" else a.compression
            result = self.flash(a.image, a.target, name, a.progress, not a.no_verify, a.bmap)
            rate = f" ({result.bytes / result.seconds / 1e6:,.1f} MB/s)" if result.seconds else ""
            checked = "verified" if result.verified else "NOT verified"
            print(f"flashed {result.bytes:,} bytes to {result.target}, {checked}{rate}")

        flash.set_defaults(func=run_flash)
        dump = sub.add_parser("dump", help="read the board's storage into a local file")
        dump.add_argument("output", help="local file to write")
        dump.add_argument("-t", "--target", help="storage target name")
        dump.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
        dump.set_defaults(func=lambda a: print(f"dumped {self.dump(a.output, a.target, a.progress):,} bytes"))
        status = sub.add_parser("status", help="how the last flash ended (and where a mux's card is)")
        status.set_defaults(func=lambda a: _print_status(self.status()))


def _print_status(status: StorageStatus) -> int:
    print(f"card: {status.mux}  last flash: {status.flash}  {status.detail}".rstrip())
    return 1 if status.flash == "incomplete" else 0


class StorageMuxClient(FlasherClient):
    """An SD-card mux: `host()`, `dut()`, `off()`, plus flash/dump that switch for you."""

    interface = StorageMuxInterface

    def host(self) -> None:
        """Connect the card to the lab host."""
        self.call("host")

    def dut(self) -> None:
        """Connect the card to the board."""
        self.call("dut")

    def off(self) -> None:
        """Disconnect the card from both."""
        self.call("off")

    def add_cli(self, parser: argparse.ArgumentParser) -> None:
        sub = parser.add_subparsers(title="commands", metavar="COMMAND")
        self._add_storage_cli(sub)
        for side, text in (("host", "the lab host"), ("dut", "the board"), ("off", "neither")):
            command = sub.add_parser(side, help=f"connect the card to {text}")
            command.set_defaults(func=lambda a, switch=getattr(self, side): switch())
