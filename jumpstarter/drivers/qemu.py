"""A QEMU virtual board: power, serial console, disk and forwarded network ports of one QEMU process.

The board is a composite whose children are the ordinary drivers: `serial` is the `Serial` driver
on QEMU's console pty (scrollback, many viewers, console log), `storage` a `FileFlasher` on the disk
image (refused while the machine runs), each `forward` entry a `TcpNetwork` on a free host port
forwarded to a guest port by user-mode networking. QEMU runs as the exporter's own user.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import socket
import stat
import tempfile
import uuid
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

from jumpstarter.backoff import Deadline
from jumpstarter.config.exporter import CHILD_RE
from jumpstarter.config.schema import choice, mapping, number, path, text
from jumpstarter.driver import Driver, export
from jumpstarter.drivers.composite import Composite
from jumpstarter.drivers.console_log import safe_session
from jumpstarter.drivers.network import TcpNetwork
from jumpstarter.drivers.qemu_args import (
    ACCELS,
    ARCHES,
    INSTALL_HINT,
    as_check,
    check_extra_args,
    command_line,
    extra_args_setting,
    memory_mib,
)
from jumpstarter.drivers.qmp import Qmp, QmpError
from jumpstarter.drivers.serial import Serial
from jumpstarter.drivers.storage import FileFlasher
from jumpstarter.files import make_dirs
from jumpstarter.interfaces.power import PowerInterface

START_TIMEOUT = 60.0  # QEMU creating its QMP socket, on a loaded host
QUIT_TIMEOUT = 10.0
CONSOLE_TIMEOUT = 10.0  # the serial driver retries its port every 0.5 s
OWN_CHILDREN = ("power", "serial", "storage")


class Qemu(Composite):
    """A virtual board: `power`, `serial`, `storage` and network children, plus `screenshot()`.

    Config: `kernel`, `initrd`, `append` (direct kernel boot) or only a `disk` to boot from;
    `disk` (raw image, flashed through `storage`; default `<state_dir>/disk.img`), `arch`
    (x86_64 or aarch64), `memory` (MiB or 512M/2G), `cpus`, `accel` (tcg; kvm, or auto: kvm when /dev/kvm is usable),
    `forward` (child name -> guest TCP port, default {network: 22}), `extra_args` (allowlisted
    QEMU flags), `shutdown_timeout` (seconds the guest gets to act on the ACPI power button;
    0 pulls the plug), `state_dir` (sockets and logs, mode 0700), `console_log`, `scrollback`.

    >>> import os, tempfile
    >>> from jumpstarter.driver.serve import serve
    >>> from tests.images.build import build, write_disk
    >>> boot, folder = build(), tempfile.mkdtemp()
    >>> board = Qemu(kernel=f"{boot}/vmlinuz", initrd=f"{boot}/initrd.gz", append="console=ttyS0 quiet",
    ...              disk=f"{folder}/disk.img", forward={"web": 80}, shutdown_timeout=0)
    >>> write_disk(f"{folder}/image.raw", "HELLO")
    >>> with serve(board) as client:
    ...     _ = client.storage.flash(f"{folder}/image.raw", progress=False)
    ...     client.power.on()
    ...     with client.serial.console() as console:
    ...         _ = console.expect("disk marker: HELLO", timeout=180)
    ...     client.screenshot()[:4]
    ...     client.power.off()
    b'\\x89PNG'
    """

    client: ClassVar[str] = "jumpstarter.client.drivers.qemu.QemuClient"
    SETTINGS: ClassVar[dict[str, Any]] = {
        "kernel": path("a kernel image path"),
        "initrd": path("an initrd path"),
        "disk": path("a disk image path"),
        "state_dir": path("a directory"),
        "console_log": path("a directory"),
        "append": text("kernel arguments"),
        "arch": choice(*ARCHES),
        "accel": choice(*ACCELS),
        "memory": as_check(memory_mib),
        "cpus": number(whole=True, at_most=64),
        "forward": mapping("a mapping of network names to guest TCP ports"),
        "extra_args": extra_args_setting,
        "shutdown_timeout": as_check(float),
        "scrollback": number(whole=True),
    }

    def __init__(
        self,
        *,
        kernel: str | None = None,
        initrd: str | None = None,
        append: str | None = None,
        disk: str | None = None,
        arch: str = "x86_64",
        memory: int | str = 256,
        cpus: int = 1,
        accel: str = "tcg",
        forward: dict[str, int] | None = None,
        extra_args: list[str] | None = None,
        shutdown_timeout: float = 30.0,
        state_dir: str | None = None,
        console_log: str | None = None,
        scrollback: int = 65536,
        **base: Any,
    ) -> None:
        if arch not in ARCHES:
            raise ValueError(f"arch: expected one of {', '.join(ARCHES)}, got {arch!r}")
        if accel not in ACCELS:
            raise ValueError(f"accel: expected one of {', '.join(ACCELS)}, got {accel!r}")
        self.arch = ARCHES[arch]
        binary = shutil.which(self.arch.binary)
        if binary is None:
            raise ValueError(f"{self.arch.binary} is not installed ({INSTALL_HINT[arch]})")
        self.binary = binary
        if initrd is not None and kernel is None:
            raise ValueError("initrd: needs a kernel")
        self.kernel, self.initrd, self.append = kernel, initrd, append
        self.memory = memory_mib(memory)
        if isinstance(cpus, bool) or not isinstance(cpus, int) or not 1 <= cpus <= 64:
            raise ValueError(f"cpus: expected 1 to 64, got {cpus!r}")
        self.cpus, self.accel = cpus, accel
        self.forward = _forwards({"network": 22} if forward is None else forward)
        self.extra_args = check_extra_args(extra_args or [])
        self.shutdown_timeout = float(shutdown_timeout)
        if not 0 <= self.shutdown_timeout <= 3600:
            raise ValueError("shutdown_timeout: expected 0 to 3600 seconds")
        self._temporary_state = state_dir is None  # ours to remove when the session ends
        # created at first use: loading a config to validate it leaves nothing behind
        self.state_dir = state_dir or os.path.join(
            tempfile.gettempdir(), f"jumpstarter-qemu-{uuid.uuid4().hex}"
        )
        self.disk = disk or os.path.join(self.state_dir, "disk.img")
        self.console_link = os.path.join(self.state_dir, "console")
        self.qmp_path = os.path.join(self.state_dir, "qmp.sock")
        children = dict(base.pop("children", None) or {})
        clash = set(children) & {*OWN_CHILDREN, *self.forward}
        if clash:
            raise ValueError(f"children: {sorted(clash)[0]!r} is one of the board's own drivers")
        own: dict[str, Driver] = {
            "power": QemuPower(board=self),
            "serial": Serial(url=self.console_link, scrollback=scrollback, console_log=console_log),
            "storage": QemuDisk(board=self, path=self.disk),
        }
        own.update({name: QemuNetwork(board=self) for name in self.forward})
        super().__init__(children={**own, **children}, **base)
        self.process: asyncio.subprocess.Process | None = None
        self.qmp: Qmp | None = None
        self.flashing = 0
        self._lock = asyncio.Lock()
        self._exited: asyncio.Task[int] | None = None
        self._console_fd: int | None = None

    # -- state -------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._exited is not None and not self._exited.done()

    def require_running(self) -> Qmp:
        if not self.running or self.qmp is None:
            raise ConnectionError("the virtual board is powered off (jumpstarter power on)")
        return self.qmp

    # -- power -------------------------------------------------------------

    async def start(self) -> None:
        """Start QEMU (nothing when it runs); a clear error when it cannot."""
        async with self._lock:
            if self.running:
                return
            if self.flashing:
                raise RuntimeError("the board's disk is being flashed: power on when flashing is done")
            _private_dir(self.state_dir)
            if self.kernel is None and not os.path.exists(self.disk):
                raise FileNotFoundError(f"no disk image to boot at {self.disk}: flash one first")
            for _ in range(3):  # a forwarded host port taken between choosing and binding: choose again
                ports = {name: _free_port() for name in self.forward}
                try:
                    await self._launch(ports)
                    return
                except _PortTaken:
                    continue
            raise RuntimeError("could not bind the forwarded host ports after 3 tries")

    async def _launch(self, ports: dict[str, int]) -> None:
        for stale in (self.qmp_path, self.console_link):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(stale)
        disk = self.disk if os.path.exists(self.disk) else None
        argv = command_line(
            self.binary,
            self.arch,
            name="jumpstarter-" + safe_session(self.session_name)[:48],
            accel=self.accel,
            memory=self.memory,
            cpus=self.cpus,
            kernel=self.kernel,
            initrd=self.initrd,
            append=self.append,
            disk=disk,
            qmp=self.qmp_path,
            forwards=[(ports[name], guest) for name, guest in self.forward.items()],
            extra_args=self.extra_args,
        )
        # QEMU dies with the exporter (parent-death signal) instead of outliving it as an orphan
        prefix = ["setpriv", "--pdeathsig", "KILL", "--"] if shutil.which("setpriv") else []
        log_path = os.path.join(self.state_dir, "qemu.log")
        with open(log_path, "wb") as log:
            process = await asyncio.create_subprocess_exec(
                *prefix, *argv, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.state_dir
            )
        try:
            await self._wait_for_qmp(process, log_path)
            try:
                self.qmp = await Qmp.connect(self.qmp_path)
            except (OSError, QmpError, TimeoutError):  # QEMU makes its socket before it checks the kernel
                if await _within(asyncio.ensure_future(process.wait()), QUIT_TIMEOUT):
                    raise _failure(process, log_path) from None
                raise
            await self._attach_console(self.qmp)
            await self._wait_for_serial()
            await self.qmp.execute("cont")
        except BaseException:
            await self._kill(process)
            self._release()
            raise
        self.process = process
        self._exited = asyncio.create_task(self._watch(process), name="qemu exit")
        for name, port in ports.items():
            network = self.children[name]
            assert isinstance(network, QemuNetwork)
            network.port = port
        self.log.info("qemu started", pid=process.pid, ports=ports, disk=disk)

    async def _wait_for_qmp(self, process: asyncio.subprocess.Process, log_path: str) -> None:
        deadline = Deadline(START_TIMEOUT)
        while not os.path.exists(self.qmp_path):
            if process.returncode is not None or deadline.expired():
                raise _failure(process, log_path)
            with contextlib.suppress(TimeoutError):  # wakes early when QEMU exits
                await asyncio.wait_for(asyncio.shield(process.wait()), 0.05)

    async def _attach_console(self, qmp: Qmp) -> None:
        """Point the serial driver's path at QEMU's console pty, held open so no output is dropped."""
        chardevs = await qmp.execute("query-chardev")
        pty = next((c["filename"][4:] for c in chardevs if c.get("label") == "console"), None)
        if not pty or not pty.startswith("/dev/"):
            raise RuntimeError(f"QEMU reported no console pty: {chardevs}")
        # QEMU drops console output while nobody has the pty open; we keep it open for the machine's life
        self._console_fd = os.open(pty, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        link = self.console_link + ".new"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(link)
        os.symlink(pty, link)
        os.replace(link, self.console_link)

    async def _wait_for_serial(self) -> None:
        """Resume the guest once the serial driver reads the new pty: its log and scrollback see the boot."""
        serial = self.children["serial"]
        assert isinstance(serial, Serial)
        await serial.close_port()  # a pty of an earlier run is let go at once, not at its next error
        try:
            await asyncio.wait_for(serial._present.wait(), CONSOLE_TIMEOUT)
        except TimeoutError:  # no session opened the port (no reset yet): the held pty keeps the output
            self.log.warning("serial driver did not open the console; starting anyway")

    async def _watch(self, process: asyncio.subprocess.Process) -> int:
        code = await process.wait()
        self._release()
        self.log.info("qemu exited", code=code)
        return code

    def _release(self) -> None:
        if self._console_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._console_fd)
            self._console_fd = None
        if self.qmp is not None:
            self.qmp.abort()  # a fire-and-forget close task could be collected before it ran
            self.qmp = None

    async def stop(self, graceful: bool = True) -> None:
        """ACPI power button (for `shutdown_timeout` seconds), then QMP `quit`, then SIGKILL."""
        async with self._lock:
            if not self.running or self.process is None or self._exited is None:
                return
            qmp, exited = self.qmp, self._exited
            if graceful and self.shutdown_timeout > 0 and qmp is not None:
                with contextlib.suppress(QmpError, OSError, TimeoutError):
                    await qmp.execute("system_powerdown")
                if await _within(exited, self.shutdown_timeout):
                    return
                self.log.info("guest ignored the power button; quitting QEMU", seconds=self.shutdown_timeout)
            if qmp is not None:
                with contextlib.suppress(QmpError, OSError, TimeoutError):
                    await qmp.execute("quit")
            if not await _within(exited, QUIT_TIMEOUT):
                await self._kill(self.process)
            await exited

    @staticmethod
    async def _kill(process: asyncio.subprocess.Process) -> None:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()

    # -- lifecycle and extras ------------------------------------------------

    async def close(self) -> None:
        """The session ended: the machine goes off (the next lease boots a fresh one)."""
        with contextlib.suppress(Exception):
            await self.stop(graceful=False)
        await super().close()
        if self._temporary_state:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    @export
    async def screenshot(self, format: str = "png") -> bytes:
        """The guest's screen as PNG (or `format="ppm"`: QEMU's own screendump)."""
        from jumpstarter.pnm import ppm_to_png

        if format not in ("png", "ppm"):
            raise ValueError(f"format: expected png or ppm, got {format!r}")
        qmp = self.require_running()
        target = os.path.join(self.state_dir, f"screen-{uuid.uuid4().hex}.ppm")  # calls may overlap
        await qmp.execute("screendump", {"filename": target}, timeout=30)
        try:
            with open(target, "rb") as dump:
                ppm = dump.read()
        finally:
            os.unlink(target)
        return ppm if format == "ppm" else await asyncio.to_thread(ppm_to_png, ppm)


class QemuPower(PowerInterface, Driver):
    """Starts and stops the board's QEMU process."""

    def __init__(self, *, board: Qemu, **base: Any) -> None:
        super().__init__(**base)
        self.board = board

    @export
    async def on(self) -> None:
        """Start the virtual machine."""
        await self.board.start()

    @export
    async def off(self) -> None:
        """Shut the virtual machine down (power button, then pull the plug)."""
        await self.board.stop()

    @export
    def is_on(self) -> bool:  # one attribute read: answered in the gRPC worker thread
        """Whether the virtual machine runs."""
        return self.board.running


def _refused_while_running(method: Callable[..., Any]) -> Callable[..., Any]:
    """Wraps a storage method (keeping its signature and export) so it never runs under a live guest."""

    @functools.wraps(method)
    async def guarded(self: QemuDisk, *args: Any, **kwargs: Any) -> Any:
        board = self.board
        async with board._lock:
            if board.running:
                raise RuntimeError("the virtual board is running: power it off before flashing its disk")
            board.flashing += 1
        try:
            _private_dir(board.state_dir)  # the default disk lives there
            return await method(self, *args, **kwargs)
        finally:
            board.flashing -= 1

    return guarded


class QemuDisk(FileFlasher):
    """The board's disk image; flashing waits for no one: it is refused while the machine runs."""

    def __init__(self, *, board: Qemu, **config: Any) -> None:
        super().__init__(**config)
        self.board = board

    flash = _refused_while_running(FileFlasher.flash)


class QemuNetwork(TcpNetwork):
    """A guest TCP port, forwarded to a host port chosen at each power-on."""

    def __init__(self, *, board: Qemu, **base: Any) -> None:
        super().__init__(host="127.0.0.1", port=0, **base)
        self.board = board

    def connect(self) -> Iterator[Any]:  # type: ignore[override]
        """Open one TCP connection to the guest port."""
        self.board.require_running()
        with super().connect() as stream:  # type: ignore[attr-defined]  # @exportstream made it a CM
            yield stream


class _PortTaken(Exception):
    """QEMU could not bind a forwarded host port."""


def _failure(process: asyncio.subprocess.Process, log_path: str) -> Exception:
    """Why QEMU did not start, from the end of its own output."""
    with open(log_path, "rb") as log:
        tail = log.read()[-2000:].decode("utf-8", "replace").strip()
    if "host forwarding" in tail:
        return _PortTaken(tail)
    if process.returncode is None:
        return TimeoutError(f"QEMU did not start within {START_TIMEOUT:g}s: {tail[-300:]}")
    return RuntimeError(f"QEMU exited with {process.returncode}: {tail[-600:]}")


def _forwards(forward: Any) -> dict[str, int]:
    if not isinstance(forward, dict):
        raise ValueError("forward: expected a mapping of network names to guest TCP ports")
    checked: dict[str, int] = {}
    for name, port in forward.items():
        if not isinstance(name, str) or not CHILD_RE.match(name) or name in OWN_CHILDREN:
            raise ValueError(f"forward: {name!r} is not a usable driver name")
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ValueError(f"forward: {name}: expected a TCP port (1-65535), got {port!r}")
        checked[name] = port
    return checked


def _private_dir(folder: str) -> None:
    """The state directory, ours alone: QMP and the console link are the machine's controls."""
    make_dirs(folder, 0o700)
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise PermissionError(f"QEMU state directory {folder} is not a directory owned by this user")
    os.chmod(folder, 0o700)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _within(task: asyncio.Task[int], seconds: float) -> bool:
    try:
        await asyncio.wait_for(asyncio.shield(task), seconds)
    except TimeoutError:
        return False
    return True
