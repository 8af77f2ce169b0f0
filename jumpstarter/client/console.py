"""The interactive serial console: a raw terminal on the board, escape keys, and why it ended.

Escape keys are Ctrl-] followed by one key, as in telnet: Ctrl-] is a byte boards and their shells
practically never need (Ctrl-A is readline's start-of-line and screen's/tmux's prefix, `~.` after
Enter is easy to type by accident in a serial session), and a prefix plus a letter leaves room
for several actions. Ctrl-] twice sends one Ctrl-] to the board.
"""

from __future__ import annotations

import os
import select
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jumpstarter.client.connection import BlockingStream

ESCAPE = 0x1D  # Ctrl-]
UPSTREAM_ESCAPE = 0x02  # Ctrl-B three times in a row also leaves (upstream's habit)
UPSTREAM_COUNT = 3
DETACH, BREAK, POWER_CYCLE, HELP = "detach", "break", "power cycle", "help"
KEYS: dict[str, str] = {".": DETACH, "d": DETACH, "b": BREAK, "p": POWER_CYCLE, "?": HELP, "h": HELP}
KEY_TABLE = """\
escape keys (Ctrl-] then the key):
  Ctrl-] .  or  Ctrl-] d   detach (leave the console; the board keeps running)
  Ctrl-] b                 send a serial break
  Ctrl-] p                 power cycle the board (off, 2 s, on) through its power driver
  Ctrl-] ?  or  Ctrl-] h   list these keys
  Ctrl-] Ctrl-]            send one Ctrl-] to the board
  Ctrl-B Ctrl-B Ctrl-B     detach too (upstream Jumpstarter's key)"""


@dataclass
class Actions:
    """What the non-detach escape keys do: each returns the line to show (no newline)."""

    send_break: Callable[[], str]
    power_cycle: Callable[[], str]


@dataclass
class EscapeReader:
    """Splits typed bytes into bytes for the board and escape-key actions, across reads."""

    pending_escape: bool = False
    upstream_run: int = 0
    out: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> Iterator[bytes | str]:
        """Yields, in typing order, bytes for the board and the names of the escape keys' actions
        (an unknown key: the line to show about it)."""
        for byte in data:
            if self.pending_escape:
                self.pending_escape = False
                if byte == ESCAPE:
                    self.out.append(ESCAPE)
                    continue
                yield from self._flush()
                key = chr(byte).lower() if byte < 0x80 else ""
                yield (
                    KEYS[key] if key in KEYS else f"unknown escape key {bytes([byte])!r}: Ctrl-] ? lists them"
                )
                continue
            if byte == ESCAPE:
                self.pending_escape = True
                continue
            self.upstream_run = self.upstream_run + 1 if byte == UPSTREAM_ESCAPE else 0
            if self.upstream_run >= UPSTREAM_COUNT:
                self.upstream_run = 0
                yield from self._flush()
                yield DETACH
                continue
            self.out.append(byte)
        yield from self._flush()

    def _flush(self) -> Iterator[bytes]:
        if self.out:
            data = bytes(self.out)
            self.out.clear()
            yield data


def say(text: str) -> None:
    """A status line on the terminal (raw mode: carriage returns needed)."""
    os.write(sys.stderr.fileno(), ("\r\n[" + text + "]\r\n").encode())


class _Screen:
    """Copies the stream to the terminal in a thread; records why the stream ended."""

    def __init__(self, stream: BlockingStream) -> None:
        self.stream = stream
        self.ended_by: str | None = None
        self.wake_read, self.wake_write = os.pipe()
        self.thread = threading.Thread(target=self._show, daemon=True, name="console-show")

    def _show(self) -> None:
        try:
            for data in self.stream:
                os.write(sys.stdout.fileno(), data)
            self.ended_by = "the console stream ended (the exporter stopped or closed the port)"
        except Exception as exc:
            self.ended_by = str(exc) or type(exc).__name__
        finally:
            os.write(self.wake_write, b"x")

    def close(self) -> None:
        """Close the wake pipe, unless the thread still runs: it would write into a reused fd number."""
        if self.thread.is_alive():
            return  # a daemon thread stuck in gRPC; the pipe goes with the process
        os.close(self.wake_read)
        os.close(self.wake_write)


def run(stream: BlockingStream, actions: Actions) -> int:
    """Attach this terminal to `stream` until the user detaches (0) or the exporter ends it (1)."""
    import termios
    import tty

    from jumpstarter.client.pipes import pipe_stdio

    stdin_fd = sys.stdin.fileno()
    if not os.isatty(stdin_fd):
        return pipe_stdio(stream, send_input=True)
    saved = termios.tcgetattr(stdin_fd)
    screen = _Screen(stream)
    reader = EscapeReader()
    detached = True  # if _type raises: the terminal went away, not the exporter
    # raw first: keys typed right after the banner must not be echoed or flushed by the line discipline
    tty.setraw(stdin_fd, termios.TCSADRAIN)
    sys.stderr.write("[console attached: Ctrl-] . leaves, Ctrl-] ? lists the escape keys]\r\n")
    sys.stderr.flush()
    screen.thread.start()
    try:
        detached = _type(stdin_fd, screen, stream, reader, actions)
    finally:
        stream.close()  # ends the screen thread before we return: no thread may touch gRPC at exit
        screen.thread.join(timeout=5)
        termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)
        screen.close()
    if detached:
        sys.stderr.write("\n[console detached]\n")
        return 0
    sys.stderr.write(f"\n[the exporter closed the console: {screen.ended_by}]\n")
    return 1


def _type(
    stdin_fd: int, screen: _Screen, stream: BlockingStream, reader: EscapeReader, actions: Actions
) -> bool:
    """Send keystrokes until the user detaches or the terminal closes (True) or the stream ends (False)."""
    while True:
        ready, _, _ = select.select([stdin_fd, screen.wake_read], [], [])
        if screen.wake_read in ready:
            return False
        data = os.read(stdin_fd, 1024)
        if not data:
            return True
        for value in reader.feed(data):
            if isinstance(value, bytes):
                try:
                    stream.send(value)
                except BrokenPipeError:
                    return False
            elif value == DETACH:
                return True
            elif value == HELP:
                say(KEY_TABLE.replace("\n", "\r\n"))
            elif value == BREAK:
                say(actions.send_break())
            elif value == POWER_CYCLE:
                say(actions.power_cycle())
            else:
                say(value)
