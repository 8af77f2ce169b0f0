"""Storage: flash an image to the board's storage and dump it back, as resource streams."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jumpstarter.driver.decorators import export
from jumpstarter.driver.interface import Interface, wire_number


def _count(value: Any, what: str) -> int:
    count = wire_number(value, what)
    if count < 0 or not count.is_integer():
        raise ValueError(f"{what}: expected a byte count, got {value!r}")
    return int(count)


def _fields(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{what}: expected a mapping, got {value!r}")
    return value


class _ResultKeys:
    """`result["bytes"]` keeps working for callers of the dicts these results used to be."""

    def __getitem__(self, key: str) -> Any:
        return self.to_value()[key]  # type: ignore[attr-defined]

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_value().get(key, default)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class FlashResult(_ResultKeys):
    """What `flash` wrote; on the wire `{"bytes": int, "seconds": float, "target": str,
    "written": int, "verified": bool}` (`bytes`: the image's size; `written`: less with a bmap)."""

    bytes: int
    seconds: float
    target: str
    written: int | None = None
    verified: bool = False

    def to_value(self) -> dict[str, Any]:
        return {
            "bytes": self.bytes,
            "seconds": float(self.seconds),
            "target": self.target,
            "written": self.bytes if self.written is None else self.written,
            "verified": self.verified,
        }

    @classmethod
    def from_value(cls, value: Any) -> FlashResult:
        fields = _fields(value, "flash result")
        written = fields.get("written")
        return cls(
            _count(fields.get("bytes"), "flash result bytes"),
            wire_number(fields.get("seconds", 0.0), "flash result seconds"),
            str(fields.get("target") or "default"),
            None if written is None else _count(written, "flash result written"),
            fields.get("verified") is True,
        )


@dataclass(frozen=True)
class DumpResult(_ResultKeys):
    """What `dump` sent; on the wire `{"bytes": int, "target": str}`."""

    bytes: int
    target: str

    def to_value(self) -> dict[str, Any]:
        return {"bytes": self.bytes, "target": self.target}

    @classmethod
    def from_value(cls, value: Any) -> DumpResult:
        fields = _fields(value, "dump result")
        return cls(_count(fields.get("bytes"), "dump result bytes"), str(fields.get("target") or "default"))


class FlasherInterface(Interface):
    """Flash images to the board's storage: `flash(handle, target)`, `dump(handle, target)`.

    `handle` is a resource (PROTOCOL.md §5): the client streams the image, compressed or not.
    Serve a FileFlasher writing into a file and flash an image through it:

    >>> import os, tempfile
    >>> from jumpstarter.driver.serve import serve
    >>> from jumpstarter.drivers.storage import FileFlasher
    >>> folder = tempfile.mkdtemp()
    >>> image, disk = os.path.join(folder, "image.raw"), os.path.join(folder, "disk.img")
    >>> with open(image, "wb") as out:
    ...     out.write(b"boot" * 1024)
    4096
    >>> with serve(FileFlasher(path=disk)) as storage:
    ...     storage.flash(image, progress=False).bytes
    4096
    >>> open(disk, "rb").read() == open(image, "rb").read()
    True
    >>> import shutil; shutil.rmtree(folder)
    """

    client = "jumpstarter.client.flasher.FlasherClient"  # upstream's generic flasher client (core package)
    client_class = "jumpstarter.client.drivers.storage:FlasherClient"
    also_drives = (
        "jumpstarter_driver_opendal.client.FlasherClient",
        "jumpstarter.client.drivers.storage.FlasherClient",
    )
    kind = "storage"

    @export
    @abstractmethod
    async def flash(self, source: Any, target: str | None = None) -> FlashResult:
        """Write the image from `source` (a resource handle) to the target; returns bytes written.

        Our drivers take a third, optional `options` mapping (`size`, `verify`, `bmap`,
        `encoding`: see `jumpstarter.drivers.flashing.FlashOptions`); upstream clients send two.
        """

    @export
    @abstractmethod
    async def dump(self, destination: Any, target: str | None = None) -> DumpResult:
        """Read the target and send it to `destination` (a resource handle)."""


@dataclass(frozen=True)
class StorageStatus(_ResultKeys):
    """Where the card is and how the last flash ended; on the wire
    `{"mux": "host"|"dut"|"off"|"unknown"|"none", "flash": "idle"|"flashing"|"complete"|"incomplete"|"failed",
    "detail": str}`. `incomplete`: the card holds a partial image (its first MiB zeroed);
    `failed`: the source could not be opened and the card was not touched."""

    mux: str
    flash: str
    detail: str = ""

    def to_value(self) -> dict[str, Any]:
        return {"mux": self.mux, "flash": self.flash, "detail": self.detail}

    @classmethod
    def from_value(cls, value: Any) -> StorageStatus:
        fields = _fields(value, "storage status")
        return cls(
            str(fields.get("mux", "unknown")), str(fields.get("flash", "idle")), str(fields.get("detail", ""))
        )


class StorageMuxInterface(FlasherInterface):
    r"""An SD-card mux: the card is on the lab host (`host()`), on the board (`dut()`) or on neither (`off()`).

    `flash` switches to the host, writes and verifies, and gives the card back to the board;
    on any error, cancel or dropped client the mux goes to its safe state instead (off, or
    the board if configured). `write(handle)`/`read(handle)` are upstream's raw calls, used
    between the client's own `host()` and `dut()`. Served with a fake `usbsdmux` (tests and
    docs only: the real one needs the hardware):

    >>> import os, stat, tempfile
    >>> from jumpstarter.driver.serve import serve
    >>> from jumpstarter.drivers.sdmux import UsbSdMux
    >>> folder = tempfile.mkdtemp()
    >>> card, fake = os.path.join(folder, "card.img"), os.path.join(folder, "usbsdmux")
    >>> with open(fake, "w") as script:
    ...     _ = script.write("#!/bin/sh\necho \"$@\" >> " + folder + "/calls\n")
    >>> os.chmod(fake, stat.S_IRWXU)
    >>> open(card, "wb").close()  # a real card appears when switched to the host
    >>> image = os.path.join(folder, "image.raw")
    >>> with open(image, "wb") as out:
    ...     out.write(b"boot" * 1024)
    4096
    >>> mux = UsbSdMux(control="/dev/sg0", storage_device=card, executable=fake)
    >>> with serve(mux) as storage:
    ...     storage.flash(image, progress=False).verified
    ...     storage.status().mux
    True
    'dut'
    >>> open(os.path.join(folder, "calls")).read().splitlines()  # safe at session start and end
    ['/dev/sg0 off', '/dev/sg0 host', '/dev/sg0 dut', '/dev/sg0 off']
    >>> import shutil; shutil.rmtree(folder)
    """

    client = "jumpstarter_driver_opendal.client.StorageMuxFlasherClient"
    client_class = "jumpstarter.client.drivers.storage:StorageMuxClient"
    also_drives = (
        "jumpstarter_driver_opendal.client.StorageMuxClient",
        "jumpstarter.client.drivers.storage.StorageMuxClient",
    )
    kind = "storage"

    @export
    @abstractmethod
    async def host(self) -> None:
        """Connect the card to the lab host."""

    @export
    @abstractmethod
    async def dut(self) -> None:
        """Connect the card to the board."""

    @export
    @abstractmethod
    async def off(self) -> None:
        """Disconnect the card from both."""

    @export
    @abstractmethod
    async def write(self, source: Any) -> FlashResult:
        """Write the image from `source` while the card is on the host (upstream's raw write)."""

    @export
    @abstractmethod
    async def read(self, destination: Any) -> DumpResult:
        """Send the card's contents to `destination` while it is on the host."""

    @export
    @abstractmethod
    async def status(self) -> StorageStatus:
        """Where the card is, and whether the last flash completed."""
