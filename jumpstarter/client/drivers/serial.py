"""Serial console client: `board.serial.stream()`, `console`, `pipe`, `expect`."""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

from jumpstarter.client.base import DriverClient
from jumpstarter.errors import DriverMethodNotFound, DriverNotImplemented, JumpstarterError
from jumpstarter.interfaces.serial import SerialInterface

POWER_CYCLE_WAIT = 2.0


class SerialClient(DriverClient):
    """Serial console: attach interactively, pipe, or expect text."""

    interface = SerialInterface

    def open(self):  # type: ignore[no-untyped-def]
        """The console as a byte stream (context manager with send/receive)."""
        return self.stream("connect")

    def console(self):  # type: ignore[no-untyped-def]
        """An expect-style helper over the console stream: `console.expect("login:")`."""
        from jumpstarter.client.expect import Console

        return Console(self.stream("connect"))

    def attach(self):  # type: ignore[no-untyped-def]
        """The console stream, starting with the exporter's recent scrollback (plain `open()` on
        exporters without it)."""
        try:
            return self.stream("attach")
        except DriverMethodNotFound:  # an upstream or older exporter
            return self.open()

    def send_break(self, duration: float = 0.25) -> None:
        """Hold the serial line in the break condition for `duration` seconds."""
        self.call("send_break", float(duration))

    def console_logs(self) -> list[dict[str, Any]]:
        """The console logs the exporter keeps: session (lease name), started (UTC), size, current."""
        return list(self.call("console_logs"))

    def read_console_log(self, lease: str | None = None) -> Iterator[bytes]:
        """A session's console log in chunks: the current session's, or the newest of lease `lease`."""
        from jumpstarter.values import b64decode

        for chunk in self.streamingcall("read_console_log", lease):
            yield b64decode(chunk)

    def set_dtr(self, value: bool) -> None:
        self.call("set_dtr", value)

    def set_rts(self, value: bool) -> None:
        self.call("set_rts", value)

    def read_scrollback(self) -> bytes:
        """The most recent console output the exporter kept."""
        from jumpstarter.values import b64decode

        return b64decode(self.call("read_scrollback"))

    def close_port(self) -> None:
        """Force-close the exporter's port (it is reopened on the next attach)."""
        self.call("close")

    def add_cli(self, parser: argparse.ArgumentParser) -> None:
        from jumpstarter.client import pipes

        sub = parser.add_subparsers(title="commands", metavar="COMMAND")
        from jumpstarter.client.console import KEY_TABLE

        console = sub.add_parser(
            "console",
            aliases=["start-console"],
            help="interactive console (Ctrl-] . to leave, Ctrl-] ? for the escape keys)",
            description=textwrap.fill(
                "Attach this terminal to the serial console in raw mode, starting with the last lines "
                "the board printed. Several people can attach at once; everybody sees the output. "
                "Exits 0 when you detach, 1 when the exporter ends the console."
            )
            + "\n\n"
            + KEY_TABLE,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

        def run_console(a: argparse.Namespace) -> int:
            from jumpstarter.client.console import Actions, run

            actions = Actions(self._break_action, self._power_cycle_action(getattr(a, "board_root", None)))
            with self.attach() as stream:
                return run(stream, actions)

        console.set_defaults(func=run_console)

        log = sub.add_parser(
            "log",
            help="print a session's console log (the current one, or --lease ID's)",
            description="Print the console output the exporter logged for this session, or for a past "
            "lease with --lease (the board must have `console_log: DIR` in its serial config).",
        )
        log.add_argument("--lease", metavar="ID", help="a past lease's log (its newest session)")
        log.add_argument("--list", action="store_true", help="list the kept logs instead")

        def run_log(a: argparse.Namespace) -> int:
            if a.list:
                for entry in self.console_logs():
                    mark = " (current)" if entry["current"] else ""
                    print(f"{entry['session']:<40} {entry['started']}  {int(entry['size']):>10} bytes{mark}")
                return 0
            lease = a.lease.rsplit("/", 1)[-1] if a.lease else None  # `namespaces/x/leases/ID` works too
            for chunk in self.read_console_log(lease):
                sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
            return 0

        log.set_defaults(func=run_log)

        pipe = sub.add_parser(
            "pipe",
            help="copy console output to stdout (and piped stdin to the console)",
            description="Copy the console output to stdout or a file. When stdin is not a terminal, "
            "it is sent to the console too, then the input side is closed.",
        )
        pipe.add_argument("-o", "--output", metavar="FILE", help="write output to FILE instead of stdout")
        pipe.add_argument("--no-input", action="store_true", help="never send stdin to the console")

        def run_pipe(a: argparse.Namespace) -> int:
            send_input = not a.no_input and not sys.stdin.isatty()
            with self.open() as stream:
                if a.output:
                    with open(a.output, "ab") as out:
                        return pipes.pipe_stdio(stream, send_input=send_input, output=out)
                return pipes.pipe_stdio(stream, send_input=send_input)

        pipe.set_defaults(func=run_pipe)

        expect = sub.add_parser("expect", help="wait until the console prints TEXT (exit 1 on timeout)")
        expect.add_argument("text")
        expect.add_argument("-t", "--timeout", type=float, default=30.0, help="seconds (default 30)")
        expect.add_argument("-s", "--send", metavar="LINE", help="send LINE (plus newline) after attaching")

        def run_expect(a: argparse.Namespace) -> int:
            with self.console() as con:
                if a.send is not None:
                    con.sendline(a.send)
                con.expect(a.text, timeout=a.timeout)
                sys.stdout.write(con.before + con.after)
            return 0

        expect.set_defaults(func=run_expect)

    def _break_action(self) -> str:
        try:
            self.send_break()
        except DriverNotImplemented:
            return "this serial driver cannot send a break"
        except JumpstarterError as exc:
            return f"break failed: {exc}"
        return "break sent"

    def _power_cycle_action(self, root: DriverClient | None):  # type: ignore[no-untyped-def]
        def cycle() -> str:
            from jumpstarter.client.console import say

            power, why = power_for(self, root)
            if power is None:
                return why
            say(f"power cycle: {power.path} off, on again in {POWER_CYCLE_WAIT:g} s")
            try:
                power.cycle(POWER_CYCLE_WAIT)
            except JumpstarterError as exc:
                return f"power cycle failed: {exc}"
            return "power cycle: on"

        return cycle


def power_for(serial: DriverClient, root: DriverClient | None) -> tuple[Any, str]:
    """The board's power driver for this console (its sibling first), or None and why not."""
    from jumpstarter.client.drivers.power import PowerClient

    if root is None:
        return None, "power cycle unavailable here: use `jumpstarter power cycle`"
    found = [c for c in root.walk() if isinstance(c, PowerClient)]
    parent = serial.path.rpartition(".")[0]
    siblings = [c for c in found if c.path.rpartition(".")[0] == parent]
    if len(siblings) == 1:
        return siblings[0], ""
    if len(found) == 1:
        return found[0], ""
    if not found:
        return None, "this board has no power driver: power cycle is not available"
    names = ", ".join(c.path for c in found)
    return None, f"several power drivers ({names}): use `jumpstarter NAME cycle`"
