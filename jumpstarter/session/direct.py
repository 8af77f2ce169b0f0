"""Direct mode: the session server on TCP (TLS unless asked otherwise), guarded by a passphrase."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc

from jumpstarter.session.server import Session, SessionServer, SessionSlot, build_server


class PassphraseInterceptor(grpc.ServerInterceptor):
    """Direct (TCP) mode: every call must carry `x-jumpstarter-passphrase` (PROTOCOL.md §3)."""

    def __init__(self, passphrase: str) -> None:
        self.passphrase = passphrase.encode()

    def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        import hmac

        given = b""
        for key, value in details.invocation_metadata or ():
            if key == "x-jumpstarter-passphrase":
                given = value.encode() if isinstance(value, str) else value
        handler = continuation(details)
        if given and hmac.compare_digest(given, self.passphrase):
            return handler
        return _refusal(handler)


def _refuse(request: Any, context: grpc.ServicerContext) -> Any:
    context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong x-jumpstarter-passphrase")


def _refuse_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
    context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong x-jumpstarter-passphrase")
    yield  # pragma: no cover


def _refusal(handler: Any) -> Any:
    if handler is None:
        return None
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(_refuse_stream)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(_refuse_stream)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(_refuse)
    return grpc.unary_unary_rpc_method_handler(_refuse)


@contextlib.asynccontextmanager
async def serve_tcp(
    session: Session | SessionSlot,
    address: str,
    credentials: grpc.ServerCredentials | None,
    passphrase: str | None,
) -> AsyncIterator[SessionServer]:
    """Direct mode: the session on TCP, TLS unless `credentials` is None (plaintext only when asked)."""
    interceptors = [PassphraseInterceptor(passphrase)] if passphrase else None
    server = build_server(session, interceptors)
    try:
        if credentials is None:
            server.add_insecure_port(address)
        else:
            server.add_secure_port(address, credentials)
    except RuntimeError as exc:
        raise OSError(f"{address}: cannot listen ({exc})") from None
    await server.start()
    try:
        yield server
    finally:
        await server.stop(grace=1)
