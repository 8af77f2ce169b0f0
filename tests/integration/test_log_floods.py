"""Bad input from strangers costs the daemons' logs a few lines, not a traceback per call.

380 requests whose bytes are not the method's protobuf message (raw bytes through a
generic channel with identity serializers), and 380 calls with a forged token, go to
every method of the real controllerd, routerd and exporterd session server. Each
answers INVALID_ARGUMENT (or UNAUTHENTICATED), the log grows by a few hundred bytes
with no traceback and no token, and the daemon still serves real calls afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from jumpstarter import routertoken
from jumpstarter.client.v1 import client_pb2
from jumpstarter.v1 import jumpstarter_pb2, jumpstarter_pb2_grpc, router_pb2, router_pb2_grpc

from .central import Central, close_central, start_central
from .conftest import exporter_config

pytestmark = pytest.mark.timeout(180)

CALLS = 380
GARBAGE = b"\xff\xff\xff\xff\xff"  # a truncated varint tag: no protobuf message parses it
LOG_BOUND = 8 * 1024  # a throttled line is ~250 bytes; one traceback per call was ~1 KB
#: a JWT-shaped forged token: it must never appear in a log
FORGED = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJjbGllbnQ6YTpiOmMifQ.Zm9yZ2VkLXNpZ25hdHVyZQ"
IDENTITY: Callable[[bytes], bytes] = lambda data: data  # noqa: E731


def methods(service: Any) -> list[tuple[str, bool, bool]]:
    """(path, client_streaming, server_streaming) of every method of a service descriptor."""
    return [
        (f"/{service.full_name}/{m.name}", m.client_streaming, m.server_streaming) for m in service.methods
    ]


def raw_call(
    channel: grpc.Channel, method: tuple[str, bool, bool], payload: bytes, metadata: Any = ()
) -> grpc.StatusCode:
    """One call with raw request bytes; the status it ended with."""
    path, client_streaming, server_streaming = method
    kind = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, False): channel.stream_unary,
        (True, True): channel.stream_stream,
    }[(client_streaming, server_streaming)]
    call = kind(path, request_serializer=IDENTITY, response_deserializer=IDENTITY)
    request: Any = iter([payload]) if client_streaming else payload
    try:
        result = call(request, metadata=metadata, timeout=30)
        if server_streaming:
            list(result)
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def flood(channel: grpc.Channel, targets: list[tuple[str, bool, bool]], metadata: Any = ()) -> set[str]:
    """CALLS malformed requests spread over `targets`; the status codes they got."""
    return {raw_call(channel, targets[i % len(targets)], GARBAGE, metadata).name for i in range(CALLS)}


def grown(path: str, since: int) -> str:
    with open(path, "rb") as handle:
        handle.seek(since)
        return handle.read().decode(errors="replace")


def assert_quiet(log: str, what: str) -> None:
    assert "Traceback" not in log, f"{what}: traceback in the log:\n{log[:3000]}"
    assert FORGED not in log and FORGED.split(".")[0] not in log, f"{what}: a token was logged"
    assert len(log.encode()) < LOG_BOUND, f"{what}: the log grew by {len(log)} bytes:\n{log[:3000]}"


@pytest.fixture(scope="module")
def central() -> Iterator[Central]:
    c = start_central("jsf-")
    try:
        yield c
    finally:
        close_central(c)


def test_controllerd_answers_malformed_and_forged_calls_without_flooding_its_log(central: Central) -> None:
    ours = [
        *methods(jumpstarter_pb2.DESCRIPTOR.services_by_name["ControllerService"]),
        *methods(client_pb2.DESCRIPTOR.services_by_name["ClientService"]),
    ]
    targets = [
        *ours,
        *methods(health_pb2.DESCRIPTOR.services_by_name["Health"]),
        *methods(reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"]),
    ]
    log_path = os.path.join(central.directory, "controllerd.log")
    before = os.path.getsize(log_path)
    forged = (
        ("authorization", f"Bearer {FORGED}"),
        ("jumpstarter-kind", "Client"),
        ("jumpstarter-namespace", "a"),
        ("jumpstarter-name", "b"),
    )
    exporter = central.create("exporter", "flood", "e1")
    audit = ("/jumpstarter.v1.ControllerService/AuditStream", True, False)
    with central.channel() as channel:
        anonymous = flood(channel, targets)
        with_forged_token = flood(channel, targets, forged)
        # Well-formed (empty) requests with the forged token: refused before anything is parsed.
        unauthenticated = {raw_call(channel, ours[i % len(ours)], b"", forged).name for i in range(CALLS)}
        # An authenticated exporter's AuditStream parses its messages as they arrive.
        audited = {raw_call(channel, audit, GARBAGE, exporter.metadata()).name for _ in range(CALLS)}

        assert_quiet(grown(log_path, before), "controllerd")
        # AuditStream (client streaming) authenticates before it reads: UNAUTHENTICATED there.
        assert anonymous == {"INVALID_ARGUMENT", "UNAUTHENTICATED"}
        assert with_forged_token == {"INVALID_ARGUMENT", "UNAUTHENTICATED"}
        assert unauthenticated == {"UNAUTHENTICATED"}
        assert audited == {"INVALID_ARGUMENT"}
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
        )
        listed = [s.name for r in reflection for s in r.list_services_response.service]
        assert "jumpstarter.v1.ControllerService" in listed, listed
    peer = central.peer(central.create("client", "flood", "c1"))
    try:
        listed = peer.clients.ListLeases(
            client_pb2.ListLeasesRequest(parent=peer.parent), metadata=peer.md, timeout=10
        )
        assert list(listed.leases) == []
    finally:
        peer.close()


def test_routerd_answers_forged_tokens_without_flooding_its_log(central: Central) -> None:
    log_path = os.path.join(central.directory, "routerd.log")
    before = os.path.getsize(log_path)
    target = methods(router_pb2.DESCRIPTOR.services_by_name["RouterService"])
    with grpc.secure_channel(
        central.router_endpoint, grpc.ssl_channel_credentials(root_certificates=central.ca)
    ) as channel:
        codes = flood(channel, target, (("authorization", f"Bearer {FORGED}"),))
        codes |= flood(channel, target)
    assert_quiet(grown(log_path, before), "routerd")
    assert codes == {"UNAUTHENTICATED"}

    async def splice() -> bytes:  # the router still pairs two real peers
        token = routertoken.mint(routertoken.load_key(central.router_key))
        metadata = (("authorization", f"Bearer {token}"),)
        credentials = grpc.ssl_channel_credentials(root_certificates=central.ca)
        async with grpc.aio.secure_channel(central.router_endpoint, credentials) as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            a, b = stub.Stream(metadata=metadata), stub.Stream(metadata=metadata)
            await a.write(router_pb2.StreamRequest(payload=b"still routing"))
            frame = await asyncio.wait_for(b.read(), 30)
            a.cancel()
            b.cancel()
            return bytes(frame.payload)

    assert asyncio.run(splice()) == b"still routing"


def test_exporterd_session_answers_malformed_calls_without_flooding_its_log(exporterd: Any) -> None:
    board = exporterd.start(exporter_config("power: {type: power.mock}\necho: {type: network.echo}\n"))
    targets = methods(jumpstarter_pb2.DESCRIPTOR.services_by_name["ExporterService"])
    before = os.path.getsize(board.log_path)
    with grpc.insecure_channel(f"unix:{board.socket}") as channel:
        report = jumpstarter_pb2_grpc.ExporterServiceStub(channel).GetReport(empty_pb2.Empty(), timeout=10)
        echo = next(r.uuid for r in report.reports if r.labels.get("jumpstarter.dev/name") == "echo")
        codes = flood(channel, targets)
        # Garbage frames on an opened driver stream: the frame parser sees them.
        stream = ("/jumpstarter.v1.RouterService/Stream", True, True)
        opened = (("request", json.dumps({"kind": "driver", "uuid": echo, "method": "connect"})),)
        frame_codes = {raw_call(channel, stream, GARBAGE, opened).name for _ in range(CALLS)}

        assert_quiet(grown(board.log_path, before), "exporterd")
        assert codes == {"INVALID_ARGUMENT"}
        assert frame_codes == {"INVALID_ARGUMENT"}
        again = jumpstarter_pb2_grpc.ExporterServiceStub(channel).GetReport(empty_pb2.Empty(), timeout=10)
        assert again.uuid == report.uuid
