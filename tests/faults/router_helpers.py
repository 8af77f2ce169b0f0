"""Helpers for tests/faults/test_router_exporter_faults.py.

A user's session on a leased board, `Worker` (a client running
sessions on its own thread), `RouterStorm` (kill -9 routerd under the workers and start it
again) and `RefusingPort` (a router that is down but counts who tried it). The stack itself
(controllerd, routerd, identities) comes from tests/integration/central.py.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from jumpstarter.client.base import DriverClient
from jumpstarter.errors import JumpstarterError
from tests.integration.central import Central, wait_until

LONG = 60.0
# What a call through a dead router or exporter says: what went away, not only gRPC's words.
CLEAR = ("exporter unreachable", "the connection to the exporter was lost")


def socket_fds(pid: int) -> int:
    """How many sockets process `pid` holds open (each spliced exporter tunnel holds two)."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                count += 1
        except FileNotFoundError:
            pass  # closed while we looked
    return count


def echo_round_trips(board: DriverClient, rounds: int, size: int, on_open: Callable[[], None]) -> None:
    """Open the board's echo stream and bounce `rounds` chunks of `size` bytes through it."""
    with board.echo.open() as stream:
        on_open()
        for _ in range(rounds):
            payload = os.urandom(size)
            stream.send(payload)
            received = b""
            while len(received) < len(payload):
                chunk = stream.receive()
                if not chunk:
                    raise AssertionError(f"echo stream ended after {len(received)} of {len(payload)} bytes")
                received += chunk
            if received != payload:
                raise AssertionError("the echo stream returned other bytes than it was sent")


def one_session(board: DriverClient, step: Callable[[str], None]) -> None:
    """A user's session on a leased board: driver calls, a streaming call and a byte stream."""
    step("call")
    board.power.on()
    step("call")
    readings = [(r.voltage, r.current) for r in board.power.read()]
    if readings != [(5.0, 2.0)]:
        raise AssertionError(f"power read after on: {readings}")
    step("stream")
    echo_round_trips(board, 24, 4096, lambda: step("stream open"))
    step("call")
    board.power.off()


@dataclass
class Failure:
    at: float  # time.monotonic() when the call failed
    step: str
    error: BaseException


@dataclass
class Worker:
    """One client session loop on its own thread, on a board handle from `jumpstarter.lease()`."""

    name: str
    board: DriverClient
    stop: threading.Event
    sessions: int = 0
    steps: int = 0
    step: str = "idle"
    failures: list[Failure] = field(default_factory=list)
    thread: threading.Thread | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    session_ends: list[float] = field(default_factory=list)

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"worker-{self.name}")
        self.thread.start()

    def _mark(self, step: str) -> None:
        with self.lock:
            self.step = step
            self.steps += 1

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                one_session(self.board, self._mark)
            except Exception as exc:  # noqa: BLE001 - every failure is recorded and judged by the test
                with self.lock:
                    self.failures.append(Failure(time.monotonic(), self.step, exc))
                    self.step = "idle"
                self.stop.wait(0.2)  # a user's retry pace; the stop flag ends it at once
                continue
            with self.lock:
                self.sessions += 1
                self.session_ends.append(time.monotonic())
                self.step = "idle"

    def in_step(self, prefix: str) -> bool:
        with self.lock:
            return self.step.startswith(prefix)

    def failed_since(self, moment: float) -> Failure | None:
        with self.lock:
            return next((f for f in self.failures if f.at >= moment), None)

    def sessions_since(self, moment: float) -> int:
        with self.lock:
            return sum(1 for end in self.session_ends if end >= moment)

    def join(self, timeout: float) -> bool:
        assert self.thread is not None
        self.thread.join(timeout)
        return not self.thread.is_alive()


def describe(error: Any) -> str:
    return f"{type(error).__name__}: {error}"


class RefusingPort:
    """A TCP port that accepts and at once closes every connection: to gRPC, a router that is down.

    Unlike a closed port, it counts the connection attempts: how often a channel tried.
    """

    def __init__(self, port: int) -> None:
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(64)
        self.accepted = 0
        self.thread = threading.Thread(target=self._serve, daemon=True, name="refusing-port")

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return  # closed
            connection.close()
            self.accepted += 1

    def __enter__(self) -> RefusingPort:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join(5)


@dataclass
class RouterStorm:
    """Kills routerd under running `Worker`s and starts it again, at moments drawn from `rng`."""

    central: Central
    workers: list[Worker]
    rng: random.Random

    def steps(self) -> int:
        return sum(w.steps for w in self.workers)

    def failures(self) -> int:
        return sum(len(w.failures) for w in self.workers)

    def kill_once(self, number: int) -> str:
        """One kill -9 and restart; asserts clear failures and recovery, returns what happened."""
        moment = self.rng.choice(["call", "stream open"])
        target = self.steps() + self.rng.randint(1, 12)

        def busy() -> bool:
            return self.steps() >= target and any(w.in_step(moment) for w in self.workers)

        wait_until(busy, LONG, f"kill {number}: a client in a {moment}", interval=0.002)
        router = self.central.router
        assert router is not None
        failed_before = self.failures()
        router.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        router.wait()
        # Every client's next call fails while the router is gone, saying why (LONG and pytest-timeout catch a hang).

        def failed() -> list[Failure] | None:
            seen = [w.failed_since(killed) for w in self.workers]
            return [f for f in seen if f is not None] if all(seen) else None

        failures = wait_until(failed, LONG, f"kill {number}: every client to fail")
        for failure in failures:
            assert isinstance(failure.error, (JumpstarterError, ConnectionError)), describe(failure.error)
            assert any(text in str(failure.error) for text in CLEAR), describe(failure.error)
        # Restart at a random moment too: after more failed attempts, gRPC channels back off further.
        more = self.rng.randint(0, 4)
        expected = failed_before + len(self.workers) + more
        wait_until(lambda: self.failures() >= expected, LONG, f"kill {number}: {more} more failures")
        self.central.start_router()
        back = time.monotonic()

        def again() -> bool:
            return all(w.sessions_since(back) >= 1 for w in self.workers)

        wait_until(again, LONG, f"kill {number}: every client to work through the new router")
        recovered = time.monotonic() - back
        return (
            f"kill {number} in a {moment}: calls failed after {[round(f.at - killed, 2) for f in failures]} s;"
            f" router back after {back - killed:.1f} s ({more} more failures); sessions again {recovered:.1f} s later"
        )
