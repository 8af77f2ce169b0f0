"""beforeLease / afterLease hooks of a real exporterd leased through real controllerd + routerd.

One controllerd/routerd pair (TLS on loopback) serves the module; every test starts its
own `python -m exporterd.main --config …` whose admin-written config gains an `export:`
tree (a `power.command` that touches a file, an echo) and a `hooks:` section. Hook
scripts report what they saw by writing files next to the board's socket. Statuses are
observed where clients see them: the controller (`ClientService.GetExporter`, sampled by
a `StatusRecorder`) and the session itself (`GetStatus`, `LogStream`) through a router
tunnel opened with a real `Dial`.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

import jumpstarter
from jumpstarter.client.connection import Connection
from jumpstarter.client.remote import LeaseError
from jumpstarter.v1 import common_pb2, jumpstarter_pb2

from .central import (
    PY,
    Central,
    Peer,
    S,
    Tunnel,
    close_central,
    condition,
    is_true,
    short,
    start_central,
    stop_process,
    wait_until,
)

pytestmark = pytest.mark.timeout(30)

POWER_ON = f"{PY} -m jumpstarter.cli.main power on"
HOOK_WARNING = "[HOOK_WARNING] "


@pytest.fixture(scope="module")
def central() -> Iterator[Central]:
    c = start_central(prefix="jsh-")
    try:
        yield c
    finally:
        close_central(c)


# -- the board under test ------------------------------------------------------------------------


class StatusRecorder:
    """Samples `GetExporter` in a thread and keeps every (status, message) change, in order."""

    def __init__(self, peer: Peer, exporter: str) -> None:
        self.peer = peer
        self.exporter = exporter
        self.seen: list[tuple[int, str]] = []
        self.since: list[float] = []  # monotonic time each change was first sampled
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self._sample()  # the status before the test acts
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.wait(0.01):
            with contextlib.suppress(grpc.RpcError):
                self._sample()

    def _sample(self) -> None:
        exporter = self.peer.get_exporter(self.exporter)
        now = (exporter.status, exporter.status_message)
        with self.lock:
            if not self.seen or self.seen[-1] != now:
                self.seen.append(now)
                self.since.append(time.monotonic())

    def statuses(self) -> list[int]:
        with self.lock:
            return [status for status, _ in self.seen]

    def held(self, status: int) -> float:
        """How long the first recorded `status` lasted before the next change (seconds, as sampled)."""
        with self.lock:
            i = next(i for i, (s, _) in enumerate(self.seen) if s == status)
            end = self.since[i + 1] if i + 1 < len(self.since) else time.monotonic()
            return end - self.since[i]

    def wait(self, status: int, timeout: float = 10, start: int = 0) -> tuple[int, str]:
        """The first recorded change at index >= `start` to `status`."""

        def found() -> tuple[int, str] | None:
            with self.lock:
                return next((seen for seen in self.seen[start:] if seen[0] == status), None)

        try:
            return wait_until(found, timeout, f"exporter status {common_pb2.ExporterStatus.Name(status)}")  # type: ignore[no-any-return]
        except AssertionError as exc:
            raise AssertionError(f"{exc}; recorded: {self.named()}") from None

    def named(self) -> list[tuple[str, str]]:
        with self.lock:
            return [(common_pb2.ExporterStatus.Name(s), m) for s, m in self.seen]  # type: ignore[arg-type]

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)


def ordered(statuses: list[int], *expected: int) -> bool:
    """`expected` appears in `statuses` as a subsequence (in this order)."""
    it = iter(statuses)
    return all(any(s == e for s in it) for e in expected)


@dataclass
class Board:
    """One exporterd with hooks in its own namespace, and the client `alice` of that namespace."""

    central: Central
    namespace: str
    directory: str
    alice: Peer
    process: Any = None
    recorder: StatusRecorder | None = None
    tunnels: list[Tunnel] = field(default_factory=list)
    connections: list[Connection] = field(default_factory=list)
    count: int = 0
    alice_config: str = ""

    name = "board"

    def file(self, name: str) -> str:
        return os.path.join(self.directory, name)

    @property
    def socket(self) -> str:
        return self.file("b.sock")

    @property
    def log_name(self) -> str:
        return f"exporterd-{self.namespace}"

    def log(self) -> str:
        return self.central.log(self.log_name)

    def events(self, event: str) -> list[dict[str, Any]]:
        """The exporterd JSON log records whose event is `event`."""
        out = []
        for line in self.log().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("event") == event:
                out.append(record)
        return out

    def status(self) -> tuple[int, str]:
        exporter = self.alice.get_exporter(self.name)
        return exporter.status, exporter.status_message

    def wait_status(self, status: int, timeout: float = 10) -> tuple[int, str]:
        return wait_until(  # type: ignore[no-any-return]
            lambda: (seen := self.status())[0] == status and seen,
            timeout,
            f"exporter {self.name}: status {common_pb2.ExporterStatus.Name(status)}",  # type: ignore[arg-type]
        )

    def lease(self) -> str:
        """A new lease on this board (granted at once: the board is free); its short name."""
        lease = self.alice.create_lease(exporter_name=self.name, duration=60)
        assert is_true(lease, "Ready"), lease
        return short(lease.name)

    def connect(self, lease: str) -> Connection:
        """Dial `lease` and open a session connection through routerd."""
        self.count += 1
        tunnel = Tunnel(self.central, self.alice.dial(lease), self.file(f"t{self.count}.sock"))
        self.tunnels.append(tunnel)
        connection = Connection(tunnel.path)
        self.connections.append(connection)
        return connection

    def ended(self, lease: str, timeout: float = 10) -> Any:
        return self.alice.wait_lease(
            lease,
            lambda le: (c := condition(le, "Ready")) is not None and c.status == "False",
            "ended",
            timeout,
        )

    def close(self) -> None:
        for connection in self.connections:
            connection.close()
        for tunnel in self.tunnels:
            tunnel.close()
        if self.recorder is not None:
            self.recorder.close()
        if self.process is not None:
            stop_process(self.process)
        self.alice.close()


class Lab:
    """Starts boards for one test; everything is stopped and closed afterwards."""

    def __init__(self, central: Central, namespace: str) -> None:
        self.central = central
        self.namespace = namespace
        self.boards: list[Board] = []

    def board(self, hooks: Callable[[Board], dict[str, Any]] | None = None) -> Board:
        """An exporterd whose config has `hooks(board)` as its `hooks:`; returns once it is AVAILABLE."""
        central, ns = self.central, self.namespace
        directory = tempfile.mkdtemp(prefix="b", dir=central.directory)
        alice_identity = central.create("client", ns, "alice")
        alice = central.peer(alice_identity)
        board = Board(central, ns, directory, alice, alice_config=alice_identity.config or "")
        self.boards.append(board)
        identity = central.create("exporter", ns, Board.name, board=ns)
        document = yaml.safe_load(Path(identity.config).read_text())
        document["export"] = {
            "power": {
                "type": "power.command",
                "config": {"on": f"touch {board.file('powered')}", "off": f"rm -f {board.file('powered')}"},
            },
            "echo": {"type": "network.echo"},
        }
        if hooks is not None:
            document["hooks"] = hooks(board)
        Path(identity.config).write_text(yaml.safe_dump(document))
        board.process = central._spawn(
            board.log_name,
            [
                PY,
                "-m",
                "exporterd.main",
                "--config",
                identity.config,
                "--socket",
                board.socket,
                "--log-format",
                "json",
            ],
        )
        board.wait_status(S.EXPORTER_STATUS_AVAILABLE, 20)
        board.recorder = StatusRecorder(alice, Board.name)
        return board

    def close(self) -> None:
        for board in self.boards:
            try:
                board.close()
            except Exception:  # noqa: BLE001 - cleanup goes on
                pass


@pytest.fixture
def lab(central: Central, request: pytest.FixtureRequest) -> Iterator[Lab]:
    namespace = request.node.name.removeprefix("test_")[:40].strip("_").replace("_", "-")
    lab = Lab(central, namespace)
    try:
        yield lab
    finally:
        lab.close()


class LogReader:
    """Follows `LogStream` on a session connection in a thread."""

    def __init__(self, connection: Connection) -> None:
        self.messages: queue.Queue[jumpstarter_pb2.LogStreamResponse] = queue.Queue()
        self.seen: list[jumpstarter_pb2.LogStreamResponse] = []
        self.thread = threading.Thread(target=self._run, args=(connection,), daemon=True)
        self.thread.start()

    def _run(self, connection: Connection) -> None:
        try:
            for message in connection.logs():
                self.messages.put(message)
        except Exception:  # noqa: BLE001 - the connection closed under us at the end of the test
            pass

    def until(
        self, predicate: Callable[[jumpstarter_pb2.LogStreamResponse], bool], what: str, timeout: float = 10
    ) -> jumpstarter_pb2.LogStreamResponse:
        def next_match() -> jumpstarter_pb2.LogStreamResponse | None:
            while True:
                try:
                    message = self.messages.get(timeout=0.05)
                except queue.Empty:
                    return None
                self.seen.append(message)
                if predicate(message):
                    return message

        try:
            return wait_until(next_match, timeout, f"a LogStream message: {what}", interval=0)  # type: ignore[no-any-return]
        except AssertionError as exc:
            lines = [(common_pb2.LogSource.Name(m.source), m.message) for m in self.seen[-20:]]
            raise AssertionError(f"{exc}; last seen: {lines}") from None


class LeaseUser:
    """A user's script in a thread: `with jumpstarter.lease(lease_name=…) as client: use(client)`."""

    def __init__(self, board: Board, lease: str, use: Callable[[Any], None]) -> None:
        self.entered = threading.Event()
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(board, lease, use), daemon=True)
        self.thread.start()

    def _run(self, board: Board, lease: str, use: Callable[[Any], None]) -> None:
        try:
            with jumpstarter.lease(lease_name=lease, client=board.alice.identity.config) as client:
                self.entered.set()
                use(client)
        except BaseException as exc:  # noqa: BLE001 - the test thread asserts on it
            self.failure = exc

    def join(self, timeout: float = 15) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the client is still waiting for the board"


def dialed(central: Central, lease: str) -> bool:
    """controllerd logged a Dial for `lease`."""
    return any('"dial"' in line and lease in line for line in central.log("controllerd").splitlines())


def wait_for_file(path: str) -> str:
    """Shell: block until `path` exists (the test creates it)."""
    return f"while [ ! -e {path} ]; do sleep 0.02; done"


def text_of(path: str) -> str:
    return Path(path).read_text() if os.path.exists(path) else ""


def pid_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")  # a zombie nobody reaped is dead too


# -- beforeLease -------------------------------------------------------------------------------------


def test_before_lease_hook_gets_the_lease_environment_and_can_drive_the_board(lab: Lab):
    def hooks(board: Board) -> dict[str, Any]:
        env = board.file("before.env")
        script = (
            f'printf "%s\\n" "$JUMPSTARTER_HOST" "$LEASE_NAME" "$CLIENT_NAME" > {env}.tmp && mv {env}.tmp {env}\n'
            f"{POWER_ON}\n"
        )
        return {"beforeLease": {"script": script, "timeout": 20, "onFailure": "endLease"}}

    board = lab.board(hooks)
    assert not os.path.exists(board.file("powered"))
    lease = board.lease()
    assert board.recorder is not None
    ready = board.recorder.wait(S.EXPORTER_STATUS_LEASE_READY, 15)
    assert ready == (S.EXPORTER_STATUS_LEASE_READY, "Ready for commands")
    assert ordered(
        board.recorder.statuses(),
        S.EXPORTER_STATUS_AVAILABLE,
        S.EXPORTER_STATUS_BEFORE_LEASE_HOOK,
        S.EXPORTER_STATUS_LEASE_READY,
    ), board.recorder.named()
    assert Path(board.file("before.env")).read_text().splitlines() == [board.socket, lease, "alice"]
    assert os.path.exists(board.file("powered")), "`jumpstarter power on` in the beforeLease hook did nothing"

    status = board.connect(lease).status()  # the session itself, through routerd
    assert status.status == S.EXPORTER_STATUS_LEASE_READY
    assert status.previous_status == S.EXPORTER_STATUS_BEFORE_LEASE_HOOK
    board.alice.delete_lease(lease)


def test_a_client_dialing_during_before_lease_waits_for_the_hook_then_drives_the_board(lab: Lab):
    board = lab.board(
        lambda b: {
            "beforeLease": {"script": wait_for_file(b.file("go")), "timeout": 20, "onFailure": "endLease"}
        }
    )
    lease = board.lease()
    board.wait_status(S.EXPORTER_STATUS_BEFORE_LEASE_HOOK)
    user = LeaseUser(board, lease, lambda client: client.power.on())
    try:
        wait_until(lambda: dialed(lab.central, lease), 10, "the client's Dial")
        session = board.connect(lease)  # a second Dial, to look at the session while the client waits
        assert session.status().status == S.EXPORTER_STATUS_BEFORE_LEASE_HOOK
        assert not user.entered.is_set(), f"the client went ahead during the beforeLease hook: {user.failure}"
        assert board.status()[0] == S.EXPORTER_STATUS_BEFORE_LEASE_HOOK

        Path(board.file("go")).touch()
        assert user.entered.wait(10), "the client did not get the board after the beforeLease hook"
    finally:
        Path(board.file("go")).touch()
        user.join()
    assert user.failure is None, user.failure
    assert os.path.exists(board.file("powered"))
    assert board.status()[0] == S.EXPORTER_STATUS_LEASE_READY
    board.alice.delete_lease(lease)


def test_before_lease_hook_output_reaches_the_client_through_log_stream(lab: Lab):
    def hooks(b: Board) -> dict[str, Any]:
        script = (
            f"while [ ! -e {b.file('go')} ]; do echo tick; sleep 0.1; done\necho before-hook-says-hello\n"
        )
        return {"beforeLease": {"script": script, "timeout": 20}}

    board = lab.board(hooks)
    lease = board.lease()
    board.wait_status(S.EXPORTER_STATUS_BEFORE_LEASE_HOOK)
    logs = LogReader(board.connect(lease))
    tick = logs.until(lambda m: m.message == "tick", "a tick of the running hook")
    assert tick.source == common_pb2.LOG_SOURCE_BEFORE_LEASE_HOOK

    Path(board.file("go")).touch()
    hello = logs.until(lambda m: m.message == "before-hook-says-hello", "the hook's last line")
    assert hello.source == common_pb2.LOG_SOURCE_BEFORE_LEASE_HOOK
    assert hello.severity == "INFO"
    board.wait_status(S.EXPORTER_STATUS_LEASE_READY)
    board.alice.delete_lease(lease)


def test_failing_before_lease_hook_with_warn_leaves_the_lease_ready_with_a_hook_warning(lab: Lab):
    board = lab.board(lambda b: {"beforeLease": {"script": "echo broken; exit 3", "onFailure": "warn"}})
    lease = board.lease()
    assert board.recorder is not None
    status, message = board.recorder.wait(S.EXPORTER_STATUS_LEASE_READY)
    assert message.startswith(HOOK_WARNING), message
    assert "exited with 3" in message, message
    session = board.connect(lease).status()
    assert (session.status, session.message) == (status, message)
    assert is_true(board.alice.get_lease(lease), "Ready")
    board.alice.delete_lease(lease)


def test_failing_before_lease_hook_with_end_lease_reports_failure_and_the_exporter_releases(lab: Lab):
    def hooks(b: Board) -> dict[str, Any]:
        return {
            "beforeLease": {
                "script": f"{wait_for_file(b.file('go'))}\necho no-board-today; exit 4",
                "timeout": 20,
                "onFailure": "endLease",
            },
            "afterLease": {"script": f"touch {b.file('after-ran')}"},
        }

    board = lab.board(hooks)
    lease = board.lease()
    board.wait_status(S.EXPORTER_STATUS_BEFORE_LEASE_HOOK)
    user = LeaseUser(board, lease, lambda client: client.power.on())
    try:
        wait_until(lambda: dialed(lab.central, lease), 10, "the client's Dial")
    finally:
        Path(board.file("go")).touch()
        user.join()
    ended = board.ended(lease)
    assert condition(ended, "Ready").reason == "Released"
    assert condition(ended, "Ready").message == f"released by exporter {board.name}"
    wait_until(lambda: board.events("lease ended"), 10, "exporterd to end the lease")
    assert board.recorder is not None
    hook_ran = board.recorder.statuses().index(S.EXPORTER_STATUS_BEFORE_LEASE_HOOK)
    board.recorder.wait(S.EXPORTER_STATUS_AVAILABLE, start=hook_ran)
    failed = (
        "EXPORTER_STATUS_BEFORE_LEASE_HOOK_FAILED",
        "beforeLease hook failed: exited with 4; last output: no-board-today",
    )
    assert failed in board.recorder.named(), board.recorder.named()
    # Like upstream, the failure stays visible ~1 s before the release, so that clients polling
    # GetStatus (ours every 0.1 s) can tell why they get no board:
    held = board.recorder.held(S.EXPORTER_STATUS_BEFORE_LEASE_HOOK_FAILED)
    assert held >= 0.5, f"BEFORE_LEASE_HOOK_FAILED lasted only {held:.3f}s: {board.recorder.named()}"
    assert isinstance(user.failure, LeaseError), repr(user.failure)
    assert "beforeLease hook failed" in str(user.failure) and "exited with 4" in str(user.failure)
    assert not user.entered.is_set() and not os.path.exists(board.file("powered"))
    assert not os.path.exists(board.file("after-ran")), "afterLease ran after a failed beforeLease"
    assert board.status()[0] == S.EXPORTER_STATUS_AVAILABLE


def test_failing_before_lease_hook_with_exit_stops_the_exporter_with_code_1(lab: Lab):
    board = lab.board(lambda b: {"beforeLease": {"script": "exit 5", "onFailure": "exit"}})
    lease = board.lease()
    wait_until(lambda: board.process.poll() is not None, 10, "exporterd to exit")
    assert board.process.returncode == 1, board.log()[-2000:]
    ended = board.ended(lease)
    assert condition(ended, "Ready").reason == "Released"
    assert board.status()[0] == S.EXPORTER_STATUS_OFFLINE


def test_a_hook_past_its_timeout_is_killed_with_its_children_and_counts_as_failed(lab: Lab):
    def hooks(b: Board) -> dict[str, Any]:
        script = f"sleep 1000 &\necho $! > {b.file('sleep.pid')}\nwait\n"
        return {"beforeLease": {"script": script, "timeout": 1, "onFailure": "warn"}}

    board = lab.board(hooks)
    lease = board.lease()
    pid = int(wait_until(lambda: text_of(board.file("sleep.pid")).strip(), 10, "the hook's child pid"))
    assert not pid_gone(pid)
    assert board.recorder is not None
    status, message = board.recorder.wait(S.EXPORTER_STATUS_LEASE_READY)
    assert message == f"{HOOK_WARNING}beforeLease hook timed out after 1s", message
    wait_until(lambda: pid_gone(pid), 5, f"the hook's `sleep 1000` (pid {pid}) to be killed")
    board.alice.delete_lease(lease)


# -- afterLease -------------------------------------------------------------------------------------


def after_lease_appends_its_lease(b: Board) -> dict[str, Any]:
    """afterLease: note the lease, wait for the test's `go`, say goodbye."""
    script = f'echo "$LEASE_NAME" >> {b.file("after.log")}\n{wait_for_file(b.file("go"))}\necho after-hook-says-bye\n'
    return {"afterLease": {"script": script, "timeout": 20}}


def test_after_lease_hook_runs_on_end_session_then_the_exporter_releases_the_lease(lab: Lab):
    board = lab.board(after_lease_appends_its_lease)
    lease = board.lease()
    board.wait_status(S.EXPORTER_STATUS_LEASE_READY)
    session = board.connect(lease)
    logs = LogReader(session)
    report = session.report()
    power = next(r.uuid for r in report.reports if r.labels.get("jumpstarter.dev/name") == "power")
    session.call(power, "on", [])  # its "power on" record shows that LogStream is flowing
    logs.until(lambda m: m.message == "power on", "the driver's record of power on")
    assert not os.path.exists(board.file("after.log"))
    assert board.recorder is not None
    mark = len(board.recorder.statuses())

    assert session.end_session().success
    board.recorder.wait(S.EXPORTER_STATUS_AFTER_LEASE_HOOK, start=mark)
    wait_until(lambda: text_of(board.file("after.log")), 10, "the afterLease hook to start")
    assert is_true(board.alice.get_lease(lease), "Ready"), "the lease ended before the afterLease hook did"
    Path(board.file("go")).touch()
    bye = logs.until(lambda m: m.message == "after-hook-says-bye", "the afterLease hook's output")
    assert bye.source == common_pb2.LOG_SOURCE_AFTER_LEASE_HOOK
    wait_until(
        lambda: session.status().status == S.EXPORTER_STATUS_AVAILABLE, 10, "the session to say AVAILABLE"
    )
    ended = board.ended(lease)
    assert condition(ended, "Ready").reason == "Released"
    assert condition(ended, "Ready").message == f"released by exporter {board.name}"
    board.recorder.wait(S.EXPORTER_STATUS_AVAILABLE, start=mark)
    assert ordered(
        board.recorder.statuses()[mark:], S.EXPORTER_STATUS_AFTER_LEASE_HOOK, S.EXPORTER_STATUS_AVAILABLE
    ), board.recorder.named()
    wait_until(lambda: board.events("lease ended"), 10, "exporterd to end the lease")
    assert Path(board.file("after.log")).read_text().splitlines() == [lease]
    assert board.status()[0] == S.EXPORTER_STATUS_AVAILABLE


def test_after_lease_hook_runs_once_when_the_client_deletes_the_lease_without_end_session(lab: Lab):
    board = lab.board(after_lease_appends_its_lease)
    lease = board.lease()
    board.wait_status(S.EXPORTER_STATUS_LEASE_READY)
    assert board.recorder is not None
    mark = len(board.recorder.statuses())

    board.alice.delete_lease(lease)
    ended = board.alice.get_lease(lease)
    assert condition(ended, "Ready").reason == "Released"
    assert condition(ended, "Ready").message == "released by client alice"
    board.recorder.wait(S.EXPORTER_STATUS_AFTER_LEASE_HOOK, start=mark)
    Path(board.file("go")).touch()
    wait_until(lambda: board.events("lease ended"), 10, "exporterd to end the lease")
    board.recorder.wait(S.EXPORTER_STATUS_AVAILABLE, start=mark)
    assert ordered(
        board.recorder.statuses()[mark:], S.EXPORTER_STATUS_AFTER_LEASE_HOOK, S.EXPORTER_STATUS_AVAILABLE
    ), board.recorder.named()
    assert Path(board.file("after.log")).read_text().splitlines() == [lease]
    assert board.status()[0] == S.EXPORTER_STATUS_AVAILABLE

    second = board.lease()  # the next lease's end runs the hook for that lease only
    board.wait_status(S.EXPORTER_STATUS_LEASE_READY)
    board.alice.delete_lease(second)
    wait_until(lambda: len(board.events("lease ended")) == 2, 10, "exporterd to end the second lease")
    assert Path(board.file("after.log")).read_text().splitlines() == [lease, second]


def test_failing_after_lease_hook_with_exit_after_end_session_stops_the_exporter_with_code_1(lab: Lab):
    board = lab.board(lambda b: {"afterLease": {"script": "exit 6", "onFailure": "exit"}})
    lease = board.lease()
    board.wait_status(S.EXPORTER_STATUS_LEASE_READY)
    session = board.connect(lease)
    assert session.end_session().success
    assert board.recorder is not None
    failed = board.recorder.wait(S.EXPORTER_STATUS_AFTER_LEASE_HOOK_FAILED)
    assert "exited with 6" in failed[1], failed
    wait_until(
        lambda: board.process.poll() is not None, 10, "exporterd to exit after the afterLease hook failed"
    )
    assert board.process.returncode == 1, board.log()[-2000:]


# -- sessions ---------------------------------------------------------------------------------------


def test_every_lease_gets_fresh_driver_instances(lab: Lab):
    board = lab.board(lambda b: {"beforeLease": {"script": "true"}})

    def driver_uuids() -> set[str]:
        lease = board.lease()
        board.wait_status(S.EXPORTER_STATUS_LEASE_READY)
        report = board.connect(lease).report()
        board.alice.delete_lease(lease)
        board.ended(lease)
        board.wait_status(S.EXPORTER_STATUS_AVAILABLE)
        return {r.uuid for r in report.reports}

    first = driver_uuids()
    wait_until(lambda: board.events("lease ended"), 10, "exporterd to end the first lease")
    second = driver_uuids()
    assert len(first) == len(second) == 3  # root, power, echo
    assert not first & second, "the second lease got the first lease's driver instances"


def test_remote_run_shows_the_hooks_output_on_stderr(lab: Lab):
    import subprocess

    def hooks(b: Board) -> dict[str, Any]:
        return {
            "beforeLease": {"script": "echo preparing the board", "timeout": 20},
            "afterLease": {"script": "echo cleaning up the board", "timeout": 20},
        }

    board = lab.board(hooks)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JMP_", "JUMPSTARTER_"))}
    env["HOME"] = board.directory
    result = subprocess.run(
        [
            PY,
            "-m",
            "jumpstarter.cli.main",
            "run",
            "--client",
            board.alice_config,
            "-l",
            f"board={board.namespace}",
            "--",
            PY,
            "-m",
            "jumpstarter.cli.main",
            "power",
            "on",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr
    assert "[beforeLease] preparing the board" in result.stderr
    assert "[afterLease] cleaning up the board" in result.stderr
    assert "preparing the board" not in result.stdout
