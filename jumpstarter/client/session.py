"""One leased board, from the lease request to its release (PROTOCOL.md §5-7).

    with RemoteSession(client, selector="board=rpi4") as session:
        subprocess.run(cmd, env={"JUMPSTARTER_HOST": session.path})

`RemoteSession` owns everything about a held lease and moves through explicit states:

    PENDING --(lease Ready)--> LEASED --(exporter LEASE_READY)--> EXPORTER_READY --> ENDED
       \\________________________\\______(any failure, Ctrl-C)--> FAILED

It creates the lease (or attaches to `lease_name`), waits until it is Ready, opens
the router tunnel (whose every connection is Dialed by `ControllerClient.dial`),
waits for the exporter's LEASE_READY through a `Connection`, watches for the
lease ending under it, and on the way out ends the exporter session and releases
a lease it created. A new exporter session (the board restarted) is a matter of
each open client tree (`jumpstarter.client.restart`): the lease and tunnel stay.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from jumpstarter.backoff import Backoff, Deadline
from jumpstarter.client.connection import Connection
from jumpstarter.client.remote import (
    ACQUISITION_TIMEOUT,
    DEFAULT_DURATION,
    DIAL_TIMEOUT,
    READY_TIMEOUT,
    ControllerClient,
    LeaseError,
    RemoteError,
    WaitCallback,
    lease_state,
    short_name,
)
from jumpstarter.client.tunnel import Tunnel
from jumpstarter.errors import (
    ConnectError,
    DriverError,
    DriverNotImplemented,
    DriverTimeout,
    JumpstarterError,
)
from jumpstarter.v1 import common_pb2

MONITOR_INTERVAL = 10.0  # seconds between GetLease calls while the lease is held
HOOK_TIMEOUT = 120.0  # seconds an afterLease hook may run after EndSession
STATUS_TIMEOUT = 10.0  # seconds one GetStatus may take: a frozen exporter must not stall the ready wait
HOOK_EVENTS = ("hook started", "hook finished", "hook failed", "hook timed out")  # the outcome says these
HOOK_OUTPUT = "; last output: "  # exporterd/hooks.py quotes a failed hook's last lines after this
HOOK_LINE_CHARS = 200  # ... each cut to this length
HOOK_LINES_WAIT = 2.0  # seconds a hook's failure waits for its output lines to be printed live
HOOK_SOURCES = {
    common_pb2.LOG_SOURCE_BEFORE_LEASE_HOOK: "beforeLease",
    common_pb2.LOG_SOURCE_AFTER_LEASE_HOOK: "afterLease",
}


class SessionState(enum.Enum):
    PENDING = "pending"  # the lease is requested (or attached to) and not Ready yet
    LEASED = "leased"  # the lease is Ready: the tunnel is open, the exporter may still run its hook
    EXPORTER_READY = "exporter_ready"  # the exporter said LEASE_READY: the board is ours to use
    ENDED = "ended"  # the lease ended under us, or the session was closed after it was ready
    FAILED = "failed"  # the session never became ready (refused, unsatisfiable, hook failed, Ctrl-C)


TRANSITIONS: dict[SessionState, frozenset[SessionState]] = {
    SessionState.PENDING: frozenset({SessionState.LEASED, SessionState.FAILED}),
    SessionState.LEASED: frozenset({SessionState.EXPORTER_READY, SessionState.FAILED}),
    SessionState.EXPORTER_READY: frozenset({SessionState.ENDED}),
    SessionState.ENDED: frozenset(),
    SessionState.FAILED: frozenset(),
}
TERMINAL = frozenset({SessionState.ENDED, SessionState.FAILED})


class SessionStateError(RuntimeError):
    """A transition the state machine does not allow (a bug in the caller, not a lab condition)."""


class RemoteSession:
    """A leased board with its tunnel: `path` is the JUMPSTARTER_HOST for it; use as a context manager.

    A reused lease (`lease_name`) is left as it is on exit; a lease created here is released.
    """

    def __init__(
        self,
        client: ControllerClient,
        *,
        selector: str = "",
        exporter_name: str | None = None,
        duration: float | None = DEFAULT_DURATION,
        lease_name: str | None = None,
        on_wait: WaitCallback | None = None,
        acquisition_timeout: float = ACQUISITION_TIMEOUT,
        dial_timeout: float = DIAL_TIMEOUT,
        ready_timeout: float = READY_TIMEOUT,
        show_hook_logs: bool = True,
        monitor_interval: float = MONITOR_INTERVAL,
        **options: Any,
    ) -> None:
        self.client = client
        self.state = SessionState.PENDING
        self.name = lease_name or ""
        self.exporter = ""
        self.labels: dict[str, str] = {}
        self.path = ""
        self.created = False  # True once CreateLease answered: this session must release the lease
        self.ended = threading.Event()  # the lease ended under us, or the session is closing
        self.end_reason = ""
        self._selector, self._exporter_name, self._duration = selector, exporter_name, duration
        self._options = options
        self._attach = bool(lease_name)
        self._on_wait = on_wait
        self._timeouts = (acquisition_timeout, dial_timeout, ready_timeout)
        self._show_hook_logs = show_hook_logs
        self._monitor_interval = monitor_interval
        self._on_end: Callable[[str], None] | None = None
        self._lease_ended = False  # the monitor saw the lease end (not a close of ours)
        self._lock = threading.Lock()
        self._tunnel: Tunnel | None = None
        self._connection: Connection | None = None
        self._threads: dict[str, threading.Thread] = {}
        self._hook_lines_shown: collections.deque[str] = collections.deque(maxlen=32)  # the newest ones
        self._hook_shown = threading.Condition()
        self._closed = False

    # -- states -----------------------------------------------------------------------------

    def move(self, to: SessionState) -> None:
        """Go to state `to`; SessionStateError when TRANSITIONS does not allow it from here."""
        with self._lock:
            self._move(to)

    def _move(self, to: SessionState) -> None:  # with self._lock held
        if to not in TRANSITIONS[self.state]:
            raise SessionStateError(f"session {self.name or '-'}: {self.state.value} -> {to.value}")
        self.state = to

    def when_ended(self, callback: Callable[[str], None]) -> None:
        """Call `callback(reason)` once when the lease ends under the session (at once if it already has)."""
        with self._lock:
            self._on_end = callback
            lease_ended = self._lease_ended
        if lease_ended:
            callback(self.end_reason)

    # -- open -------------------------------------------------------------------------------

    def __enter__(self) -> RemoteSession:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        """PENDING -> LEASED -> EXPORTER_READY, or FAILED (and everything undone) with the error raised."""
        try:
            self._acquire()
            self.move(SessionState.LEASED)
            self._wait_exporter_ready()
            self.move(SessionState.EXPORTER_READY)
            assert self._tunnel is not None
            self._tunnel.report_errors = True
            self._start("monitor", self._watch)
        except BaseException:
            self.close()
            raise

    def _acquire(self) -> None:
        client, (patience, _, _) = self.client, self._timeouts
        if self._attach:
            lease = client.get_lease(self.name)
            if not client.owns(lease):
                raise LeaseError(f"lease {self.name} belongs to {short_name(lease.client)}, not to you")
            lease = client.wait_ready(self.name, self._on_wait, patience, first=lease)
        else:

            def remember(name: str) -> None:
                self.name, self.created = name, True

            lease = client.acquire(
                self._selector,
                self._exporter_name,
                self._duration,
                on_wait=self._on_wait,
                on_created=remember,
                timeout=patience,
                **self._options,
            )
        self.name, self.exporter = short_name(lease.name), short_name(lease.exporter)
        with contextlib.suppress(RemoteError):
            self.labels = dict(client.get_exporter(lease.exporter).labels) if lease.exporter else {}

    def _wait_exporter_ready(self) -> None:
        """Tunnel, then poll GetStatus until LEASE_READY (its beforeLease hook is done); old exporters: assume so."""
        _, dial_timeout, ready_timeout = self._timeouts
        self._tunnel = tunnel = Tunnel(self.client, self.name, dial_timeout)
        tunnel.__enter__()
        tunnel.report_errors = False  # until the exporter answers, a failure is raised, not printed
        self.path = tunnel.path
        self._connection = connection = Connection(tunnel.path)
        if self._show_hook_logs:
            self._start("hook-logs", self._follow_hook_logs)
        backoff = Backoff(start=0.1, cap=0.3, deadline=Deadline(ready_timeout))
        while True:
            try:
                status = connection.status(timeout=STATUS_TIMEOUT)
            except DriverNotImplemented:
                return
            except (ConnectError, DriverError) as exc:
                if tunnel.last_error is not None:
                    raise tunnel.last_error from None
                if not _transient(exc) or not backoff.sleep():
                    raise _unreachable(self.name, exc) from None
                continue
            if status.status == common_pb2.EXPORTER_STATUS_LEASE_READY:
                return
            if status.status == common_pb2.EXPORTER_STATUS_BEFORE_LEASE_HOOK_FAILED:
                raise LeaseError(f"lease {self.name}: {self._hook_failure(status.message)}")
            if not backoff.sleep():
                name = common_pb2.ExporterStatus.Name(status.status)
                raise LeaseError(f"lease {self.name}: exporter not ready after {ready_timeout:g} s ({name})")

    def _start(self, name: str, target: Callable[[], None]) -> None:
        thread = self._threads[name] = threading.Thread(target=target, daemon=True, name=f"jmp-{name}")
        thread.start()

    def _hook_failure(self, message: str) -> str:
        """The hook's outcome, without the output lines this session already printed live (shown once)."""
        head, quoted, tail = message.partition(HOOK_OUTPUT)
        if quoted and self._show_hook_logs:  # the lines were logged before the status: let them arrive
            with self._hook_shown:
                if self._hook_shown.wait_for(
                    lambda: set(tail.split(" | ")) <= set(self._hook_lines_shown), HOOK_LINES_WAIT
                ):
                    return head
        return message or "the beforeLease hook failed"

    def _follow_hook_logs(self) -> None:
        """Print the exporter's hook output on stderr while the lease is held (as upstream shells do)."""
        assert self._connection is not None
        # ends when the connection closes; an exporter without LogStream has nothing to show
        with contextlib.suppress(JumpstarterError, ValueError, grpc.RpcError):
            for record in self._connection.logs():
                source = HOOK_SOURCES.get(record.source)
                if source is not None and record.message not in HOOK_EVENTS:
                    sys.stderr.write(f"[{source}] {record.message}\n")
                    sys.stderr.flush()
                    with self._hook_shown:
                        self._hook_lines_shown.append(record.message.strip()[:HOOK_LINE_CHARS])
                        self._hook_shown.notify_all()

    # -- held -------------------------------------------------------------------------------

    def _watch(self) -> None:
        """Notice a lease that ends under us (expired, released by an admin): EXPORTER_READY -> ENDED."""
        pace = Backoff(start=self._monitor_interval, cap=self._monitor_interval)  # a steady pace
        while (pause := pace.next_pause()) is not None and not self.ended.wait(pause):
            try:
                state, reason, message = lease_state(self.client.get_lease(self.name))
            except RemoteError:
                continue
            if state == "ended":
                self.end_reason = f"{reason}: {message}" if message else reason
                with self._lock:
                    if self.state not in TERMINAL:  # else closed meanwhile
                        self._move(SessionState.ENDED)
                    self._lease_ended, callback = True, self._on_end
                self.ended.set()
                if callback is not None:
                    callback(self.end_reason)
                return

    # -- close ------------------------------------------------------------------------------

    def close(self) -> None:
        """End the exporter session and release a lease created here; ENDED, or FAILED before ready."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.created and self._connection is not None:
                self._end_session(self._connection)
            self.ended.set()  # stops the monitor
            self._join("monitor")  # it may be in a GetLease on the controller channel
            if self._connection is not None:
                self._connection.close()  # ends the hook log stream too
            self._join("hook-logs")  # no thread may touch gRPC while the interpreter shuts down
            if self._tunnel is not None:
                self._tunnel.close()
        finally:
            try:
                if self.created:
                    self.client.release(self.name)
            finally:
                with self._lock:
                    if self.state == SessionState.EXPORTER_READY:
                        self._move(SessionState.ENDED)
                    elif self.state not in TERMINAL:  # open() did not get there
                        self._move(SessionState.FAILED)

    def _join(self, name: str) -> None:
        thread = self._threads.get(name)
        if thread is not None:
            thread.join(timeout=5)

    @staticmethod
    def _end_session(connection: Connection, hook_timeout: float = HOOK_TIMEOUT) -> None:
        """EndSession, then give a running afterLease hook time to finish; every failure is tolerated."""
        try:
            connection.end_session()
            grace, deadline = Deadline(1.0), Deadline(hook_timeout)
            pace = Backoff(start=0.2, cap=0.2, deadline=deadline)
            while True:
                status = connection.status(timeout=STATUS_TIMEOUT).status
                if status == common_pb2.EXPORTER_STATUS_AFTER_LEASE_HOOK:
                    grace = deadline
                elif status != common_pb2.EXPORTER_STATUS_LEASE_READY or grace.expired():
                    return
                if not pace.sleep():
                    return
        except (JumpstarterError, ValueError):
            return  # UNIMPLEMENTED (an old exporter) or the session already went away


def _transient(exc: JumpstarterError) -> bool:
    """An exporter not reachable yet (the tunnel still Dialing, a blinking link): ask again."""
    return isinstance(exc, (ConnectError, DriverTimeout)) or getattr(exc, "code", "") == "UNAVAILABLE"


def _unreachable(name: str, exc: JumpstarterError) -> RemoteError:
    """`lease NAME: exporter unreachable: DETAILS` (a ConnectError already says the first part)."""
    code = grpc.StatusCode[getattr(exc, "code", "UNAVAILABLE")]
    details = str(exc).split("exporter unreachable: ", 1)[-1]
    return RemoteError(f"lease {name}: exporter unreachable: {details}", code)


@contextlib.contextmanager
def hold(client: ControllerClient, **options: Any) -> Iterator[RemoteSession]:
    """`RemoteSession(client, **options)` held for the block (the name earlier versions exported)."""
    with RemoteSession(client, **options) as session:
        yield session
