"""`jumpstarter serial console` as a person uses it: the real CLI in a pseudo-terminal, a real exporterd.

The board is the demo fake board on a pty, or (to see a serial break, which a pty cannot carry)
a pyserial RFC 2217 server in this process whose port records every break condition.
"""

from __future__ import annotations

import os
import pty
import signal
import socket
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from typing import IO, Any

import pytest

import jumpstarter
from jumpstarter.demo.lab import DemoLab, wait_for

from .conftest import CLI, exporter_config, read_until

ESC = b"\x1d"  # Ctrl-]
WAIT = 30.0  # generous: the machine is shared


class Terminal:
    """The CLI running on a pseudo-terminal; `screen` reads what it shows."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        controller, terminal = pty.openpty()
        self.process = subprocess.Popen(argv, env=env, stdin=terminal, stdout=terminal, stderr=terminal)
        os.close(terminal)
        self.controller = controller
        self.screen: IO[bytes] = os.fdopen(controller, "rb", buffering=0)
        self.seen = ""

    def until(self, text: str, timeout: float = WAIT) -> str:
        self.seen += read_until(self.screen, text, timeout)
        return self.seen

    def type(self, keys: bytes) -> None:
        os.write(self.controller, keys)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.screen.close()


@pytest.fixture
def terminal(cli_env: dict[str, str]) -> Iterator[Any]:
    opened: list[Terminal] = []

    def start(*args: str) -> Terminal:
        opened.append(Terminal([*CLI, *args], cli_env))
        return opened[-1]

    try:
        yield start
    finally:
        for t in opened:
            t.close()


def booted(lab: DemoLab) -> None:
    """Power-cycle the demo board and wait until it printed its login prompt."""
    with jumpstarter.connect(lab.socket) as board, board.serial.console() as console:
        board.power.off()
        board.power.on()
        console.expect("login:", timeout=WAIT)


def test_attaching_shows_the_recent_console_output_before_any_key(demo_lab: DemoLab, terminal):
    booted(demo_lab)

    console = terminal("--host", demo_lab.socket, "serial", "console")

    seen = console.until("demo login:")  # nothing typed: the old console stayed blank here
    assert "Welcome to Jumpstarter demo board!" in seen


def test_detaching_with_the_escape_keys_says_only_detached_and_exits_0(demo_lab: DemoLab, terminal):
    console = terminal("--host", demo_lab.socket, "serial", "console")
    console.until("console attached")

    console.type(ESC + b".")

    seen = console.until("[console detached]")
    assert console.process.wait(timeout=WAIT) == 0
    assert "closed" not in seen, seen


def test_killing_the_exporter_ends_the_console_with_the_reason_and_exit_1_without_a_key(
    demo_lab: DemoLab, terminal
):
    console = terminal("--host", demo_lab.socket, "serial", "console")
    console.until("console attached")

    assert demo_lab.exporter is not None
    demo_lab.exporter.send_signal(signal.SIGKILL)

    seen = console.until("[the exporter closed the console: ")
    assert console.process.wait(timeout=WAIT) == 1  # no key was pressed
    assert "connection to the exporter was lost" in seen.split("the exporter closed the console: ")[1]
    assert "detached" not in seen


def test_power_cycle_escape_reboots_the_board_through_its_power_driver(demo_lab: DemoLab, terminal):
    with jumpstarter.connect(demo_lab.socket) as board:
        board.power.off()
        console = terminal("--host", demo_lab.socket, "serial", "console")
        console.until("console attached")

        console.type(ESC + b"p")

        seen = console.until("[power cycle: on]")
        seen = console.until("Welcome to Jumpstarter demo board!")
        assert seen.index("power cycle: power off") < seen.rindex("U-Boot 2024.01")
        with urllib.request.urlopen(f"http://127.0.0.1:{demo_lab.port}/power", timeout=WAIT) as switch:
            assert b'"on"' in switch.read()  # it was off before the key
        console.type(ESC + b"d")
        console.until("[console detached]")
        assert console.process.wait(timeout=WAIT) == 0


def test_help_key_lists_the_escape_keys_and_power_cycle_without_a_power_driver_says_so(exporterd, terminal):
    exporter = exporterd.start(exporter_config("serial: {type: serial, config: {url: 'loop://'}}"))
    console = terminal("--host", exporter.socket, "serial", "console")
    console.until("console attached")

    console.type(ESC + b"?")
    console.until("Ctrl-] b                 send a serial break")
    console.type(ESC + b"p")
    console.until("[this board has no power driver: power cycle is not available]")
    console.type(b"typed" + ESC + ESC + b"\r")  # Ctrl-] twice: one Ctrl-] reaches the board
    console.until("typed\x1d")
    console.type(ESC + b".")
    console.until("[console detached]")
    assert console.process.wait(timeout=WAIT) == 0


class _SocketWriter:
    """What pyserial's PortManager writes its telnet answers to."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn

    def write(self, data: bytes) -> None:
        self.conn.sendall(data)


class _BreakRecorder:
    """A pyserial RFC 2217 server on loopback; its port (a loop://) records break conditions."""

    def __init__(self) -> None:
        import serial
        from serial.urlhandler.protocol_loop import Serial as Loop

        breaks: list[bool] = []

        class Recording(Loop):  # type: ignore[misc]
            def _update_break_state(self) -> None:
                breaks.append(bool(self._break_state))

        self.breaks = breaks
        self.port = Recording(None, timeout=0.2)
        self.port.port = "loop://"
        self.port.open()
        self.serial = serial
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"rfc2217://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        from serial.rfc2217 import PortManager

        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            manager = PortManager(self.port, _SocketWriter(conn))
            threading.Thread(target=self._to_network, args=(conn, manager), daemon=True).start()
            try:
                while data := conn.recv(4096):
                    self.port.write(b"".join(manager.filter(data)))
            except OSError:
                pass

    def _to_network(self, conn: socket.socket, manager: Any) -> None:
        try:
            while True:  # ends when close() closes the port (its read raises)
                if data := self.port.read(self.port.in_waiting or 1):
                    conn.sendall(b"".join(manager.escape(data)))
        except OSError:
            pass

    def close(self) -> None:
        self.listener.close()
        self.port.close()


def test_break_escape_reaches_the_serial_port(exporterd, terminal):
    board = _BreakRecorder()
    try:
        exporter = exporterd.start(
            exporter_config(f"serial: {{type: serial, config: {{url: '{board.url}'}}}}")
        )
        console = terminal("--host", exporter.socket, "serial", "console")
        console.until("console attached")

        console.type(ESC + b"b")

        console.until("[break sent]")
        wait_for(lambda: board.breaks == [True, False], WAIT, "break on, then off, at the port")
        console.type(b"after the break\r")
        console.until("after the break")  # keystrokes still flow through the same port
    finally:
        board.close()


@pytest.fixture(scope="module")
def central() -> Iterator[Any]:
    from .central import close_central, start_central

    stack = start_central(prefix="jscon-")
    try:
        yield stack
    finally:
        close_central(stack)


def test_serial_log_prints_a_previous_leases_console_output(central, cli_env: dict[str, str]):
    """Two leases through controllerd + routerd; in the second, `serial log --lease FIRST` shows the first's."""
    from jumpstarter.client.remote import ControllerClient, short_name
    from jumpstarter.config.client import load_client_config

    exporter = central.create("exporter", "lab", "logboard", board="log")
    alice = central.create("client", "lab", "alice")
    serial = {"type": "serial", "config": {"url": "loop://", "console_log": f"{central.directory}/console"}}
    central.spawn_exporterd("logboard", exporter.config, {"serial": serial}, f"{central.directory}/lb.sock")
    env = {**cli_env, "PATH": f"{os.path.dirname(CLI[0])}{os.pathsep}{cli_env.get('PATH', '')}"}

    def lease_now() -> str:
        with ControllerClient(load_client_config(alice.config)) as controller:
            (lease,) = controller.list_leases()
            return short_name(lease.name)

    with jumpstarter.lease(selector="board=log", duration="5m", client=alice.config) as board:
        first = lease_now()
        with board.serial.console() as console:
            console.sendline("said during the first lease")
            console.expect("said during the first lease", timeout=WAIT)
    with jumpstarter.lease(selector="board=log", duration="5m", client=alice.config) as board:
        assert lease_now() != first
        with board.serial.console() as console:
            console.sendline("said during the second lease")
            console.expect("said during the second lease", timeout=WAIT)

    def jumpstarter_on_the_board(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, "run", "--client", alice.config, "-l", "board=log", "--", "jumpstarter", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )

    past = jumpstarter_on_the_board("serial", "log", "--lease", first)
    current = jumpstarter_on_the_board("serial", "log")
    listing = jumpstarter_on_the_board("serial", "log", "--list")
    unknown = jumpstarter_on_the_board("serial", "log", "--lease", "no-such-lease")

    assert past.returncode == 0, past.stderr
    assert "said during the first lease" in past.stdout
    assert "second lease" not in past.stdout
    assert current.returncode == 0 and "said during" not in current.stdout  # a third lease: a fresh log
    assert first in listing.stdout and listing.stdout.count("(current)") == 1, listing.stdout
    assert unknown.returncode == 1 and "no console log for lease 'no-such-lease'" in unknown.stderr
