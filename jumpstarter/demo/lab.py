"""Start and stop the demo lab: the fake board process and an exporterd serving it.

Used by `jumpstarter demo`, by the tests and by the benchmarks, so all three
exercise the same real processes.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import IO, Any

from jumpstarter.backoff import Backoff, Deadline
from jumpstarter.errors import JumpstarterError

DEMO_CONFIG = """\
apiVersion: jumpstarter.dev/v1alpha1
kind: ExporterConfig
metadata:
  namespace: demo
  name: demo
description: Jumpstarter demo board (simulated, on a pseudo-terminal)
motd: This is the demo board. Try `jumpstarter power on` and `jumpstarter serial console`.
export:
  power:
    type: power.http
    description: HTTP power switch of the demo board
    config:
      on: http://127.0.0.1:{port}/power/on
      off: http://127.0.0.1:{port}/power/off
      state: {{url: "http://127.0.0.1:{port}/power", on_pattern: '"on"'}}
  serial:
    type: serial
    description: Serial console of the demo board
    config:
      url: {tty}
      baudrate: 115200
  echo:
    type: network.echo
    description: A loopback service (echoes what it receives)
  tools:
    type: shell
    description: Commands run on the lab host
    config:
      methods:
        hello: 'echo "hello from the lab host, $1"'
        uptime: uptime
"""


def wait_for(
    predicate: Callable[[], object],
    timeout: float,
    what: str,
    process: subprocess.Popen[Any] | None = None,
) -> None:
    """Poll `predicate` until true; RuntimeError if `process` exited, TimeoutError after `timeout`."""
    backoff = Backoff(start=0.005, cap=0.05, deadline=Deadline(timeout))
    while not predicate():
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {process.returncode}")
        if not backoff.sleep():
            if predicate():  # the last pause may have been cut short by the deadline: one final look
                return
            raise TimeoutError(f"{what}: not ready within {timeout:g}s")


def socket_answers(path: str) -> bool:
    from jumpstarter.client.connection import Connection
    from jumpstarter.errors import JumpstarterError

    if not os.path.exists(path):
        return False
    try:
        connection = Connection(path)
        try:
            connection.report(timeout=1)
            return True
        finally:
            connection.close()
    except JumpstarterError:
        return False


class DemoLab:
    """`with DemoLab() as lab:` runs the fake board and its exporterd in a temporary directory."""

    def __init__(
        self, directory: str | None = None, boot_delay: float = 0.05, log: IO[bytes] | None = None
    ) -> None:
        self.owns_directory = directory is None
        self.directory = directory or tempfile.mkdtemp(prefix="jumpstarter-demo-")
        self.boot_delay = boot_delay
        self.tty = os.path.join(self.directory, "ttyDEMO")
        self.socket = os.path.join(self.directory, "demo.sock")
        self.config = os.path.join(self.directory, "demo.yaml")
        self.port_file = os.path.join(self.directory, "switch.port")
        self.exporter_log = os.path.join(self.directory, "exporterd.log")
        self.board: subprocess.Popen[bytes] | None = None
        self.exporter: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start_board(self) -> None:
        if os.path.exists(self.port_file):
            os.unlink(self.port_file)
        self.board = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jumpstarter.demo.fakeboard",
                "--link",
                self.tty,
                "--http",
                "127.0.0.1:0",
                "--port-file",
                self.port_file,
                "--boot-delay",
                str(self.boot_delay),
            ],
            stdin=subprocess.DEVNULL,
        )
        wait_for(lambda: os.path.exists(self.port_file), 10, "fake board", self.board)
        with open(self.port_file) as handle:
            self.port = int(handle.read())

    def start_exporter(self) -> None:
        with open(self.config, "w") as handle:
            handle.write(DEMO_CONFIG.format(port=self.port, tty=self.tty))
        with open(self.exporter_log, "ab") as log:
            self.exporter = subprocess.Popen(
                [sys.executable, "-m", "exporterd.main", "--config", self.config, "--socket", self.socket],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_for(lambda: socket_answers(self.socket), 15, "exporterd", self.exporter)
        except (RuntimeError, TimeoutError) as exc:
            with open(self.exporter_log, errors="replace") as handle:
                tail = handle.read()[-2000:]
            raise JumpstarterError(f"{exc}; its output:\n{tail}") from None

    def stop_process(self, process: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
        if process is not None and process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def __enter__(self) -> DemoLab:
        try:
            self.start_board()
            self.start_exporter()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_process(self.exporter)
        self.stop_process(self.board)
        if self.owns_directory:
            shutil.rmtree(self.directory, ignore_errors=True)
