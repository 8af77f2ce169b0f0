"""A scripted fake board: a serial console on a pseudo-terminal plus an HTTP power switch.

    python -m jumpstarter.demo.fakeboard --link /tmp/lab/ttyDEMO --http 127.0.0.1:0 --port-file /tmp/lab/port

The pty's other end (symlinked at --link) behaves like a USB serial adapter
wired to the board: it stays present while the board is off. The switch:
`POST /power/on`, `POST /power/off`, `GET /power` -> {"state": "on"|"off"}.
When on, the board prints a boot log, a login prompt, and runs a tiny shell
(`uname -a`, `echo`, `uptime`, `cat /proc/version`, `poweroff`).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import sys
import threading
import time
import tty
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BANNER = "Jumpstarter demo board"
BOOT_LOG = [
    "U-Boot 2024.01 (Jan 01 2024 - 00:00:00 +0000) demo-board",
    "DRAM:  1 GiB",
    "Hit any key to stop autoboot:  0",
    "Starting kernel ...",
    "[    0.000000] Linux version 6.1.0-demo (builder@lab) #1 SMP PREEMPT",
    "[    0.120000] Machine model: Jumpstarter Demo Board",
    "[    0.950000] Run /sbin/init as init process",
    f"Welcome to {BANNER}!",
    "",
]


class Board:
    def __init__(self, master: int, boot_delay: float) -> None:
        self.master = master
        self.boot_delay = boot_delay
        self.lock = threading.Lock()
        self.on = False
        self.generation = 0
        self.logged_in = False
        self.booted = False
        self.line = b""

    def write(self, text: str, generation: int | None = None) -> None:
        with self.lock:
            if generation is not None and generation != self.generation:
                return
            data = text.replace("\n", "\r\n").encode()
            try:
                os.write(self.master, data)
            except OSError:
                pass

    def power(self, on: bool) -> None:
        with self.lock:
            if on == self.on:
                return
            self.on = on
            self.generation += 1
            generation = self.generation
            self.logged_in = False
            self.booted = False
            self.line = b""
        if on:
            threading.Thread(target=self.boot, args=(generation,), daemon=True).start()

    def boot(self, generation: int) -> None:
        for line in BOOT_LOG:
            time.sleep(self.boot_delay)
            self.write(line + "\n", generation)
        with self.lock:
            if generation != self.generation:
                return
            self.booted = True
        self.write("demo login: ", generation)

    def feed(self, data: bytes) -> None:
        if not self.on or not self.booted:
            return  # an unpowered board ignores its console
        for byte in data:
            char = bytes([byte])
            if char in (b"\r", b"\n"):
                self.write("\n")
                self.handle(self.line.decode("utf-8", "replace").strip())
                self.line = b""
            elif char in (b"\x7f", b"\x08"):
                self.line = self.line[:-1]
            else:
                self.line += char
                self.write(char.decode("utf-8", "replace"))  # echo, like a real tty

    def handle(self, line: str) -> None:
        if not self.logged_in:
            if line:
                self.logged_in = True
                self.write(f"Last login: never\n{self.prompt()}")
            else:
                self.write("demo login: ")
            return
        if line == "uname -a":
            self.write("Linux demo 6.1.0-demo #1 SMP PREEMPT armv8l GNU/Linux\n")
        elif line.startswith("echo"):
            self.write(line[5:] + "\n")
        elif line == "uptime":
            self.write(" 00:00:42 up 0 min,  1 user,  load average: 0.00, 0.00, 0.00\n")
        elif line == "cat /proc/version":
            self.write("Linux version 6.1.0-demo (builder@lab) #1 SMP PREEMPT\n")
        elif line in ("poweroff", "reboot"):
            self.write("reboot: Power down\n")
            self.power(False)
            if line == "reboot":
                self.power(True)
            return
        elif line:
            self.write(f"sh: {line.split()[0]}: not found\n")
        self.write(self.prompt())

    def prompt(self) -> str:
        return "root@demo:~# "


def make_handler(board: Board) -> type[BaseHTTPRequestHandler]:
    class Switch(BaseHTTPRequestHandler):
        def _reply(self, code: int, body: dict[str, str]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/power":
                self._reply(200, {"state": "on" if board.on else "off"})
            else:
                self._reply(404, {"error": "try /power"})

        def do_POST(self) -> None:  # noqa: N802
            length = min(int(self.headers.get("Content-Length") or 0), 4096)
            self.rfile.read(length)
            if self.path in ("/power/on", "/power/off"):
                board.power(self.path.endswith("/on"))
                self._reply(200, {"state": "on" if board.on else "off"})
            else:
                self._reply(404, {"error": "try /power/on or /power/off"})

        def log_message(self, format: str, *args: object) -> None:  # keep stdout clean
            return None

    return Switch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A fake board on a pty with an HTTP power switch.")
    parser.add_argument("--link", required=True, help="symlink to create for the board's serial port")
    parser.add_argument("--http", default="127.0.0.1:0", help="switch address (loopback), port 0 = any")
    parser.add_argument("--port-file", help="write the switch's port here once listening")
    parser.add_argument("--boot-delay", type=float, default=0.05, help="seconds between boot log lines")
    parser.add_argument("--on", action="store_true", help="start powered on")
    args = parser.parse_args(argv)

    master, slave = os.openpty()
    tty.setraw(slave)
    path = os.ttyname(slave)
    tmp = args.link + ".tmp"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(path, tmp)
    os.replace(tmp, args.link)
    board = Board(master, args.boot_delay)

    host, _, port = args.http.rpartition(":")
    server = ThreadingHTTPServer((host or "127.0.0.1", int(port)), make_handler(board))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    if args.port_file:
        with open(args.port_file + ".tmp", "w") as handle:
            handle.write(str(server.server_address[1]))
        os.replace(args.port_file + ".tmp", args.port_file)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if args.on:
        board.power(True)
    try:
        while not stop.is_set():
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 4096)
                except OSError:
                    continue  # nobody has the port open right now
                board.feed(data)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        if os.path.islink(args.link) and os.readlink(args.link) == path:
            os.unlink(args.link)
    return 0


if __name__ == "__main__":
    sys.exit(main())
