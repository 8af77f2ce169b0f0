"""A throwaway lab host: a real supervisord, an inventory, udev events fed to jumpstarter-hotplug.

Used by the lab tests and the hotplug benchmark, so both run the same real
processes (DESIGN.md §8): supervisord from PyPI with a generated config, one
exporterd per board started through XML-RPC, pseudo-terminals as the boards'
serial devices, and udev events given to `jumpstarter-hotplug` as udev gives
them (the event's properties as the environment, nothing else).

    with LabSandbox() as lab:
        lab.write_inventory(BOARDS)
        lab.start()
        tty = lab.tty()
        lab.hotplug(tty_event("add", tty, "A10"))
        lab.wait_serving("rpi4-01", 3)
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

from jumpstarter.demo.lab import socket_answers, wait_for
from jumpstarter.lab.supervisor import STOPPED_STATES, Supervisor, SupervisorError, program_name

SUPERVISORD_CONF = """\
[unix_http_server]
file={directory}/supervisor.sock
chmod=0700

[supervisord]
logfile={directory}/supervisord.log
pidfile={directory}/supervisord.pid
childlogdir={directory}/log
nodaemon=true
silent=true
loglevel=info

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[include]
files = {directory}/supervisor.d/*.conf
"""

_seqnum = itertools.count(4000)


def udev_event(action: str, subsystem: str, devnode: str, devpath: str, **properties: str) -> dict[str, str]:
    """The environment udev gives a `RUN+=` program: the event's properties and nothing else."""
    return {
        "ACTION": action,
        "DEVPATH": devpath,
        "SUBSYSTEM": subsystem,
        "DEVNAME": devnode,
        "SEQNUM": str(next(_seqnum)),
        "USEC_INITIALIZED": str(int(time.monotonic() * 1e6)),
        "TAGS": ":systemd:",
        "CURRENT_TAGS": ":systemd:",
        **properties,
    }


def tty_event(action: str, devnode: str, serial: str, interface: str = "00") -> dict[str, str]:
    """A USB serial adapter's tty (as an FTDI FT4232H port would be announced) at `devnode`."""
    port = f"1-1:1.{int(interface)}"
    name = f"ttyUSB{serial}{interface}"
    return udev_event(
        action,
        "tty",
        devnode,
        f"/devices/platform/jumpstarter-test/usb1/1-1/{port}/{name}/tty/{name}",
        MAJOR="188",
        MINOR=str(int(interface)),
        DEVLINKS=f"/dev/serial/by-id/usb-FTDI_FT4232H_{serial}-if{interface}-port0",
        ID_BUS="usb",
        ID_VENDOR_ID="0403",
        ID_MODEL_ID="6011",
        ID_VENDOR="FTDI",
        ID_MODEL="FT4232H",
        ID_SERIAL=f"FTDI_FT4232H_{serial}",
        ID_SERIAL_SHORT=serial,
        ID_USB_INTERFACE_NUM=interface,
        ID_USB_DRIVER="ftdi_sio",
        ID_PATH=f"platform-jumpstarter-test-usb-0:1:1.{int(interface)}",
    )


def block_event(action: str, devnode: str, serial: str) -> dict[str, str]:
    """A USB mass-storage disk (an SD card behind a mux) at `devnode`."""
    name = f"sd{serial.lower()}"
    return udev_event(
        action,
        "block",
        devnode,
        f"/devices/platform/jumpstarter-test/usb1/1-2/1-2:1.0/host0/target0:0:0/0:0:0:0/block/{name}",
        DEVTYPE="disk",
        MAJOR="8",
        MINOR="0",
        ID_BUS="usb",
        ID_VENDOR_ID="04e8",
        ID_MODEL_ID="6001",
        ID_SERIAL=f"SDWire_{serial}",
        ID_SERIAL_SHORT=serial,
        ID_PATH="platform-jumpstarter-test-usb-0:2:1.0-scsi-0:0:0:0",
    )


class LabSandbox:
    """A lab host in a short /tmp directory (unix socket paths must stay under ~107 bytes)."""

    def __init__(self, directory: str | None = None) -> None:
        self.owns_directory = directory is None
        self.directory = directory or tempfile.mkdtemp(prefix="jslab-", dir="/tmp")
        self.inventory = os.path.join(self.directory, "inventory.yaml")
        self.include = os.path.join(self.directory, "supervisor.d", "boards.conf")
        self.socket_dir = os.path.join(self.directory, "boards")
        self.device_dir = os.path.join(self.directory, "devices")
        self.log_dir = os.path.join(self.directory, "log")
        self.url = "unix://" + os.path.join(self.directory, "supervisor.sock")
        self.supervisord: subprocess.Popen[bytes] | None = None
        self.masters: list[int] = []
        for path in (self.socket_dir, self.log_dir, os.path.dirname(self.include)):
            os.makedirs(path, exist_ok=True)

    # -- files ---------------------------------------------------------------------------------

    def write_inventory(self, boards_yaml: str) -> None:
        """The inventory: our directories, then `boards_yaml` (a `boards:` list, any indentation)."""
        head = f"socket_dir: {self.socket_dir}\ndevice_dir: {self.device_dir}\nlog_dir: {self.log_dir}\n"
        text = head + textwrap.dedent(boards_yaml).lstrip("\n")
        temp = self.inventory + ".new"
        with open(temp, "w") as handle:
            handle.write(text)
        os.replace(temp, self.inventory)

    def render(self) -> None:
        from jumpstarter.config.inventory import load_inventory
        from jumpstarter.lab.render import render, write_atomic

        write_atomic(self.include, render(load_inventory(self.inventory), self.url))

    def tty(self) -> str:
        """A new pseudo-terminal; its slave path is the "device node" (the master stays open)."""
        master, slave = os.openpty()
        path = os.ttyname(slave)
        os.close(slave)
        self.masters.append(master)
        return path

    def disk(self, name: str, size: int = 1024 * 1024) -> str:
        """A plain file standing in for a block device."""
        path = os.path.join(self.directory, name)
        with open(path, "wb") as handle:
            handle.truncate(size)
        return path

    # -- processes -----------------------------------------------------------------------------

    def start(self) -> None:
        """Render the include and start supervisord; returns when its XML-RPC answers."""
        self.render()
        conf = os.path.join(self.directory, "supervisord.conf")
        with open(conf, "w") as handle:
            handle.write(SUPERVISORD_CONF.format(directory=self.directory))
        self.supervisord = subprocess.Popen(
            [sys.executable, "-m", "supervisor.supervisord", "-c", conf],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.directory,
        )
        wait_for(self._ready, 15, "supervisord", self.supervisord)

    def _ready(self) -> bool:
        try:
            with self.client() as client:
                return client.state() == "RUNNING"
        except SupervisorError:
            return False

    def client(self) -> Supervisor:
        return Supervisor(self.url)

    def stop(self) -> None:
        """Stop every exporterd at once, then shut supervisord down; kill what is left after 15 s."""
        if self.supervisord is None:
            return
        pids: list[int] = []
        if self.supervisord.poll() is None:
            with contextlib.suppress(SupervisorError, TimeoutError), self.client() as client:
                pids = [p.pid for p in client.processes().values() if p.pid]
                client.stop_all()
                wait_for(
                    lambda: all(p.state in STOPPED_STATES for p in client.processes().values()), 15, "stop"
                )
            with contextlib.suppress(SupervisorError), self.client() as client:
                client.shutdown()
            try:
                self.supervisord.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.supervisord.kill()
                self.supervisord.wait()
        for pid in pids:  # the exporterds we had supervisord start, if it could not stop them
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.supervisord = None

    def close(self) -> None:
        self.stop()
        for master in self.masters:
            with contextlib.suppress(OSError):
                os.close(master)
        self.masters.clear()
        if self.owns_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> LabSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- commands ------------------------------------------------------------------------------

    def hotplug(self, event: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
        """Run jumpstarter-hotplug as udev would: `event` is its whole environment."""
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "jumpstarter.lab.hotplug",
                "--inventory",
                self.inventory,
                "--supervisor",
                self.url,
                *args,
            ],
            env=event,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
        )

    def lab(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run `jumpstarter lab ARGS` against this sandbox."""
        env = {
            **os.environ,
            "JUMPSTARTER_INVENTORY": self.inventory,
            "JUMPSTARTER_SUPERVISOR": self.url,
            "JUMPSTARTER_SUPERVISOR_INCLUDE": self.include,
        }
        return subprocess.run(
            [sys.executable, "-m", "jumpstarter.lab.cli", "lab", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )

    # -- observations ----------------------------------------------------------------------------

    def socket(self, board: str) -> str:
        return os.path.join(self.socket_dir, f"{board}.sock")

    def state(self, board: str) -> tuple[str, int]:
        with self.client() as client:
            info = client.process(program_name(board))
        return (info.state, info.pid) if info else ("NOT LOADED", 0)

    def pid(self, board: str) -> int:
        return self.state(board)[1]

    def board_log(self, board: str) -> str:
        with (
            contextlib.suppress(OSError),
            open(os.path.join(self.log_dir, f"{program_name(board)}.log")) as f,
        ):
            return f.read()[-3000:]
        return ""

    def wait_serving(self, board: str, timeout: float) -> None:
        """Until the board's socket answers GetReport (AssertionError with its log otherwise)."""
        try:
            wait_for(lambda: socket_answers(self.socket(board)), timeout, f"board {board}")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}; state {self.state(board)}; log:\n{self.board_log(board)}") from None

    def wait_stopped(self, board: str, timeout: float) -> None:
        """Until the board's exporterd is gone and its socket removed."""
        wait_for(
            lambda: not os.path.exists(self.socket(board)) and self.state(board)[0] in ("STOPPED", "EXITED"),
            timeout,
            f"board {board} stopping",
        )
