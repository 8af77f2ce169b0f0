"""An exporterd killed and restarted during a lease, seen from the client: real controllerd, routerd, exporterd.

The lease pauses while the exporter is gone and resumes when it is back, but the
restarted exporterd serves fresh drivers (new uuids). An open Python handle must then
say so clearly (`BoardRestarted`), not fail with "no driver with uuid"; commands in a
`jumpstarter shell --lease` open a new connection each and just work.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

import jumpstarter
from jumpstarter.client.remote import ControllerClient, short_name
from jumpstarter.config.client import load_client_config
from jumpstarter.errors import BoardRestarted, ConnectError, DriverUnavailable, ExporterNotReady
from jumpstarter.v1 import common_pb2

from .central import CLI, PY, ROOT, Central, close_central, is_true, start_central, stop_process, wait_until

pytestmark = pytest.mark.timeout(150)
OFFLINE_AFTER = 2.0
# What an old handle may see while the exporter is away or coming back; anything else is its answer.
TRANSIENT = (DriverUnavailable, ConnectError, ExporterNotReady)


class Board:
    """One exporter identity with a command-driven power switch, served by (re)startable exporterds."""

    def __init__(self, central: Central) -> None:
        self.central = central
        self.flag = os.path.join(central.directory, "powered")
        self.identity = central.create("exporter", "restart", "board", board="restart")
        self.export = {
            "power": {"type": "power.command", "config": {"on": f"touch {self.flag}", "off": "true"}}
        }
        self.socket = os.path.join(central.directory, "board.sock")
        self.starts = 0

    def start(self) -> subprocess.Popen[bytes]:
        self.starts += 1
        name = f"exporterd-{self.starts}"
        return self.central.spawn_exporterd(name, self.identity.config, self.export, self.socket)


@pytest.fixture
def central() -> Iterator[Central]:
    c = start_central(offline_after=OFFLINE_AFTER, dial_ready_wait=1.5)
    try:
        yield c
    finally:
        close_central(c)


def exporter_ready(client: ControllerClient, status: int) -> bool:
    return any(e.online and e.status == status for e in client.list_exporters("board=restart"))


def first_lasting_answer(action: Any, timeout: float) -> BaseException | None:
    """Retry `action` while it fails transiently; its result (None) or the first other error."""

    def attempt() -> tuple[BaseException | None]:
        try:
            action()
        except TRANSIENT:
            return ()  # type: ignore[return-value]
        except Exception as exc:  # noqa: BLE001 - the answer under test
            return (exc,)
        return (None,)

    return wait_until(attempt, timeout, "an answer that is not transient", interval=0.3)[0]


def test_an_open_handle_says_the_board_restarted_and_shell_commands_keep_working(central: Central, tmp_path):
    board = Board(central)
    board.start()
    alice = central.create("client", "restart", "alice")
    client = ControllerClient(load_client_config(alice.config))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUMPSTARTER_", "JMP_"))}
    env |= {"PATH": f"{os.path.dirname(PY)}{os.pathsep}{env.get('PATH', '')}"}
    env |= {"JMP_CLIENT_CONFIG_HOME": str(tmp_path / "config"), "JUMPSTARTER_BOARDS_DIR": str(tmp_path)}
    ready, go = tmp_path / "ready", tmp_path / "go"
    shell: subprocess.Popen[bytes] | None = None
    try:
        wait_until(lambda: exporter_ready(client, common_pb2.EXPORTER_STATUS_AVAILABLE), 30, "exporter")
        with jumpstarter.lease(selector="board=restart", duration="5m", client=alice.config) as handle:
            handle.power.on()
            assert os.path.exists(board.flag)
            lease = short_name(client.list_leases()[0].name)
            # one command before the restart, one after: each opens its own connection to the shell's tunnel
            script = f"jumpstarter power on && touch {ready} && while [ ! -e {go} ]; do sleep 0.1; done"
            shell = subprocess.Popen(
                [*CLI, "shell", "--client", alice.config, "--lease", lease, "--", "sh", "-c",
                 f"{script} && jumpstarter power on"],
                env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )  # fmt: skip
            wait_until(lambda: ready.exists() or shell.poll() is not None, 60, "the shell's first command")
            assert shell.poll() is None, shell.communicate()

            central.extra[-1].send_signal(signal.SIGKILL)  # no goodbye to anyone
            central.extra[-1].wait()
            wait_until(lambda: is_true(client.get_lease(lease), "Paused"), 30, "the lease to pause")
            board.start()
            wait_until(
                lambda: (
                    not is_true(client.get_lease(lease), "Paused")
                    and exporter_ready(client, common_pb2.EXPORTER_STATUS_LEASE_READY)
                ),
                30,
                "the lease to resume on the restarted exporter",
            )
            os.unlink(board.flag)

            answer = first_lasting_answer(handle.power.on, 60)
            assert isinstance(answer, BoardRestarted), f"old handle: {answer!r}"
            assert "the board's exporter restarted; reconnect" in str(answer)
            assert not os.path.exists(board.flag), "the old handle drove the new session's driver"

            go.touch()
            out, err = shell.communicate(timeout=60)
            assert shell.returncode == 0, err.decode()
            assert os.path.exists(board.flag), "the shell's command after the restart did not reach the board"
    finally:
        if shell is not None and shell.poll() is None:
            stop_process(shell)  # type: ignore[arg-type]
        client.close()
