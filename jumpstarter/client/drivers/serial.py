"""Serial console client: `board.serial.stream()`, `console`, `pipe`, `expect`."""

from __future__ import annotations

import argparse
import sys

from jumpstarter.client.base import DriverClient
from jumpstarter.interfaces.serial import SerialInterface


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
        console = sub.add_parser(
            "console",
            aliases=["start-console"],
            help="interactive console (Ctrl-B three times to leave)",
            description="Attach this terminal to the serial console in raw mode. Several people can "
            "attach at once; everybody sees the output. Leave with Ctrl-B pressed three times.",
        )

        def run_console(a: argparse.Namespace) -> int:
            with self.open() as stream:
                return pipes.console(stream)

        console.set_defaults(func=run_console)

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
