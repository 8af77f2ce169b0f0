"""The one client of supervisord's XML-RPC interface (its own transport, over the unix socket).

    supervisor = Supervisor(default_url())
    supervisor.start("board-rpi4-01")          # returns at once (wait=False)

Every call has a socket timeout, so a stuck supervisord cannot hang udev or the CLI.
"""

from __future__ import annotations

import os
import socket
import time
import xmlrpc.client
from dataclasses import dataclass
from typing import Any

from jumpstarter.errors import JumpstarterError

DEFAULT_URL = "unix:///run/jumpstarter/supervisor.sock"
PROGRAM_PREFIX = "board-"
COLDPLUG = "jumpstarter-coldplug"
STATUS_LISTENER = "jumpstarter-status"  # the event listener that writes the lab status snapshot
STOPPED_STATES = ("STOPPED", "EXITED", "FATAL")


def default_url() -> str:
    return os.environ.get("JUMPSTARTER_SUPERVISOR") or DEFAULT_URL


def program_name(board: str) -> str:
    return PROGRAM_PREFIX + board


class SupervisorError(JumpstarterError):
    """supervisord could not be reached or refused a request; the message says what to do."""


@dataclass
class ProcessInfo:
    name: str
    state: str  # supervisord's statename: RUNNING, STARTING, BACKOFF, STOPPED, EXITED, FATAL, STOPPING
    pid: int
    description: str


@dataclass
class Changes:
    """What `apply_config` did to our process groups."""

    added: list[str]
    changed: list[str]
    removed: list[str]


class Supervisor:
    def __init__(self, url: str | None = None, timeout: float = 5.0) -> None:
        from supervisor.xmlrpc import SupervisorTransport

        self.url = url or default_url()
        transport = SupervisorTransport(None, None, serverurl=self.url)
        _apply_timeout(transport, timeout)
        # The host part is ignored for unix:// URLs: the transport connects to the socket.
        endpoint = self.url if self.url.startswith("http://") else "http://127.0.0.1"
        self._proxy = xmlrpc.client.ServerProxy(endpoint, transport=transport)
        self._transport = transport

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, *args: Any) -> Any:
        try:
            return getattr(self._proxy.supervisor, method)(*args)
        except xmlrpc.client.Fault:
            raise
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise SupervisorError(
                f"supervisord is not running at {self.url} ({exc.strerror or exc}); "
                "start it: systemctl start jumpstarter-lab"
            ) from None
        except PermissionError:
            raise SupervisorError(
                f"no permission to talk to supervisord at {self.url}: its control socket is "
                "root's (run this with sudo); `jumpstarter lab status` works for the jumpstarter group"
            ) from None
        except (OSError, xmlrpc.client.ProtocolError) as exc:
            raise SupervisorError(f"supervisord at {self.url}: {exc}") from None

    def state(self) -> str:
        return str(self._call("getState")["statename"])

    def processes(self) -> dict[str, ProcessInfo]:
        return {
            info["name"]: ProcessInfo(info["name"], info["statename"], int(info["pid"]), info["description"])
            for info in self._call("getAllProcessInfo")
        }

    def process(self, name: str) -> ProcessInfo | None:
        try:
            info = self._call("getProcessInfo", name)
        except xmlrpc.client.Fault as fault:
            if fault.faultCode == _faults().BAD_NAME:
                return None
            raise
        return ProcessInfo(info["name"], info["statename"], int(info["pid"]), info["description"])

    def start(self, name: str, stopping_grace: float = 0.5) -> str:
        """Ask supervisord to start `name` without waiting for it; returns what happened.

        A program still STOPPING (unplugged and plugged back at once) is given
        `stopping_grace` seconds to stop first: supervisord ignores a start then.
        """
        deadline = time.monotonic() + stopping_grace
        while True:
            info = self.process(name)
            if info is None:
                return "not loaded"
            if info.state != "STOPPING" or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        try:
            self._call("startProcess", name, False)
            return "started"
        except xmlrpc.client.Fault as fault:
            return _fault_outcome(fault)

    def stop(self, name: str, wait: bool = False) -> str:
        try:
            self._call("stopProcess", name, wait)
            return "stopped"
        except xmlrpc.client.Fault as fault:
            return _fault_outcome(fault)

    def apply_config(self) -> Changes:
        """Re-read the config files and apply the difference to our groups only.

        Added groups are added (autostart programs start), removed ones stopped
        and removed, changed ones stopped, removed and added again; every other
        group, and every unchanged board, is left alone.
        """
        added, changed, removed = self._call("reloadConfig")[0]
        ours = _is_ours
        result = Changes(
            [g for g in added if ours(g)], [g for g in changed if ours(g)], [g for g in removed if ours(g)]
        )
        for group in result.removed + result.changed:
            self._call("stopProcessGroup", group, True)
            self._call("removeProcessGroup", group)
        for group in result.changed + result.added:
            self._call("addProcessGroup", group)
        return result

    def stop_all(self) -> None:
        """Signal every program at once (supervisord's own shutdown stops one group per second)."""
        self._call("stopAllProcesses", False)

    def shutdown(self) -> None:
        self._call("shutdown")


def _is_ours(group: str) -> bool:
    return group.startswith(PROGRAM_PREFIX) or group in (COLDPLUG, STATUS_LISTENER)


def _faults() -> Any:
    from supervisor.xmlrpc import Faults

    return Faults


def _fault_outcome(fault: xmlrpc.client.Fault) -> str:
    faults = _faults()
    outcomes = {
        faults.ALREADY_STARTED: "already running",
        faults.NOT_RUNNING: "not running",
        faults.BAD_NAME: "not loaded",
        faults.SHUTDOWN_STATE: "supervisord is shutting down",
    }
    if fault.faultCode in outcomes:
        return outcomes[fault.faultCode]
    raise SupervisorError(f"supervisord: {fault.faultString}") from None


def _apply_timeout(transport: Any, timeout: float) -> None:
    """Give the transport's connections a socket timeout (supervisor's unix connection has none)."""
    make = transport._get_connection

    def connection() -> Any:
        conn = make()
        conn.timeout = timeout  # honoured by http:// connections
        if hasattr(conn, "socketfile"):

            def connect(conn: Any = conn) -> None:
                conn.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                conn.sock.settimeout(timeout)
                conn.sock.connect(conn.socketfile)

            conn.connect = connect
        return conn

    transport._get_connection = connection
