"""Dial limits through real controllerd, routerd and exporterd processes.

One client flooding Dial gets RESOURCE_EXHAUSTED while another client still
dials; a lease has a bounded number of Dials in progress; an exporter keeps a
bounded number of router tunnels waiting for a client that never comes, and
gives up on each after its `--tunnel-wait`.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from .central import (
    Central,
    Identity,
    Peer,
    S,
    StubExporter,
    close_central,
    free_port,
    get_report,
    start_central,
    stop_process,
    wait_until,
)

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def central() -> Iterator[Central]:
    c = start_central(
        "jsd-",
        dial_rate=0.1,
        dial_burst=6,
        max_pending_dials=2,
        dial_ready_wait=60,
        router_settings={"metrics": f"127.0.0.1:{free_port()}", "lone_peer_timeout": 600},
    )
    try:
        yield c
    finally:
        close_central(c)


def waiting(central: Central) -> float:
    return central.router_metric("jumpstarter_router_streams_waiting")


def cancelled(central: Central) -> float:
    return central.router_metric('jumpstarter_router_calls_total{outcome="cancelled"}')


def leased(central: Central, client: str, exporter: Identity) -> tuple[Peer, str]:
    peer = central.peer(central.create("client", exporter.namespace, client))
    lease = peer.create_lease(exporter_name=exporter.name)
    peer.wait_ready(lease.name, timeout=30)
    return peer, lease.name


def exporterd(central: Central, identity: Identity, *flags: str) -> subprocess.Popen[bytes]:
    socket_path = os.path.join(central.directory, f"{identity.name}.sock")
    export = {"echo": {"type": "network.echo"}}
    return central.spawn_exporterd(f"exporterd-{identity.name}", identity.config, export, socket_path, *flags)


def test_a_client_flooding_dial_is_refused_while_another_client_still_dials(central: Central) -> None:
    boards: list[StubExporter] = []
    peers: list[Peer] = []
    try:
        for i in (1, 2):
            boards.append(StubExporter(central, central.create("exporter", "flood", f"b{i}")).start())
        flooder, lease = leased(central, "flooder", boards[0].identity)
        peers.append(flooder)
        other, other_lease = leased(central, "other", boards[1].identity)
        peers.append(other)
        refused = None
        for _ in range(30):
            try:
                flooder.dial(lease)
            except grpc.RpcError as exc:
                refused = exc
                break
        assert refused is not None, "30 Dials in a row were all accepted"
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "dial_rate" in (refused.details() or "")
        assert other.dial(other_lease).router_token  # another client is not affected
    finally:
        for peer in peers:
            peer.close()
        for board in boards:
            board.close()


def test_a_lease_has_a_bounded_number_of_dials_in_progress(central: Central) -> None:
    board = StubExporter(central, central.create("exporter", "pending", "b"), auto=False).start()
    try:
        peer, lease = leased(central, "waiter", board.identity)
        board.listen(lease)  # the exporter listens but is not ready: Dials wait for it
        results: list[Any] = []

        def dial() -> None:
            try:
                results.append(peer.dial(lease, timeout=90))
            except grpc.RpcError as exc:
                results.append(exc)

        threads = [threading.Thread(target=dial) for _ in range(3)]
        for thread in threads:
            thread.start()
        wait_until(lambda: len(results) >= 1, 30, "one Dial to be refused")
        assert isinstance(results[0], grpc.RpcError), results[0]
        assert results[0].code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_pending_dials" in (results[0].details() or "")
        board.report(S.EXPORTER_STATUS_LEASE_READY)  # the pending two now go through
        for thread in threads:
            thread.join(60)
        assert sum(1 for r in results if not isinstance(r, grpc.RpcError)) == 2
        peer.close()
    finally:
        board.close()


def test_an_exporter_keeps_few_tunnels_waiting_for_clients_that_never_come(central: Central) -> None:
    identity = central.create("exporter", "pile", "board")
    process = exporterd(central, identity, "--max-pending-tunnels", "2", "--tunnel-wait", "600")
    try:
        peer, lease = leased(central, "prober", identity)
        base_waiting, base_cancelled = waiting(central), cancelled(central)
        for k in range(1, 6):  # Dials whose client never connects, as upstream's readiness probe
            peer.dial(lease, timeout=60)
            wait_until(
                lambda k=k: waiting(central) - base_waiting + cancelled(central) - base_cancelled >= k,
                30,
                f"the exporter's router stream for Dial {k}",
            )
        assert waiting(central) - base_waiting <= 2
        # The newest Dial still reaches the board.
        report = get_report(central, peer.dial(lease), os.path.join(central.directory, "pile.sock"))
        assert report.reports
    finally:
        stop_process(process)


def test_an_exporter_gives_up_on_a_tunnel_whose_client_never_comes(central: Central) -> None:
    identity = central.create("exporter", "lone", "board")
    process = exporterd(central, identity, "--tunnel-wait", "1")
    try:
        peer, lease = leased(central, "lonely", identity)
        base_waiting = waiting(central)
        for _ in range(3):
            peer.dial(lease, timeout=60)
        log = f"exporterd-{identity.name}"
        wait_until(lambda: central.log(log).count("tunnel given up") >= 3, 60, "3 tunnels given up")
        wait_until(lambda: waiting(central) <= base_waiting, 30, "the router's waiting streams to go")
    finally:
        stop_process(process)
