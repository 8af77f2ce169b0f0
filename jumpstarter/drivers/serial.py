"""Serial console driver: the exporter owns the port; many clients may attach at once.

Output read from the port goes to every attached client and into a scrollback
buffer. A device node that disappears (USB adapter unplugged, EIO) is reopened
when it returns. Writes from all clients go to the port in arrival order.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

from jumpstarter.driver import Driver, export, exportstream
from jumpstarter.drivers.console_log import ConsoleLog
from jumpstarter.interfaces.serial import SerialInterface

REOPEN_INTERVAL = 0.5
THREAD_READ_TIMEOUT = 0.2  # URL handlers are read by a thread: a blocking read, not a busy loop
SUBSCRIBER_DEPTH = 1024
READ_SIZE = 64 * 1024
ATTACH_REPLAY = 4096  # bytes of scrollback an interactive attach starts with: about one screen
MAX_BREAK = 5.0  # seconds: a longer break is a typo, not a request


class _Subscriber:
    """One attached client: a `ByteStream` whose input comes from the port."""

    def __init__(self, port: Serial, replay: bytes = b"") -> None:
        self.port = port
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(SUBSCRIBER_DEPTH)
        self.dropped = 0
        if replay:
            self.queue.put_nowait(replay)

    def deliver(self, data: bytes) -> None:
        if self.queue.full():  # a stalled viewer loses old output, never stalls the port
            with contextlib.suppress(asyncio.QueueEmpty):
                self.dropped += len(self.queue.get_nowait())
        self.queue.put_nowait(data)

    async def receive(self) -> bytes:
        return await self.queue.get()

    async def send(self, data: bytes) -> None:
        await self.port.write(data)

    async def send_eof(self) -> None:
        return None  # the port stays open for the other viewers

    async def aclose(self) -> None:
        self.port.subscribers.discard(self)
        if self.dropped:
            self.port.log.warning("a slow console viewer missed output", bytes=self.dropped)


class Serial(SerialInterface, Driver):
    """A serial port (device path or pyserial URL such as `loop://`, `socket://host:port`).

    Config: `url`, `baudrate` (115200), `check_present` (fail at load when a
    device path is missing), `cps` (throttle writes, characters per second),
    `scrollback` (bytes of recent output kept, 65536), `console_log` (a directory: every session
    writes the console output to its own file there, at most `console_log_max` bytes; the newest
    `console_log_keep` files are kept, 100).
    """

    def __init__(
        self,
        *,
        url: str,
        baudrate: int = 115200,
        check_present: bool = False,
        cps: float | None = None,
        disable_hupcl: bool = False,
        scrollback: int = 65536,
        console_log: str | None = None,
        console_log_max: int = 64 * 1024 * 1024,
        console_log_keep: int = 100,
        **base: Any,
    ) -> None:
        super().__init__(**base)
        self.url = str(url)
        self.baudrate = int(baudrate)
        self.cps = float(cps) if cps else None
        self.disable_hupcl = bool(disable_hupcl)
        self.scrollback_size = int(scrollback)
        self.console_log = (
            ConsoleLog(str(console_log), int(console_log_max), int(console_log_keep)) if console_log else None
        )
        self._console_log_open = False
        if check_present and self.url.startswith("/") and not os.path.exists(self.url):
            raise ValueError(f"serial device {self.url} does not exist")
        self.subscribers: set[_Subscriber] = set()
        self.scrollback = bytearray()
        self._port: Any = None
        self._fd: int | None = None
        self._reader_thread: Any = None
        self._watcher: asyncio.Task[None] | None = None
        self._write_lock = asyncio.Lock()
        self._present = asyncio.Event()

    # -- port ownership ------------------------------------------------------

    async def reset(self) -> None:
        await super().reset()
        if self.console_log is not None and not self._console_log_open:
            path = self.console_log.open(self.session_name)
            self._console_log_open = True
            self.log.info("console log", path=path)
        self._loop = asyncio.get_running_loop()
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._keep_open(), name=f"serial {self.url}")

    def _open(self) -> None:
        import serial

        port = serial.serial_for_url(self.url, baudrate=self.baudrate, timeout=0, do_not_open=True)
        if self.disable_hupcl and hasattr(port, "hupcl"):
            port.hupcl = False
        port.open()
        self._port = port
        try:
            self._fd = port.fileno()
        except Exception:  # URL handlers (loop://, socket://) have no descriptor
            self._fd = None
        if self._fd is not None:
            os.set_blocking(self._fd, False)
            self._loop.add_reader(self._fd, self._on_readable)
        else:
            import threading

            port.timeout = THREAD_READ_TIMEOUT
            self._reader_thread = threading.Thread(target=self._read_thread, args=(port,), daemon=True)
            self._reader_thread.start()
        self._present.set()
        self.log.info("serial port open", url=self.url, baudrate=self.baudrate)

    def _drop(self, reason: str) -> None:
        if self._port is None:
            return
        if self._fd is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._fd)
        with contextlib.suppress(Exception):
            self._port.close()
        self._port = None
        self._fd = None
        self._present.clear()
        self.log.warning("serial port closed", url=self.url, reason=reason)

    async def _keep_open(self) -> None:
        """Open the port, and reopen it whenever it went away."""
        while True:
            if self._port is None:
                try:
                    self._open()
                except Exception as exc:
                    if not getattr(self, "_told_missing", False):
                        self.log.warning(
                            "serial port not available; will retry", url=self.url, error=str(exc)
                        )
                        self._told_missing = True
                else:
                    self._told_missing = False
            await asyncio.sleep(REOPEN_INTERVAL)

    def _on_readable(self) -> None:
        try:
            data = os.read(self._fd, READ_SIZE)  # type: ignore[arg-type]
        except BlockingIOError:
            return
        except OSError as exc:  # EIO: the device (or the pty's other end) went away
            self._drop(str(exc))
            return
        if not data:
            self._drop("end of file")
            return
        self._deliver(data)

    def _read_thread(self, port: Any) -> None:
        while self._port is port:
            try:
                data = port.read(max(1, port.in_waiting))
            except Exception as exc:
                self._loop.call_soon_threadsafe(self._drop, str(exc))
                return
            if data:
                self._loop.call_soon_threadsafe(self._deliver, bytes(data))

    def _deliver(self, data: bytes) -> None:
        if self.console_log is not None and (failed := self.console_log.write(data)):
            self.log.warning("console log write failed; stopping it", error=failed)
        self.scrollback += data
        if len(self.scrollback) > self.scrollback_size:
            del self.scrollback[: len(self.scrollback) - self.scrollback_size]
        for subscriber in list(self.subscribers):
            subscriber.deliver(data)

    async def write(self, data: bytes) -> None:
        async with self._write_lock:
            if self._port is None:
                raise ConnectionError(f"serial device {self.url} is not present")
            if self.cps:
                for i in range(0, len(data), 16):
                    await self._write_now(data[i : i + 16])
                    await asyncio.sleep(min(16, len(data) - i) / self.cps)
            else:
                await self._write_now(data)

    async def _write_now(self, data: bytes) -> None:
        if self._fd is None:
            await asyncio.to_thread(self._port.write, data)
            return
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._fd, view)
                view = view[written:]
            except BlockingIOError:
                ready = self._loop.create_future()
                self._loop.add_writer(self._fd, ready.set_result, None)
                try:
                    await ready
                finally:
                    self._loop.remove_writer(self._fd)
            except OSError as exc:
                self._drop(str(exc))
                raise ConnectionError(f"serial device {self.url} went away: {exc}") from None

    async def close(self) -> None:
        if self.console_log is not None:
            self.console_log.close()
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        self._drop("exporter closing")
        for subscriber in list(self.subscribers):
            subscriber.deliver(b"")
        await super().close()

    # -- exported ------------------------------------------------------------

    @exportstream
    async def connect(self) -> AsyncIterator[_Subscriber]:
        """Attach to the console: receive its output, send keystrokes."""
        if self._port is None:
            raise ConnectionError(f"serial device {self.url} is not present (waiting for it to appear)")
        async with self._subscribe(b"") as subscriber:
            yield subscriber

    @exportstream
    async def attach(self) -> AsyncIterator[_Subscriber]:
        """`connect`, starting with the last few KiB of scrollback (from a line start): a console
        shows the board's current screen at once, not a blank one until a key is pressed."""
        if self._port is None:
            raise ConnectionError(f"serial device {self.url} is not present (waiting for it to appear)")
        async with self._subscribe(replay_tail(bytes(self.scrollback), ATTACH_REPLAY)) as subscriber:
            yield subscriber

    @contextlib.asynccontextmanager
    async def _subscribe(self, replay: bytes) -> AsyncIterator[_Subscriber]:
        # no await between the snapshot and joining: the replay and the live output neither overlap nor gap
        subscriber = _Subscriber(self, replay)
        self.subscribers.add(subscriber)
        try:
            yield subscriber
        finally:
            self.subscribers.discard(subscriber)

    @export(name="close")
    async def close_port(self) -> None:
        """Close the port now; it is reopened automatically."""
        self._drop("closed by a client")

    @export
    async def set_dtr(self, value: bool) -> None:
        """Set the DTR line."""
        if self._port is None:
            raise ConnectionError(f"serial device {self.url} is not present")
        self._port.dtr = value

    @export
    async def set_rts(self, value: bool) -> None:
        """Set the RTS line."""
        if self._port is None:
            raise ConnectionError(f"serial device {self.url} is not present")
        self._port.rts = value

    @export
    async def read_scrollback(self) -> bytes:
        """The most recent console output kept by the exporter."""
        return bytes(self.scrollback)

    @export
    async def send_break(self, duration: float = 0.25) -> None:
        """Hold the line in the break condition for `duration` seconds (SysRq, U-Boot, debuggers)."""
        if not 0 < duration <= MAX_BREAK:
            raise ValueError(f"break duration must be above 0 and at most {MAX_BREAK:g} seconds")
        async with self._write_lock:  # no keystroke goes out in the middle of the break
            if self._port is None:
                raise ConnectionError(f"serial device {self.url} is not present")
            await asyncio.to_thread(self._port.send_break, duration)
        self.log.info("serial break sent", seconds=duration)

    @export
    async def console_logs(self) -> list[dict[str, Any]]:
        """The kept console logs, oldest first: session (the lease name), started (UTC), size, current."""
        logs = self._console_logs()
        return [
            {"session": f.session, "started": f.started, "size": f.size, "current": f.path == logs.path}
            for f in logs.files()
        ]

    @export
    async def read_console_log(self, session: str | None = None) -> AsyncIterator[bytes]:
        """A session's console log (the current one by default; else the newest of lease `session`)."""
        logs = self._console_logs()
        for chunk in logs.read(logs.find(session)):
            yield chunk

    def _console_logs(self) -> ConsoleLog:
        if self.console_log is None:
            raise NotImplementedError(
                "this board keeps no console logs: set `console_log: DIR` in its serial driver's config"
            )
        return self.console_log


def replay_tail(scrollback: bytes, limit: int) -> bytes:
    """The last `limit` bytes, starting after a line break when there is one (no half line on top)."""
    tail = scrollback[-limit:]
    if len(scrollback) > limit and (cut := tail.find(b"\n")) >= 0:
        tail = tail[cut + 1 :]
    return tail
