"""controllerd's own shutdown after Listen sessions: a real controllerd (+ routerd), raw-gRPC peers.

Its own stack, because the test stops the controller.
"""

from __future__ import annotations

import signal

import grpc
import pytest

from .central import Listener, Peer, StubExporter, close_central, start_central, stream_of, wait_until

pytestmark = pytest.mark.timeout(300)
ROUNDS = 30


def delivered(client: Peer, lease: str, listener: Listener) -> bool:
    """A Dial reached `listener` (False while its Listen is not registered yet)."""
    try:
        dial = client.dial(lease)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.UNAVAILABLE and "not listening" in (exc.details() or ""):
            return False
        raise
    try:
        response = listener.next(timeout=10)
    except AssertionError:  # pushed to the previous Listen before the controller saw it end: dial again
        return False
    return bool(stream_of(response.router_token) == stream_of(dial.router_token))


def test_listen_sessions_and_a_sigterm_leave_no_pending_task_behind():
    central = start_central(dial_ready_wait=1.5)
    board: StubExporter | None = None
    try:
        board = StubExporter(central, central.create("exporter", "shutdown", "board", board="s")).start()
        alice = central.peer(central.create("client", "shutdown", "alice"))
        lease = alice.create_lease("board=s")
        first = board.listener(lease.name, timeout=30)
        dial = alice.dial(lease.name)
        assert stream_of(first.next(timeout=30).router_token) == stream_of(dial.router_token)

        for _ in range(ROUNDS):  # the exporter ends its Listen from its side and opens a new one
            first.cancel()
            wait_until(first.ended.is_set, 30, "the Listen to end")
            first = board.listen(lease.name)
            wait_until(lambda f=first: delivered(alice, lease.name, f), 60, "a Dial on the new Listen")
        second = board.listen(lease.name)  # supersedes the last one; still open at the shutdown
        wait_until(lambda: delivered(alice, lease.name, second), 60, "a Dial on the last Listen")
        alice.close()

        assert central.stop_controller(signal.SIGTERM) == 0
        wait_until(second.ended.is_set, 30, "the open Listen to end with the controller")
        log = central.log("controllerd")
        assert "Task was destroyed" not in log, log[-3000:]
        assert "was never retrieved" not in log, log[-3000:]
    finally:
        if board is not None:
            board.close()
        close_central(central)
