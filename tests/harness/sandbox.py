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

Exporterds run as an unprivileged user, as on a real lab host: the caller when
it is not root, else `nobody` (or `user=`). The sandbox then gives that user what
the installer and udev give `jumpstarter`: its devices (the ptys), its socket
directory (through `jumpstarter lab render`, the real one) and an interpreter it
may run (a venv of the system's Python that sees this checkout, when ours lives
where the user cannot reach, e.g. under /root).
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import time
from typing import Any

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
_pythons: dict[str, str] = {}


def default_user() -> str:
    """Who the sandbox's exporterds run as: the caller, or `nobody` when the caller is root."""
    return pwd.getpwuid(os.geteuid()).pw_name if os.geteuid() != 0 else "nobody"


def as_user(user: str) -> dict[str, Any]:
    """subprocess keyword arguments that run a child as `user` with its groups, as supervisord does."""
    entry = pwd.getpwnam(user)
    groups = os.getgrouplist(entry.pw_name, entry.pw_gid)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": groups}


def _can_run(user: str, python: str) -> bool:
    if pwd.getpwnam(user).pw_uid == os.geteuid():
        return True
    probe = [python, "-c", "import exporterd, supervisor, grpc"]
    try:
        return subprocess.run(probe, capture_output=True, cwd="/", **as_user(user)).returncode == 0
    except PermissionError:
        return False


def runnable_python(user: str) -> str:
    """An interpreter `user` may run that imports this checkout and its dependencies."""
    if user in _pythons:
        return _pythons[user]
    if _can_run(user, sys.executable):
        _pythons[user] = sys.executable
        return sys.executable
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    base = shutil.which(version, path="/usr/local/bin:/usr/bin:/bin")
    if base is None:
        raise RuntimeError(f"{user} cannot run {sys.executable} and there is no system {version}")
    venv = tempfile.mkdtemp(prefix="jslab-py-", dir="/tmp")
    atexit.register(shutil.rmtree, venv, True)
    os.chmod(venv, 0o755)
    subprocess.run([base, "-m", "venv", "--without-pip", venv], check=True)
    checkout = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    site = subprocess.run(
        [os.path.join(venv, "bin", "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    paths = [checkout, sysconfig.get_path("purelib"), sysconfig.get_path("platlib")]
    with open(os.path.join(site, "jumpstarter-sandbox.pth"), "w") as handle:
        handle.write("\n".join(dict.fromkeys(paths)) + "\n")
    python = os.path.join(venv, "bin", "python")
    if not _can_run(user, python):
        raise RuntimeError(f"{user} cannot import this checkout with {python}")
    _pythons[user] = python
    return python


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

    def __init__(self, directory: str | None = None, user: str | None = None) -> None:
        self.owns_directory = directory is None
        self.directory = directory or tempfile.mkdtemp(prefix="jslab-", dir="/tmp")
        os.chmod(self.directory, 0o755)  # the exporterds' user reads the inventory here
        self.user = user or default_user()
        self.uid = pwd.getpwnam(self.user).pw_uid
        self.python = runnable_python(self.user)
        self.status_file = os.path.join(self.directory, "lab-status.json")
        self.inventory = os.path.join(self.directory, "inventory.yaml")
        self.include = os.path.join(self.directory, "supervisor.d", "boards.conf")
        # the udev rules `lab render`/`reload` write: here, never the host's /run/udev/rules.d
        self.udev_rules = os.path.join(self.directory, "udev", "99-jumpstarter-boards.rules")
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
        tail = f"user: {self.user}\nstatus_file: {self.status_file}\n"  # last: line numbers stay put
        body = textwrap.dedent(boards_yaml).strip("\n") + "\n"
        text = head + body + tail
        temp = self.inventory + ".new"
        with open(temp, "w") as handle:
            handle.write(text)
        os.replace(temp, self.inventory)

    def render(self) -> None:
        """`jumpstarter lab render --output` (as the service's ExecStartPre), with the user's interpreter."""
        args = [
            "lab",
            "render",
            "--inventory",
            self.inventory,
            "--supervisor",
            self.url,
            "--output",
            self.include,
        ]
        result = subprocess.run(
            [self.python, "-m", "jumpstarter.lab.cli", *args],
            env={**os.environ, "JUMPSTARTER_UDEV_RULES": self.udev_rules},
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0:
            raise RuntimeError(f"jumpstarter lab render failed: {result.stderr}")

    def tty(self) -> str:
        """A new pseudo-terminal; its slave path is the "device node" (the master stays open)."""
        master, slave = os.openpty()
        path = os.ttyname(slave)
        os.close(slave)
        self._give(path)
        self.masters.append(master)
        return path

    def disk(self, name: str, size: int = 1024 * 1024) -> str:
        """A plain file standing in for a block device."""
        path = os.path.join(self.directory, name)
        with open(path, "wb") as handle:
            handle.truncate(size)
        self._give(path)
        return path

    def _give(self, path: str) -> None:
        """A device for the exporterds' user, as udev gives ttys to dialout and disks to disk."""
        if self.uid != os.geteuid():
            os.chown(path, self.uid, -1)

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
            "JUMPSTARTER_UDEV_RULES": self.udev_rules,
        }
        return subprocess.run(
            [self.python, "-m", "jumpstarter.lab.cli", "lab", *args],
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
