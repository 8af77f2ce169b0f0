"""SD-card muxes: usbsdmux (Linux Automation USB-SD-Mux) and SDWire, driven through their CLIs.

The card is switched to the host only for writing or reading, then back to the board;
on any error, cancel, dropped client, session start or end it goes to the safe state
(`off`, or `dut` when `safe_state: dut`; an SDWire has no off, so its safe state is the
board). The switch commands run with an argument list (no shell) and a timeout.

Tests drive both against small fake executables faithful to each tool's documented
CLI (tests/integration/fakes/): the physical muxes cannot run on CI.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from abc import abstractmethod
from collections.abc import AsyncIterator
from typing import Any

from jumpstarter.backoff import Backoff, Deadline
from jumpstarter.driver import Driver
from jumpstarter.drivers.flashing import FlashOptions, wait_uncancellable
from jumpstarter.drivers.storage import MAX_BYTES, Flashing
from jumpstarter.interfaces.storage import DumpResult, FlashResult, StorageMuxInterface, StorageStatus

SIDES = ("host", "dut", "off")
_ARG = re.compile(r"[A-Za-z0-9_./:@+=-]{1,256}")  # device paths and serials; never an option


def _argument(value: Any, what: str) -> str:
    text = str(value)
    if not _ARG.fullmatch(text) or text.startswith("-"):
        raise ValueError(f"{what}: {text!r} is not a device path or serial")
    return text


class SdMux(StorageMuxInterface, Flashing, Driver):
    """Base of the mux drivers: subclasses give the command for each side.

    Config: `storage_device` (the card's block device when on the host, e.g.
    /dev/disk/by-id/usb-LinuxAut_sdmux_...), `safe_state` (off|dut), `after_flash`
    (dut|off|host), `device_timeout` (seconds to wait for the card to appear),
    `command_timeout`, `max_bytes`, `fetch_from` (URL prefixes the exporter may download from).
    """

    safe_choices: tuple[str, ...] = ("off", "dut")

    def __init__(
        self,
        *,
        storage_device: str,
        safe_state: str = "off",
        after_flash: str = "dut",
        device_timeout: float = 30.0,
        command_timeout: float = 30.0,
        max_bytes: int = MAX_BYTES,
        fetch_from: list[str] | None = None,
        **base: Any,
    ) -> None:
        super().__init__(**base)
        if safe_state not in self.safe_choices:
            raise ValueError(f"safe_state must be one of {', '.join(self.safe_choices)}, not {safe_state!r}")
        if after_flash not in SIDES:
            raise ValueError(f"after_flash must be one of {', '.join(SIDES)}, not {after_flash!r}")
        self.storage_device = str(storage_device)
        self.safe_state = safe_state
        self.after_flash = after_flash
        self.device_timeout = float(device_timeout)
        self.command_timeout = float(command_timeout)
        self.side = "unknown"
        self._lock = asyncio.Lock()
        self._init_state(max_bytes, fetch_from)

    @abstractmethod
    def command(self, side: str) -> list[str]:
        """The argument list that switches the card to `side`."""

    async def _switch(self, side: str) -> None:
        argv = self.command(side)
        self.side = "unknown"  # until the tool says it switched
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            output, _ = await asyncio.wait_for(process.communicate(), self.command_timeout)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            raise
        if process.returncode != 0:
            text = output.decode(errors="replace").strip()[-300:]
            raise RuntimeError(f"{argv[0]} {side} failed (exit {process.returncode}): {text}")
        self.side = side
        self.log.info("mux switched", side=side)

    async def _settle(self) -> None:
        """Put the card in its safe state whatever happens to us meanwhile (a cancel included)."""
        task = asyncio.ensure_future(self._switch(self.safe_state))
        await wait_uncancellable(task)
        if task.exception() is not None:
            self.log.error(
                "mux could not reach its safe state", side=self.safe_state, error=str(task.exception())
            )

    async def _wait_for_device(self) -> None:
        """After switching to the host the card enumerates as a block device: wait until it opens."""
        backoff = Backoff(start=0.05, cap=0.5, deadline=Deadline(self.device_timeout))
        while True:
            try:  # opening a card reader that is still enumerating can block: off the loop
                os.close(await asyncio.to_thread(os.open, self.storage_device, os.O_RDONLY | os.O_CLOEXEC))
                return
            except OSError as exc:
                if not await backoff.wait():
                    raise TimeoutError(f"{self.storage_device} did not appear on the host: {exc}") from None

    @contextlib.asynccontextmanager
    async def _on_host(self, then: str) -> AsyncIterator[None]:
        """The card on the host for the block; then `then` on success, the safe state otherwise."""
        async with self._lock:
            try:
                await self._switch("host")
                await self._wait_for_device()
                yield
            except BaseException:
                await self._settle()
                raise
            try:
                await self._switch(then)
            except BaseException:
                await self._settle()
                raise

    def _need_host(self) -> None:
        if self.side != "host":
            raise RuntimeError(f"the card is not on the host (it is {self.side}): call host() first")

    # -- lifecycle: a session starts and ends with the card safe -------------------

    async def reset(self) -> None:
        await super().reset()
        await self._settle()

    async def close(self) -> None:
        await self._settle()
        await super().close()

    # -- exported -------------------------------------------------------------------

    async def host(self) -> None:
        async with self._lock:
            await self._switch("host")

    async def dut(self) -> None:
        async with self._lock:
            await self._switch("dut")

    async def off(self) -> None:
        async with self._lock:
            await self._switch("off")

    async def flash(
        self, source: Any, target: str | None = None, options: dict[str, Any] | None = None
    ) -> FlashResult:
        """Switch to the host, write and verify the image, give the card to the board (or the safe state)."""
        if target not in (None, "", "default"):
            raise ValueError(f"a mux has one card: target {target!r} is not supported")
        parsed = FlashOptions.from_value(options)
        async with self._on_host(self.after_flash):
            return await self._flash_path(self.storage_device, source, "default", parsed)

    async def dump(self, destination: Any, target: str | None = None) -> DumpResult:
        """Switch to the host, send the card's contents, give the card back to the board."""
        if target not in (None, "", "default"):
            raise ValueError(f"a mux has one card: target {target!r} is not supported")
        async with self._on_host(self.after_flash):
            return await self._dump_path(self.storage_device, destination, "default")

    async def write(self, source: Any) -> FlashResult:
        self._need_host()
        try:
            return await self._flash_path(self.storage_device, source, "default", FlashOptions())
        except BaseException:
            await self._settle()  # upstream's client switches back itself, but not if it died
            raise

    async def read(self, destination: Any) -> DumpResult:
        self._need_host()
        return await self._dump_path(self.storage_device, destination, "default")

    async def status(self) -> StorageStatus:
        return StorageStatus(self.side, self.flash_state, self.flash_detail)


class UsbSdMux(SdMux):
    """A Linux Automation USB-SD-Mux through the `usbsdmux` CLI (PyPI `usbsdmux`).

    Config: `control` (its SCSI generic node, e.g. /dev/sg0 or a /dev/usb-sd-mux/id-... link),
    `storage_device`, `executable` (default `usbsdmux`) and the common mux keys.
    Runs `usbsdmux <control> host|dut|off`.
    """

    def __init__(self, *, control: str, executable: str = "usbsdmux", **config: Any) -> None:
        self.control = _argument(control, "control")
        self.executable = str(executable)
        super().__init__(**config)

    def command(self, side: str) -> list[str]:
        return [self.executable, self.control, side]


class SdWire(SdMux):
    """An SDWire (Tizen sd-mux family) through `sd-mux-ctrl --device-serial=SERIAL --ts|--dut`.

    It has no "off": `off()` and the safe state connect the card to the board.
    Config: `serial`, `storage_device`, `executable` (default `sd-mux-ctrl`) and the common mux keys.
    """

    safe_choices = ("dut",)

    def __init__(
        self, *, serial: str, executable: str = "sd-mux-ctrl", safe_state: str = "dut", **config: Any
    ) -> None:
        self.serial = _argument(serial, "serial")
        self.executable = str(executable)
        super().__init__(safe_state=safe_state, **config)

    def command(self, side: str) -> list[str]:
        flag = "--ts" if side == "host" else "--dut"  # no off on this hardware: the board side is safe
        return [self.executable, f"--device-serial={self.serial}", flag]

    async def _switch(self, side: str) -> None:
        await super()._switch(side)
        self.side = "host" if side == "host" else "dut"
