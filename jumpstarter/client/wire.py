"""What a client connection puts on the wire and how it reads the answers (PROTOCOL.md §4-5).

The blocking `Connection` and the asyncio `AsyncConnection` differ only in how they
wait; the requests they build, the results they decode, the errors they raise and the
resource handles they return come from here, so the two cannot drift apart.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import grpc

from jumpstarter import channels, frames, values
from jumpstarter.errors import ConnectError, DriverError, JumpstarterError, from_rpc
from jumpstarter.v1 import jumpstarter_pb2

#: Our exporters mark an opened stream; empty initial metadata is a trailers-only error, or an
#: upstream exporter's success. A stream without metadata waits this long for an error status.
UNMARKED_STREAM_GRACE = 0.05


def driver_call(uuid: str, method: str, args: Iterable[Any]) -> jumpstarter_pb2.DriverCallRequest:
    return jumpstarter_pb2.DriverCallRequest(uuid=uuid, method=method, args=[values.encode(a) for a in args])


def streaming_call(uuid: str, method: str, args: Iterable[Any]) -> jumpstarter_pb2.StreamingDriverCallRequest:
    return jumpstarter_pb2.StreamingDriverCallRequest(
        uuid=uuid, method=method, args=[values.encode(a) for a in args]
    )


def result(response: Any) -> Any:
    """The Python value of a `DriverCallResponse` or `StreamingDriverCallResponse`."""
    return values.decode(response.result)


def stream_metadata(
    request: Mapping[str, Any], metadata: Iterable[tuple[str, str]]
) -> tuple[tuple[str, str], ...]:
    """The metadata of a session-level `RouterService.Stream`: its `request` entry, then the connection's."""
    return (("request", json.dumps(request)), *metadata)


def stream_name(request: Mapping[str, Any]) -> str:
    """What a stream request is called in its errors: the driver method, else the stream kind."""
    return str(request.get("method") or request.get("kind", "stream"))


def router_stream(ch: Any) -> Any:
    """The session-level `RouterService.Stream` on a blocking or asyncio channel, with the fast frame codec."""
    return ch.stream_stream(
        "/jumpstarter.v1.RouterService/Stream",
        request_serializer=frames.encode,
        response_deserializer=frames.decode,
    )


def report_error(exc: grpc.RpcError, target: str) -> JumpstarterError:
    """A failed GetReport: an exporter that does not answer is named by its target."""
    if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return ConnectError(f"cannot reach the exporter at {channels.describe(target)}: {exc.details()}")
    return from_rpc(exc, "GetReport")


def resource_handle(initial_metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The handle of a resource stream, from the `resource` entry of its initial metadata."""
    text = initial_metadata.get("resource")
    if not text:
        raise DriverError("the exporter did not return a resource handle")
    return dict(json.loads(text))
