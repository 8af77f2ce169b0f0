"""supervisord's process states in a file board users may read: `jumpstarter lab status` without the control socket.

supervisord's control socket is root's (whoever reaches it can stop every board
or shut supervisord down), so board users read this snapshot instead. It is
written by a supervisord event listener (rendered as the
`jumpstarter-status` program, run as root): at start, on every process state
change, and every minute (TICK_60), so its age tells a stale snapshot from a
current one. The file is mode 0640, owner root, group = the lab user's primary
group (`jumpstarter`, which board users join).

    [eventlistener:jumpstarter-status]
    command=python -m jumpstarter.lab.snapshot --output FILE --user jumpstarter --supervisor URL
    events=PROCESS_STATE,TICK_60
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import sys
import time
from collections.abc import Callable
from typing import IO

from jumpstarter.errors import ConfigError
from jumpstarter.lab.supervisor import ProcessInfo, Supervisor, SupervisorError

SNAPSHOT_MODE = 0o640
STALE_AFTER = 150.0  # seconds: more than two TICK_60s missed
MAX_SNAPSHOT = 4 * 1024 * 1024


def write_snapshot(path: str, processes: dict[str, ProcessInfo], gid: int) -> None:
    """Atomically write the snapshot; as root, owned root:gid."""
    from jumpstarter.files import write_atomic

    document = {
        "written": time.time(),
        "processes": [
            {"name": p.name, "state": p.state, "pid": p.pid, "description": p.description}
            for p in processes.values()
        ],
    }
    owner = (0, gid) if os.geteuid() == 0 else None
    write_atomic(path, json.dumps(document, indent=1).encode(), SNAPSHOT_MODE, owner=owner)


def read_snapshot(path: str) -> tuple[dict[str, ProcessInfo], float]:
    """The processes and the snapshot's age in seconds; ConfigError when unreadable."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_SNAPSHOT + 1)
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no status snapshot (is jumpstarter-lab running? `systemctl status jumpstarter-lab`)"
        ) from None
    except PermissionError:
        from jumpstarter.channels import group_name

        group = group_name(os.stat(path).st_gid)
        raise ConfigError(
            f"{path}: no permission to read the lab status; join its group: "
            f"sudo usermod -aG {group} $USER (then log in again)"
        ) from None
    try:
        if len(data) > MAX_SNAPSHOT:
            raise ValueError("too large")
        document = json.loads(data)
        processes = {
            str(p["name"]): ProcessInfo(str(p["name"]), str(p["state"]), int(p["pid"]), str(p["description"]))
            for p in document["processes"]
        }
        return processes, max(0.0, time.time() - float(document["written"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: not a lab status snapshot ({exc})") from None


def listen(refresh: Callable[[], None], stdin: IO[bytes], stdout: IO[bytes]) -> None:
    """supervisord's event listener protocol: READY, one event (header + payload), RESULT; forever."""
    refresh()
    while True:
        stdout.write(b"READY\n")
        stdout.flush()
        header = stdin.readline()
        if not header:
            return  # supervisord went away
        fields = dict(item.split(b":", 1) for item in header.split() if b":" in item)
        stdin.read(int(fields.get(b"len", b"0")))  # the payload: the snapshot is taken whole instead
        refresh()
        stdout.write(b"RESULT 2\nOK")
        stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jumpstarter.lab.snapshot",
        description="supervisord event listener: keep the lab status snapshot current.",
    )
    parser.add_argument("--output", metavar="FILE", required=True, help="the snapshot file")
    parser.add_argument("--user", metavar="USER", required=True, help="its primary group may read it")
    parser.add_argument("--supervisor", metavar="URL", required=True, help="supervisord's XML-RPC URL")
    args = parser.parse_args(argv)
    gid = pwd.getpwnam(args.user).pw_gid

    def refresh() -> None:
        try:
            with Supervisor(args.supervisor) as supervisor:
                write_snapshot(args.output, supervisor.processes(), gid)
        except (SupervisorError, OSError) as exc:  # stdout is the protocol: report on stderr
            print(f"jumpstarter-status: {exc}", file=sys.stderr, flush=True)

    listen(refresh, sys.stdin.buffer, sys.stdout.buffer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
