"""Faults on the remote path, with real controllerd, routerd and exporterds on loopback (issue 8).

- routerd is killed (SIGKILL) at random moments while two clients run sessions through it on
  leases held with `jumpstarter.lease()`: the calls and byte streams going through it fail fast
  with a clear error, the same handles work again (a new connection, so a new Dial) once the
  router is back, no lease is touched, and the exporters keep no tunnels behind.
- a board's exporterd runs under the real supervisord (rendered from an inventory with a
  `controller:` section) and is killed during a lease a few times: supervisord restarts it, the
  lease pauses and resumes, old handles say `BoardRestarted`, a new connection works, and the
  board is never given to the client queued behind.

The random moments come from a seed printed by each test; rerun one with JUMPSTARTER_FAULT_SEED.
"""

from __future__ import annotations

import base64
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

import jumpstarter
from jumpstarter.client.remote import ControllerClient, lease_state, short_name
from jumpstarter.config.client import load_client_config
from jumpstarter.errors import BoardRestarted, ConnectError, DriverUnavailable, ExporterNotReady, JumpstarterError
from jumpstarter.lab.sandbox import LabSandbox
from jumpstarter.lab.supervisor import program_name
from jumpstarter.v1 import common_pb2
from tests.faults.router_helpers import RefusingPort, Worker, one_session, counter, describe, seeded_random, socket_fds
from tests.integration.central import PY, Central, close_central, free_port, is_true, start_central, wait_until

pytestmark = pytest.mark.timeout(240)

ROUTER_KILLS = 5
# Far above a healthy call (milliseconds) and far below the timeouts a hang would run into
# (the router's lone-peer timeout and the exporter's tunnel wait, both LONG): a call that
# takes this long has hung on a dead stream.
FAIL_FAST = 15.0
LONG = 60.0
TUNNEL_WAIT = 5.0  # exporterd --tunnel-wait: its unjoined router streams give up after this


def exporter_config(central: Central, namespace: str, name: str, **labels: str) -> str:
    identity = central.create("exporter", namespace, name, **labels)
    document = yaml.safe_load(Path(identity.config).read_text())
    document["export"] = {"power": {"type": "power.mock"}, "echo": {"type": "network.echo"}}
    Path(identity.config).write_text(yaml.safe_dump(document))
    return identity.config


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


def router_metric(central: Central, sample: str) -> float:
    import urllib.request

    address = central.router_settings["metrics"]
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        return counter(response.read().decode(), sample)


def test_router_killed_at_random_moments_fails_calls_fast_and_the_same_handles_work_again(central: Central):
    rng = seeded_random("router kills")
    exporterds = []
    for n in (1, 2):
        config = exporter_config(central, "faults", f"board{n}", board=f"b{n}")
        argv = [PY, "-m", "exporterd.main", "--config", config, "--socket", f"{central.directory}/b{n}.sock"]
        argv += ["--tunnel-wait", str(TUNNEL_WAIT), "--log-format", "json"]
        exporterds.append(central._spawn(f"exporterd-{n}", argv))
    central.extra.extend(exporterds)
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
            assert sorted((client, exporter) for _, client, exporter, _ in leases) == [
                ("alice", "board1"),
                ("bob", "board2"),
            ], leases
            granted = central.metric('jumpstarter_leases_total{event="granted"}')
            workers = [Worker("alice", board1, stop), Worker("bob", board2, stop)]
            for worker in workers:
                worker.start()
            wait_until(lambda: all(w.sessions >= 2 for w in workers), 60, "two sessions per client")
            baseline = [socket_fds(p.pid) for p in exporterds]

            for kill in range(ROUTER_KILLS):
                moment = rng.choice(["call", "stream open"])
                target = sum(w.steps for w in workers) + rng.randint(1, 12)
                wait_until(
                    lambda: sum(w.steps for w in workers) >= target and any(w.in_step(moment) for w in workers),
                    60,
                    f"kill {kill + 1}: a client in a {moment}",
                    interval=0.002,
                )
                assert central.router is not None
                failed_before = sum(len(w.failures) for w in workers)
                central.router.send_signal(signal.SIGKILL)
                killed = time.monotonic()
                central.router.wait()
                # Every client's next call fails while the router is gone, and fails fast.
                failures = wait_until(
                    lambda: all(w.failed_since(killed) for w in workers) and [w.failed_since(killed) for w in workers],
                    LONG,
                    f"kill {kill + 1}: every client to see the router gone",
                )
                for worker, failure in zip(workers, failures, strict=True):
                    assert failure is not None
                    assert failure.at - killed < FAIL_FAST, (
                        f"{worker.name}: the {failure.step} hung {failure.at - killed:.1f} s on the dead router"
                    )
                    assert isinstance(failure.error, (JumpstarterError, ConnectionError)), describe(failure.error)
                    assert str(failure.error), describe(failure.error)
                # Restart at a random moment too: after a few more failed attempts (the clients' and
                # exporters' gRPC channels back off further with each one).
                more = rng.randint(0, 4)
                wait_until(
                    lambda: sum(len(w.failures) for w in workers) >= failed_before + len(workers) + more,
                    LONG,
                    f"kill {kill + 1}: {more} more failed attempts",
                )
                central.start_router()
                back = time.monotonic()
                wait_until(
                    lambda: all(w.sessions_since(back) >= 1 for w in workers),
                    LONG,
                    f"kill {kill + 1}: every client to complete a session through the new router",
                )
                recovered = time.monotonic() - back
                print(
                    f"kill {kill + 1} in a {moment}, {more} more failures: failed after"
                    f" {[round(f.at - killed, 2) for f in failures]} s, router back after {back - killed:.1f} s,"
                    f" sessions again after {recovered:.1f} s"
                )
                assert recovered < FAIL_FAST, f"kill {kill + 1}: the clients worked again only {recovered:.1f} s later"

            stop.set()
            for worker in workers:
                assert worker.join(LONG), f"{worker.name} is stuck in a {worker.step}"
            for worker in workers:
                late = [f for f in worker.failures if f.took >= FAIL_FAST]
                assert not late, f"{worker.name}: calls that hung: {[(f.step, round(f.took, 1), describe(f.error)) for f in late]}"
                assert worker.longest_ok < FAIL_FAST, f"{worker.name}: a step took {worker.longest_ok:.1f} s"

            # No lease was touched: the same two, still ready, and nothing else was granted.
            assert leases_of(watcher) == leases
            assert central.metric('jumpstarter_leases_total{event="granted"}') == granted
            # The exporters keep no tunnel behind: unjoined router streams give up, spliced ones closed.
            wait_until(
                lambda: router_metric(central, "jumpstarter_router_streams_waiting") == 0,
                TUNNEL_WAIT + LONG,
                "no stream left waiting at the router",
            )
            for process, before in zip(exporterds, baseline, strict=True):
                wait_until(
                    lambda process=process, before=before: socket_fds(process.pid) <= before,
                    LONG,
                    f"exporterd {process.pid}: sockets back to {before} (has {socket_fds(process.pid)})",
                )
                assert process.poll() is None
    finally:
        stop.set()
        for worker in workers:
            worker.join(10)
        watcher.close()
    kinds = sorted({f"{f.step}: {describe(f.error)}"[:150] for w in workers for f in w.failures})
    print("\n".join(kinds))
    sessions = {w.name: w.sessions for w in workers}
    failed = {w.name: len(w.failures) for w in workers}
    print(
        f"router kills: {ROUTER_KILLS}, sessions {sessions}, failed calls {failed},"
        f" {time.monotonic() - started:.1f} s"
    )


def test_a_client_that_connects_right_after_the_router_returns_is_not_left_waiting_alone(central: Central):
    """The exporter's channel to the router backs off while the router is down; a Dial that comes
    while it still does must wait for it, not fail at once and leave the client alone at the router
    (until gRPC's 20 s connect timeout on its side, or the router's lone-peer timeout)."""
    config = exporter_config(central, "faults", "board1", board="b1")
    argv = [PY, "-m", "exporterd.main", "--config", config, "--socket", f"{central.directory}/b1.sock"]
    central.extra.append(central._spawn("exporterd-1", [*argv, "--tunnel-wait", str(TUNNEL_WAIT)]))
    alice = central.create("client", "faults", "alice")
    with ControllerClient(load_client_config(alice.config)) as controller:
        wait_until(lambda: online(controller, "", common_pb2.EXPORTER_STATUS_AVAILABLE), 30, "the exporter")
        with jumpstarter.lease(selector="board=b1", duration="10m", client=alice.config) as board:
            board.power.on()
            (lease, *_), *_ = leases_of(controller)
            assert central.router is not None
            central.router.send_signal(signal.SIGKILL)
            central.router.wait()
            with RefusingPort(central.rport) as down:
                # Each Dial sends the exporter to the router; each failed attempt backs its channel off more.
                wait_until(
                    lambda: controller.dial(lease) and down.accepted >= 3,
                    LONG,
                    "three attempts of the exporter to reach the router",
                    interval=0.3,
                )
            central.start_router()
            back = time.monotonic()
            with jumpstarter.lease(lease_name=lease, client=alice.config) as fresh:
                fresh.power.on()
                assert [(r.voltage, r.current) for r in fresh.power.read()] == [(5.0, 2.0)]
            took = time.monotonic() - back
            assert took < FAIL_FAST, f"a new connection after the router came back took {took:.1f} s"
            print(f"a new connection worked {took:.1f} s after the router came back")
            assert leases_of(controller) == [(lease, "alice", "board1", "ready")]


def leases_of(client: ControllerClient) -> list[tuple[str, str, str, str]]:
    """The namespace's active leases as (name, client, exporter, state), by name."""
    leases = client.list_leases()
    return sorted(
        (short_name(le.name), short_name(le.client), short_name(le.exporter), lease_state(le)[0]) for le in leases
    )


def progress(workers: list[Worker]) -> str:
    return "; ".join(
        f"{w.name}: {w.sessions} sessions, in {w.step}, failures {[describe(f.error) for f in w.failures[-3:]]}"
        for w in workers
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


def test_exporterd_killed_under_supervisord_pauses_the_lease_and_new_connections_work(lab):
    central, sandbox = lab
    rng = seeded_random("exporterd kills")
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
    stats = {"kills": 0, "stream kills": 0, "sessions": 0}
    try:
        wait_until(lambda: online(controller, "board=faulty", common_pb2.EXPORTER_STATUS_AVAILABLE), 60, "fboard")
        held = controller.acquire("board=faulty", duration=600, timeout=60)
        lease = short_name(held.name)
        waiting = short_name(queued.create_lease("board=faulty", duration=600).name)
        granted = central.metric('jumpstarter_leases_total{event="granted"}')

        def nobody_else() -> None:
            assert leases_of(controller) == sorted(
                [(lease, "alice", "fboard", "ready"), (waiting, "bob", "", "pending")]
            )
            assert central.metric('jumpstarter_leases_total{event="granted"}') == granted

        def paused() -> float:
            return central.metric('jumpstarter_leases_total{event="paused"}')

        def resumed() -> float:
            return central.metric('jumpstarter_leases_total{event="resumed"}')

        # Half the time supervisord is held (SIGSTOP) until the controller saw the exporter gone, so
        # the pause is certain; otherwise it restarts it at once, often before the controller notices.
        frozen = [True, False] + [rng.random() < 0.5 for _ in range(EXPORTER_KILLS - 2)]
        rng.shuffle(frozen)
        assert sandbox.supervisord is not None
        for kill in range(EXPORTER_KILLS):
            with jumpstarter.lease(lease_name=lease, client=alice.config) as board:
                for _ in range(rng.randint(1, 4)):  # a random moment: after a few sessions ...
                    one_session(board, lambda step: None)
                    stats["sessions"] += 1
                in_stream = rng.random() < 0.5  # ... or while a byte stream is open
                starts = board_log(sandbox).count('"lease started"')
                pauses = paused()
                old = sandbox.pid("fboard")
                if frozen[kill]:
                    sandbox.supervisord.send_signal(signal.SIGSTOP)
                try:
                    with board.echo.open() as stream:
                        stream.send(b"before")
                        assert stream.receive() == b"before"
                        os.kill(old, signal.SIGKILL)
                        killed = time.monotonic()
                        stats["kills"] += 1
                        if in_stream:
                            stats["stream kills"] += 1
                            with pytest.raises((JumpstarterError, ConnectionError)) as broken:
                                while stream.receive():
                                    pass
                            assert time.monotonic() - killed < FAIL_FAST, "the open stream hung on the dead exporter"
                            assert str(broken.value), describe(broken.value)
                            print(f"kill {kill + 1}: the open stream failed with {describe(broken.value)}")
                    if frozen[kill]:
                        wait_until(lambda: paused() > pauses, LONG, f"kill {kill + 1}: the lease to pause")
                        assert is_true(controller.get_lease(lease), "Paused")
                        nobody_else()
                finally:
                    sandbox.supervisord.send_signal(signal.SIGCONT)
                wait_until(
                    lambda: board_log(sandbox).count('"lease started"') > starts,
                    LONG,
                    f"kill {kill + 1}: supervisord's new exporterd to take the lease",
                )
                assert sandbox.pid("fboard") != old
                wait_until(
                    lambda: paused() == resumed()
                    and not is_true(controller.get_lease(lease), "Paused")
                    and online(controller, "board=faulty", common_pb2.EXPORTER_STATUS_LEASE_READY),
                    LONG,
                    f"kill {kill + 1}: the lease to run on the new exporterd",
                )
                stats["pauses"] = int(paused())
                nobody_else()
                answer = first_lasting_answer(board.power.on, LONG)
                assert isinstance(answer, BoardRestarted), f"old handle: {answer!r}"
                assert "the board's exporter restarted; reconnect" in str(answer)
            print(
                f"kill {kill + 1} ({'in a stream' if in_stream else 'between calls'},"
                f" {'supervisord held' if frozen[kill] else 'restarted at once'}):"
                f" back after {time.monotonic() - killed:.1f} s"
            )
        with jumpstarter.lease(lease_name=lease, client=alice.config) as board:
            one_session(board, lambda step: None)  # a new connection works on the last exporterd too
            stats["sessions"] += 1
        nobody_else()
        wait_until(lambda: sandbox.state("fboard")[0] == "RUNNING", LONG, "supervisord to count fboard running")
        # The queued request was live all along: it gets the board as soon as the lease ends.
        assert controller.release(lease)
        queued.wait_ready(waiting, timeout=LONG)
        assert queued.release(waiting)
    finally:
        controller.close()
        queued.close()
    print(f"exporterd kills: {stats}, {time.monotonic() - started:.1f} s")
