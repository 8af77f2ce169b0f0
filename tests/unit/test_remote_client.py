"""The remote client library against an in-process fake controller + router over TLS (no processes).

The fake answers ClientService, ControllerService.Dial and RouterService.Stream
from scripted replies and records what it was sent.
"""

from __future__ import annotations

import base64
import os
import socket
import stat
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2

from jumpstarter import tls
from jumpstarter.client.remote import ControllerClient, LeaseError, RemoteError, lease_state
from jumpstarter.client.tunnel import Tunnel
from jumpstarter.client.v1 import client_pb2, client_pb2_grpc
from jumpstarter.config.client import ClientConfig
from jumpstarter.v1 import jumpstarter_pb2, jumpstarter_pb2_grpc, kubernetes_pb2, router_pb2, router_pb2_grpc

DATA, PING, GOAWAY = 0, 6, 7


def condition(kind: str, status: str, reason: str = "", message: str = "") -> kubernetes_pb2.Condition:
    return kubernetes_pb2.Condition(type=kind, status=status, reason=reason, message=message)


def lease(*conditions: kubernetes_pb2.Condition, name: str = "l1") -> client_pb2.Lease:
    return client_pb2.Lease(
        name=f"namespaces/lab/leases/{name}",
        client="namespaces/lab/clients/alice",
        exporter="namespaces/lab/exporters/board1",
        conditions=list(conditions),
    )


@dataclass
class Fake:
    """Scripted replies; `calls` records (method, metadata) of every call."""

    get_lease: list[client_pb2.Lease] = field(default_factory=list)
    created: client_pb2.Lease = field(
        default_factory=lambda: lease(condition("Pending", "True", "Queued", ""))
    )
    dial: list[tuple[grpc.StatusCode, str] | None] = field(default_factory=list)
    endpoint: str = ""
    calls: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    router_metadata: list[dict[str, str]] = field(default_factory=list)
    dial_hangs: threading.Event | None = None  # set: Dial answers only once this is set

    def record(self, method: str, context: grpc.ServicerContext) -> None:
        self.calls.append((method, dict(context.invocation_metadata())))


class FakeClientService(client_pb2_grpc.ClientServiceServicer):
    def __init__(self, fake: Fake) -> None:
        self.fake = fake

    def ListExporters(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.fake.record("ListExporters", context)
        pages = {"": (["a", "b"], "p2"), "p2": (["c", "d"], "p3"), "p3": (["e"], "")}
        names, token = pages[request.page_token]
        return client_pb2.ListExportersResponse(
            exporters=[client_pb2.Exporter(name=f"namespaces/lab/exporters/{n}") for n in names],
            next_page_token=token,
        )

    def CreateLease(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.fake.record("CreateLease", context)
        return self.fake.created

    def GetLease(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.fake.record("GetLease", context)
        return self.fake.get_lease.pop(0)

    def DeleteLease(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.fake.record("DeleteLease", context)
        self.fake.deleted.append(request.name)
        return empty_pb2.Empty()


class FakeControllerService(jumpstarter_pb2_grpc.ControllerServiceServicer):
    def __init__(self, fake: Fake) -> None:
        self.fake = fake

    def Dial(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.fake.record("Dial", context)
        if self.fake.dial_hangs is not None:
            self.fake.dial_hangs.wait(60)
        failure = self.fake.dial.pop(0) if self.fake.dial else None
        if failure is not None:
            context.abort(*failure)
        return jumpstarter_pb2.DialResponse(router_endpoint=self.fake.endpoint, router_token="router-token")


class EchoRouter(router_pb2_grpc.RouterServiceServicer):
    """Echoes DATA, pings first (to be ignored), answers GOAWAY with GOAWAY."""

    def __init__(self, fake: Fake) -> None:
        self.fake = fake

    def Stream(self, request_iterator: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        self.fake.router_metadata.append(dict(context.invocation_metadata()))
        yield router_pb2.StreamResponse(frame_type=PING)
        for frame in request_iterator:
            if frame.frame_type == GOAWAY:
                yield router_pb2.StreamResponse(frame_type=GOAWAY)
                return
            yield router_pb2.StreamResponse(payload=frame.payload.upper(), frame_type=DATA)


@pytest.fixture(scope="module")
def certificate() -> tuple[bytes, bytes]:
    return tls.generate_self_signed(["127.0.0.1"])


@pytest.fixture
def fake(certificate: tuple[bytes, bytes]) -> Iterator[tuple[Fake, ClientConfig]]:
    cert, key = certificate
    state = Fake()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    client_pb2_grpc.add_ClientServiceServicer_to_server(FakeClientService(state), server)
    jumpstarter_pb2_grpc.add_ControllerServiceServicer_to_server(FakeControllerService(state), server)
    router_pb2_grpc.add_RouterServiceServicer_to_server(EchoRouter(state), server)
    port = server.add_secure_port("127.0.0.1:0", tls.server_credentials(cert, key))
    server.start()
    state.endpoint = f"127.0.0.1:{port}"
    config = ClientConfig("lab", "alice", state.endpoint, "the-token", ca=base64.b64encode(cert).decode())
    try:
        yield state, config
    finally:
        server.stop(None)


def test_every_controller_call_carries_the_token_and_the_client_identity(fake):
    state, config = fake
    with ControllerClient(config) as client:
        client.check()
    method, metadata = state.calls[0]
    assert method == "ListExporters"
    assert {
        k: metadata[k]
        for k in ("authorization", "jumpstarter-kind", "jumpstarter-namespace", "jumpstarter-name")
    } == {
        "authorization": "Bearer the-token",
        "jumpstarter-kind": "Client",
        "jumpstarter-namespace": "lab",
        "jumpstarter-name": "alice",
    }


def test_list_exporters_follows_every_page(fake):
    _, config = fake
    with ControllerClient(config) as client:
        names = [e.name.rsplit("/", 1)[-1] for e in client.list_exporters("board=x", page_size=2)]
    assert names == ["a", "b", "c", "d", "e"]


def test_acquire_reports_each_new_queue_position_then_returns_the_ready_lease(fake):
    state, config = fake
    state.get_lease = [
        lease(
            condition(
                "Pending",
                "True",
                "NotAvailable",
                "all 1 matching online exporters are leased; queue position 2",
            )
        ),
        lease(
            condition(
                "Pending",
                "True",
                "NotAvailable",
                "all 1 matching online exporters are leased; queue position 2",
            )
        ),
        lease(
            condition(
                "Pending",
                "True",
                "NotAvailable",
                "all 1 matching online exporters are leased; queue position 1",
            )
        ),
        lease(condition("Ready", "True", "Ready", "")),
    ]
    seen: list[tuple[str, str]] = []
    with ControllerClient(config) as client:
        client.poll_interval = 0.01
        acquired = client.acquire("board=x", duration=60, on_wait=lambda r, m: seen.append((r, m)))
    assert lease_state(acquired)[0] == "ready"
    assert [m.rsplit(" ", 1)[-1] for _, m in seen] == ["2", "1"]
    assert state.deleted == []


def test_a_queue_position_already_in_the_create_answer_is_still_reported(fake):
    state, config = fake
    waiting = condition(
        "Pending", "True", "NotAvailable", "all 1 matching online exporters are leased; queue position 1"
    )
    state.created = lease(waiting)
    state.get_lease = [lease(waiting), lease(waiting), lease(condition("Ready", "True", "Ready", ""))]
    seen: list[str] = []
    with ControllerClient(config) as client:
        client.poll_interval = 0.01
        client.acquire("board=x", duration=60, on_wait=lambda r, m: seen.append(m))
    assert seen == ["all 1 matching online exporters are leased; queue position 1"]


def test_unsatisfiable_lease_fails_with_its_reason_and_is_deleted(fake):
    state, config = fake
    state.get_lease = [
        lease(condition("Unsatisfiable", "True", "ExporterNotFound", "no exporter matches 'board=y'"))
    ]
    with ControllerClient(config) as client, pytest.raises(LeaseError) as caught:
        client.acquire("board=y", duration=60)
    assert str(caught.value) == "lease l1 cannot be acquired: ExporterNotFound: no exporter matches 'board=y'"
    assert state.deleted == ["namespaces/lab/leases/l1"]


def test_interrupting_the_wait_deletes_the_lease(fake):
    state, config = fake
    state.get_lease = [lease(condition("Pending", "True", "NotAvailable", "queue position 1"))]

    def interrupt(reason: str, message: str) -> None:
        raise KeyboardInterrupt

    with ControllerClient(config) as client, pytest.raises(KeyboardInterrupt):
        client.acquire("board=x", duration=60, on_wait=interrupt)
    assert state.deleted == ["namespaces/lab/leases/l1"]


@pytest.mark.parametrize(
    ("conditions", "state"),
    [
        ((), "pending"),
        ((condition("Pending", "True", "Offline"),), "pending"),
        ((condition("Ready", "True", "Ready"),), "ready"),
        ((condition("Ready", "False", "Expired"),), "ended"),
        ((condition("Invalid", "True", "InvalidSelector"),), "failed"),
        ((condition("Pending", "False", "Whatever"),), "failed"),
        ((condition("Ready", "True"), condition("Pending", "False")), "ready"),
    ],
)
def test_lease_state_follows_the_conditions(conditions, state):
    assert lease_state(lease(*conditions))[0] == state


def test_tunnel_dials_each_connection_retrying_not_ready_and_splices_bytes(fake):
    state, config = fake
    state.dial = [(grpc.StatusCode.FAILED_PRECONDITION, "exporter is not ready (status: Available)"), None]
    with ControllerClient(config) as client, Tunnel(client, "l1") as tunnel:
        folder = os.path.dirname(tunnel.path)
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(tunnel.path).st_mode) == 0o600
        with socket.socket(socket.AF_UNIX) as conn:
            conn.connect(tunnel.path)
            conn.sendall(b"hello router")
            conn.shutdown(socket.SHUT_WR)  # EOF -> GOAWAY + half-close; the router answers GOAWAY -> EOF
            received = b""
            while chunk := conn.recv(65536):
                received += chunk
    assert received == b"HELLO ROUTER"
    assert [m for m, _ in state.calls] == ["Dial", "Dial"]
    assert state.router_metadata[0].get("authorization") == "Bearer router-token"
    assert not {"jumpstarter-kind", "jumpstarter-name"} & set(state.router_metadata[0])
    assert not os.path.exists(folder)


def test_tunnel_closes_the_connection_and_keeps_the_error_when_dial_is_refused(fake):
    state, config = fake
    state.dial = [
        (grpc.StatusCode.PERMISSION_DENIED, "permission denied: lease l1 belongs to another client")
    ]
    errors: list[str] = []
    with ControllerClient(config) as client, Tunnel(client, "l1", on_error=errors.append) as tunnel:
        with socket.socket(socket.AF_UNIX) as conn:
            conn.connect(tunnel.path)
            conn.settimeout(10)
            assert conn.recv(100) == b""
        assert tunnel.last_error is not None and tunnel.last_error.code == grpc.StatusCode.PERMISSION_DENIED
    assert errors == ["dial lease l1: permission denied: lease l1 belongs to another client"]
    assert [m for m, _ in state.calls] == ["Dial"]  # not retried


def test_an_untrusted_certificate_is_explained(fake):
    _, config = fake
    other, _ = tls.generate_self_signed(["127.0.0.1"])
    config.ca = base64.b64encode(other).decode()
    with ControllerClient(config) as client, pytest.raises(RemoteError) as caught:
        client.check()
    assert f"TLS to {client.endpoint} failed: certificate verify failed" in str(caught.value)
    assert "the CA in your client config does not sign this server's certificate" in str(caught.value)
    assert "--ca FILE or --insecure" in str(caught.value)


def test_many_concurrent_connections_each_get_their_own_stream(fake):
    state, config = fake
    results: dict[int, bytes] = {}

    def talk(i: int, path: str) -> None:
        with socket.socket(socket.AF_UNIX) as conn:
            conn.connect(path)
            conn.sendall(f"conn {i} ".encode() * 1000)
            conn.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
            results[i] = data

    with ControllerClient(config) as client, Tunnel(client, "l1") as tunnel:
        threads = [threading.Thread(target=talk, args=(i, tunnel.path)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
    assert results == {i: f"CONN {i} ".encode() * 1000 for i in range(8)}
    assert len(state.router_metadata) == 8


def test_a_stop_event_cancels_a_dial_in_flight(fake):
    """A closing tunnel must not wait for a Dial: its worker threads would hold up the process's exit."""
    state, config = fake
    state.dial_hangs = threading.Event()
    stop = threading.Event()
    with ControllerClient(config) as client:
        timer = threading.Timer(0.3, stop.set)
        timer.start()
        try:
            with pytest.raises(RemoteError, match="dial lease l1: cancelled") as raised:
                client.dial("l1", timeout=60, stop=stop)
            assert raised.value.code == grpc.StatusCode.CANCELLED
        finally:
            timer.cancel()
            state.dial_hangs.set()
