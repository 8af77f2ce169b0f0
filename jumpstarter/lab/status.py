"""`jumpstarter lab status`: each inventory board, its supervisord state, socket and whether it answers."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from jumpstarter.cli.output import format_table
from jumpstarter.config.inventory import Inventory
from jumpstarter.lab.devices import DeviceLookup, recorded_devices
from jumpstarter.lab.supervisor import ProcessInfo, program_name

STATES = {
    "RUNNING": "running",
    "STARTING": "starting",
    "BACKOFF": "backing off",
    "FATAL": "fatal",
    "STOPPING": "stopping",
    "UNKNOWN": "unknown",
}


@dataclass
class BoardStatus:
    name: str
    state: str  # running / starting / waiting for device / backing off / fatal / stopped / not loaded
    pid: int
    socket: str
    answer: str  # answers / no answer / no socket / permission denied
    detail: str = ""


def probe(path: str) -> str:
    """Whether the exporterd on `path` answers GetReport (within a second)."""
    from jumpstarter.client.connection import Connection
    from jumpstarter.errors import JumpstarterError

    if not os.path.exists(path):
        return "no socket"
    if not os.access(path, os.R_OK | os.W_OK):
        return "permission denied"
    try:
        connection = Connection(path)
        try:
            connection.report(timeout=1)
            return "answers"
        finally:
            connection.close()
    except JumpstarterError:
        return "no answer"


def board_statuses(
    inventory: Inventory,
    processes: dict[str, ProcessInfo],
    lookup: DeviceLookup,
    answer: Callable[[str], str] = probe,
) -> list[BoardStatus]:
    from jumpstarter.lab.hotplug import complete

    statuses = []
    for board in inventory.boards:
        info = processes.get(program_name(board.name))
        rules = inventory.matches.get(board.name, {})
        socket = inventory.socket_path(board.name)
        detail = ""
        if info is None:
            state, pid, detail = "not loaded", 0, "run `jumpstarter lab reload`"
        else:
            pid = info.pid
            state = STATES.get(info.state, "stopped")
            if info.state in ("BACKOFF", "FATAL"):
                log = os.path.join(inventory.log_dir, program_name(board.name) + ".log")
                detail = f"{info.description or 'exited too quickly'}; see {log}"
            elif state == "stopped" and rules:
                recorded = recorded_devices(inventory.device_dir, board.name, rules)
                _, missing = complete(inventory, board.name, recorded, lookup)
                if missing:
                    state, detail = "waiting for device", f"missing: {', '.join(missing)}"
        statuses.append(BoardStatus(board.name, state, pid, socket, answer(socket), detail))
    return statuses


def format_statuses(statuses: list[BoardStatus]) -> str:
    rows = [(s.name, s.state, str(s.pid or "-"), s.socket, s.answer, s.detail) for s in statuses]
    return format_table(rows, ("BOARD", "STATE", "PID", "SOCKET", "GETREPORT", ""))
