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
    """What `flash` wrote; on the wire `{"bytes": int, "seconds": float, "target": str}`."""

    bytes: int
    seconds: float
    target: str

    def to_value(self) -> dict[str, Any]:
        return {"bytes": self.bytes, "seconds": float(self.seconds), "target": self.target}

    @classmethod
    def from_value(cls, value: Any) -> FlashResult:
        fields = _fields(value, "flash result")
        return cls(
            _count(fields.get("bytes"), "flash result bytes"),
            wire_number(fields.get("seconds", 0.0), "flash result seconds"),
            str(fields.get("target") or "default"),
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
        """Write the image from `source` (a resource handle) to the target; returns bytes written."""

    @export
    @abstractmethod
    async def dump(self, destination: Any, target: str | None = None) -> DumpResult:
        """Read the target and send it to `destination` (a resource handle)."""
