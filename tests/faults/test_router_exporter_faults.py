"""Faults on the remote path, with real controllerd, routerd and exporterds on loopback (issue 8).

- routerd is killed (SIGKILL) at random moments while two clients run sessions through it on
  leases held with `jumpstarter.lease()`: the calls and byte streams going through it fail with
  a clear error, the same handles work again (a new connection, so a new Dial) once the
  router is back, no lease is touched, and the exporters keep no tunnels behind.
- the exporter's channel to the router backs off while the router is down: a client that comes
  right after the router returns (after a short or a long outage) works, and the
  tunnels the exporter kept waiting meanwhile give up.
- a board's exporterd runs under the real supervisord (rendered from an inventory with a
  `controller:` section) and is killed during a lease a few times: supervisord restarts it, the
  lease pauses and resumes, old handles say `BoardRestarted`, a new connection works, and the
  board is never given to the client queued behind.

The random moments come from `fault_seed()` (printed); rerun one with JUMPSTARTER_FAULT_SEED.
No step is timed: the long waits (LONG) and pytest-timeout catch a call that hangs.
"""

from __future__ import annotations

import base64
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import jumpstarter
from jumpstarter.client.remote import ControllerClient, lease_state, short_name
from jumpstarter.config.client import load_client_config
from jumpstarter.errors import (
    BoardRestarted,
    ConnectError,
    DriverUnavailable,
    ExporterNotReady,
)
from jumpstarter.lab.supervisor import program_name
from jumpstarter.v1 import common_pb2
from tests.faults.conftest import fault_seed
from tests.faults.router_helpers import (
    CLEAR,
    LONG,
    RefusingPort,
    RouterStorm,
    Worker,
    describe,
    one_session,
    socket_fds,
)
from tests.harness.sandbox import LabSandbox
from tests.integration.central import (
    Central,
    close_central,
    free_port,
    is_true,
    start_central,
    wait_until,
)

pytestmark = pytest.mark.timeout(240)

ROUTER_KILLS = 5
TUNNEL_WAIT = 5.0  # exporterd --tunnel-wait: its unjoined router streams give up after this


def exporterd(central: Central, n: int, *flags: str) -> subprocess.Popen[bytes]:
    """exporterd for board`n` (label board=b`n`) in namespace faults, with a power and an echo driver."""
    identity = central.create("exporter", "faults", f"board{n}", board=f"b{n}")
    export = {"power": {"type": "power.mock"}, "echo": {"type": "network.echo"}}
    return central.spawn_exporterd(
        f"exporterd-{n}", identity.config, export, f"{central.directory}/b{n}.sock", *flags
    )


def online(client: ControllerClient, selector: str, status: int) -> bool:
    exporters = client.list_exporters(selector)
    return bool(exporters) and all(e.online and e.status == status for e in exporters)


# -- routerd killed under running sessions ---------------------------------------------------------


@pytest.fixture
def central() -> Iterator[Central]:
    c = start_central(
        prefix="jsfault-",
        router_settings={"lone_peer_timeout": LONG, "metrics": f"127.0.0.1:{free_port()}"},
    )
    try:
        yield c
    finally:
        close_central(c)


def test_router_killed_at_random_moments_fails_calls_fast_and_the_same_handles_work_again(central: Central):
    rng = random.Random(fault_seed())
    exporterds = [exporterd(central, n, "--tunnel-wait", str(TUNNEL_WAIT)) for n in (1, 2)]
    alice = central.create("client", "faults", "alice")
    bob = central.create("client", "faults", "bob")
    watcher = ControllerClient(load_client_config(alice.config))
    stop = threading.Event()
    workers: list[Worker] = []
    started = time.monotonic()
    try:
        wait_until(lambda: online(watcher, "", common_pb2.EXPORTER_STATUS_AVAILABLE), 30, "both exporters")
        with (
            jumpstarter.lease(selector="board=b1", duration="10m", client=alice.config) as board1,
            jumpstarter.lease(selector="board=b2", duration="10m", client=bob.config) as board2,
        ):
            leases = leases_of(watcher)
            assert [(who, board) for _, who, board, _ in leases] == [("alice", "board1"), ("bob", "board2")]
            granted = central.metric('jumpstarter_leases_total{event="granted"}')
            workers = [Worker("alice", board1, stop), Worker("bob", board2, stop)]
            for worker in workers:
                worker.start()
            wait_until(lambda: all(w.sessions >= 2 for w in workers), LONG, "two sessions per client")
            baseline = [socket_fds(p.pid) for p in exporterds]

            storm = RouterStorm(central, workers, rng)
            for kill in range(1, ROUTER_KILLS + 1):
                print(storm.kill_once(kill))

            stop.set()
            for worker in workers:
                assert worker.join(LONG), f"{worker.name} is stuck in a {worker.step}"
            # No lease was touched: the same two, still ready, and nothing else was granted.
            assert leases_of(watcher) == leases
            assert central.metric('jumpstarter_leases_total{event="granted"}') == granted
            # The exporters keep no tunnel behind: unjoined router streams give up, spliced ones close.
            wait_until(
                lambda: central.router_metric("jumpstarter_router_streams_waiting") == 0,
                TUNNEL_WAIT + LONG,
                "no stream left waiting at the router",
            )
            for process, before in zip(exporterds, baseline, strict=True):
                wait_until(
                    lambda process=process, before=before: socket_fds(process.pid) <= before,
                    LONG,
                    f"exporterd {process.pid}: its sockets back to {before}",
                )
                assert process.poll() is None
    finally:
        stop.set()
        for worker in workers:
            worker.join(10)
        watcher.close()
    errors = sorted({f"{f.step}: {describe(f.error)}"[:160] for w in workers for f in w.failures})
    print("what the clients saw:\n  " + "\n  ".join(errors))
    print(
        f"router kills: {ROUTER_KILLS}; sessions {[w.sessions for w in workers]}, failed calls"
        f" {[len(w.failures) for w in workers]}; {time.monotonic() - started:.1f} s"
    )


@pytest.mark.parametrize("attempts", [3, 8], ids=["short-outage", "long-outage"])
def test_a_client_that_connects_right_after_the_router_returns_is_not_left_waiting_alone(
    central: Central, attempts: int
):
    """The exporter's channel to the router backs off while the router is down. A Dial that comes
    while it still does must wait for it, not fail at once and leave the client alone at the router
    (until gRPC's 20 s connect timeout on its side); and after a long outage (8 attempts: gRPC's own
    backoff would be 27 s by then) the exporter must try again within seconds."""
    exporterd(central, 1, "--tunnel-wait", str(TUNNEL_WAIT))
    alice = central.create("client", "faults", "alice")
    with ControllerClient(load_client_config(alice.config)) as controller:
        wait_until(lambda: online(controller, "", common_pb2.EXPORTER_STATUS_AVAILABLE), 30, "the exporter")
        with jumpstarter.lease(selector="board=b1", duration="10m", client=alice.config) as board:
            board.power.on()
            (lease, *_), *_ = leases_of(controller)
            assert central.router is not None
            with board.echo.open() as stream:
                stream.send(b"ping")
                assert stream.receive() == b"ping"
                central.router.send_signal(signal.SIGKILL)
                central.router.wait()
                # Writing into the cut stream fails soon, and says what went away.
                cut = wait_until(lambda: send_error(stream), LONG, "a send into the cut stream to fail")
                assert isinstance(cut, BrokenPipeError) and any(text in str(cut) for text in CLEAR), describe(
                    cut
                )
            with RefusingPort(central.rport) as down:
                # Each Dial sends the exporter to the router; each failed attempt backs its channel off more.
                wait_until(
                    lambda: controller.dial(lease) and down.accepted >= attempts,
                    2 * LONG,
                    f"{attempts} attempts of the exporter to reach the router",
                    interval=0.3,
                )
            central.start_router()
            back = time.monotonic()
            with jumpstarter.lease(lease_name=lease, client=alice.config) as fresh:
                fresh.power.on()
                assert [(r.voltage, r.current) for r in fresh.power.read()] == [(5.0, 2.0)]
            took = time.monotonic() - back
            print(f"{attempts} attempts: a new connection worked {took:.1f} s after the router came back")
            assert leases_of(controller) == [(lease, "alice", "board1", "ready")]
            # The tunnels the Dials made the exporter wait with joined the new router alone; they give up.
            wait_until(
                lambda: central.router_metric("jumpstarter_router_streams_waiting") == 0,
                TUNNEL_WAIT + LONG,
                "no exporter tunnel left waiting at the router",
            )


def send_error(stream: Any) -> BaseException | None:
    try:
        stream.send(b"after")
    except ConnectionError as exc:  # BrokenPipeError included
        return exc
    return None


def leases_of(client: ControllerClient) -> list[tuple[str, str, str, str]]:
    """The namespace's active leases as (name, client, exporter, state), by name."""
    leases = client.list_leases()
    return sorted(
        (short_name(le.name), short_name(le.client), short_name(le.exporter), lease_state(le)[0])
        for le in leases
    )


# -- exporterd killed under supervisord during a lease ----------------------------------------------

EXPORTER_KILLS = 5
OFFLINE_AFTER = 2.0
# What an old handle may see while its exporter is away or coming back; anything else is its answer.
TRANSIENT = (DriverUnavailable, ConnectError, ExporterNotReady)
LAB_INVENTORY = """\
controller:
  endpoint: "{endpoint}"
  namespace: faults
  token_dir: "{tokens}"
  tls: {{ca: "{ca}"}}
boards:
  - name: fboard
    export:
      power: {{type: power.mock}}
      echo: {{type: network.echo}}
"""


@pytest.fixture
def lab() -> Iterator[tuple[Central, LabSandbox]]:
    central = start_central(prefix="jsfault-", offline_after=OFFLINE_AFTER, dial_ready_wait=1.5)
    try:
        with LabSandbox() as sandbox:
            yield central, sandbox
    finally:
        close_central(central)


def board_log(sandbox: LabSandbox) -> str:
    """The whole log supervisord keeps of the board's exporterds (every restart appends to it)."""
    return Path(sandbox.log_dir, f"{program_name('fboard')}.log").read_text(errors="replace")


def first_lasting_answer(action: Callable[[], object], timeout: float) -> BaseException | None:
    """Retry `action` while it fails transiently; None when it worked, else its first other error."""

    def attempt() -> tuple[BaseException | None] | None:
        try:
            action()
        except TRANSIENT:
            return None
        except Exception as exc:  # noqa: BLE001 - the answer under test
            return (exc,)
        return (None,)

    return wait_until(attempt, timeout, "an answer that is not transient", interval=0.3)[0]


@dataclass
class HeldBoard:
    """fboard under supervisord, leased by alice with bob's request queued behind her."""

    central: Central
    sandbox: LabSandbox
    alice: str  # client config
    controller: ControllerClient
    lease: str
    waiting: str
    granted: float

    def count(self, event: str) -> float:
        return self.central.metric(f'jumpstarter_leases_total{{event="{event}"}}')

    def nobody_else(self) -> None:
        """alice still holds the board; bob's request still waits; nothing else was granted."""
        expected = sorted([(self.lease, "alice", "fboard", "ready"), (self.waiting, "bob", "", "pending")])
        assert leases_of(self.controller) == expected
        assert self.count("granted") == self.granted

    def kill_once(self, number: int, rng: random.Random, hold_supervisord: bool) -> str:
        """kill -9 the exporterd at a random moment of a session; returns what happened."""
        supervisord = self.sandbox.supervisord
        assert supervisord is not None
        with jumpstarter.lease(lease_name=self.lease, client=self.alice) as board:
            for _ in range(rng.randint(1, 4)):  # a random moment: after a few sessions ...
                one_session(board, lambda step: None)
            in_stream = rng.random() < 0.5  # ... or while a byte stream is open
            starts, pauses = board_log(self.sandbox).count('"lease started"'), self.count("paused")
            old = self.sandbox.pid("fboard")
            if hold_supervisord:
                supervisord.send_signal(signal.SIGSTOP)
            try:
                with board.echo.open() as stream:
                    stream.send(b"before")
                    assert stream.receive() == b"before"
                    os.kill(old, signal.SIGKILL)
                    killed = time.monotonic()
                    if in_stream:
                        with pytest.raises(DriverUnavailable) as broken:
                            while stream.receive():
                                pass
                        assert any(text in str(broken.value) for text in CLEAR), describe(broken.value)
                if hold_supervisord:  # the exporter stays gone until the controller noticed
                    wait_until(
                        lambda: self.count("paused") > pauses, LONG, f"kill {number}: the lease to pause"
                    )
                    assert is_true(self.controller.get_lease(self.lease), "Paused")
                    self.nobody_else()
            finally:
                supervisord.send_signal(signal.SIGCONT)
            wait_until(
                lambda: board_log(self.sandbox).count('"lease started"') > starts,
                LONG,
                f"kill {number}: supervisord's new exporterd to take the lease",
            )
            assert self.sandbox.pid("fboard") != old
            wait_until(
                lambda: (
                    self.count("paused") == self.count("resumed")
                    and not is_true(self.controller.get_lease(self.lease), "Paused")
                    and online(self.controller, "board=faulty", common_pb2.EXPORTER_STATUS_LEASE_READY)
                ),
                LONG,
                f"kill {number}: the lease to run on the new exporterd",
            )
            self.nobody_else()
            answer = first_lasting_answer(board.power.on, LONG)
            assert isinstance(answer, BoardRestarted), f"old handle: {answer!r}"
            assert "the board's exporter restarted; reconnect" in str(answer)
        how = "supervisord held" if hold_supervisord else "restarted at once"
        where = "in a byte stream" if in_stream else "between sessions"
        return f"kill {number} {where} ({how}): paused {self.count('paused') > pauses}, back after {time.monotonic() - killed:.1f} s"


def test_exporterd_killed_under_supervisord_pauses_the_lease_and_new_connections_work(lab):
    central, sandbox = lab
    rng = random.Random(fault_seed())
    identity = central.create("exporter", "faults", "fboard", board="faulty")
    tokens = Path(sandbox.directory) / "tokens"
    tokens.mkdir(mode=0o755)
    token = tokens / "fboard.token"
    token.write_text(identity.token)
    token.chmod(0o600)
    os.chown(token, sandbox.uid, -1)  # exporterds run as the lab user, as on a lab host
    ca = base64.b64encode(central.ca).decode()
    sandbox.write_inventory(LAB_INVENTORY.format(endpoint=central.endpoint, tokens=tokens, ca=ca))
    sandbox.start()
    alice = central.create("client", "faults", "alice")
    bob = central.create("client", "faults", "bob")
    controller = ControllerClient(load_client_config(alice.config))
    queued = ControllerClient(load_client_config(bob.config))
    started = time.monotonic()
    try:
        wait_until(
            lambda: online(controller, "board=faulty", common_pb2.EXPORTER_STATUS_AVAILABLE), LONG, "fboard"
        )
        lease = short_name(controller.acquire("board=faulty", duration=600, timeout=LONG).name)
        waiting = short_name(queued.create_lease("board=faulty", duration=600).name)
        board = HeldBoard(central, sandbox, alice.config, controller, lease, waiting, 0)
        board.granted = board.count("granted")
        # Some kills hold supervisord (SIGSTOP) until the controller saw the exporter gone, so that
        # the pause is certain; the others let it restart at once, often before the controller notices.
        holds = [True, False] + [rng.random() < 0.5 for _ in range(EXPORTER_KILLS - 2)]
        rng.shuffle(holds)
        for number, hold_supervisord in enumerate(holds, 1):
            print(board.kill_once(number, rng, hold_supervisord))
        with jumpstarter.lease(lease_name=lease, client=alice.config) as handle:
            one_session(handle, lambda step: None)  # a new connection works on the last exporterd too
        board.nobody_else()
        wait_until(
            lambda: sandbox.state("fboard")[0] == "RUNNING", LONG, "supervisord to count fboard running"
        )
        # bob's request was live all along: it gets the board as soon as alice's lease ends.
        assert controller.release(lease)
        queued.wait_ready(waiting, timeout=LONG)
        assert queued.release(waiting)
    finally:
        controller.close()
        queued.close()
    print(
        f"exporterd kills: {EXPORTER_KILLS}, pauses {int(board.count('paused'))},"
        f" {time.monotonic() - started:.1f} s"
    )
